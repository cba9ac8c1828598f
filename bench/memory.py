"""Receiver vs a bare aiohttp app: resident memory over 100,000 notifications.

Every notification is distinct (its own name and value, required then completed), so a
leak per name, value or request shows as growth. The receiver runs with full
verification (envelope and user token) on the `memory` provider; the baseline reads the
body and answers 200. Both get the same bodies at the same concurrency. ES256 envelopes
by default: signing 100,000 with RSA would take longer than serving them.

    python bench/memory.py [--notifications 100000] [--connections 32] [--journal]

Prints RSS every 10,000 notifications, the peak of each process, the growth after the
first 10,000, and, last, the peak RSS ratio receiver/bare.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from harness import (
    Keys,
    bare,
    free_port,
    jwks_server,
    process,
    receiver,
    receiver_config,
    rss_mib,
    send_pairs,
)


def measure(
    argv: list[str], url: str, batches: list[list[bytes]], connections: int
) -> tuple[list[float], int]:
    """RSS after each batch, and the non-200 answers."""
    readings, errors = [], 0
    with process(argv, url) as proc:
        readings.append(rss_mib(proc.pid))
        for batch in batches:
            failed, _ = send_pairs(url, batch, connections)
            errors += failed
            readings.append(rss_mib(proc.pid))
    return readings, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notifications", type=int, default=100_000)
    parser.add_argument("--step", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--algorithm", default="ES256")
    parser.add_argument("--journal", action="store_true", help="keep the journal on")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        keys = Keys(folder, args.algorithm)
        pairs = args.step // 2
        batches = [
            keys.bodies(pairs, start=first) for first in range(0, args.notifications // 2, pairs)
        ]
        with jwks_server(keys.user_public) as jwks_url:
            port = free_port()
            url = f"http://127.0.0.1:{port}/callback"
            base, base_errors = measure(bare(port), url, batches, args.connections)
            port = free_port()
            url = f"http://127.0.0.1:{port}/callback"
            config = receiver_config(folder, keys, jwks_url, port, journal=args.journal)
            ours, our_errors = measure(receiver(config), url, batches, args.connections)
    sent = sum(len(batch) for batch in batches)
    print(
        f"{sent} distinct notifications ({args.algorithm} envelopes with user tokens), "
        f"{args.connections} concurrent pairs, journal {'on' if args.journal else 'off'}"
    )
    print("  sent      receiver MiB   bare MiB")
    for index, (mine, theirs) in enumerate(zip(ours, base, strict=True)):
        print(f"  {index * args.step:>7}   {mine:>10.1f}   {theirs:>8.1f}")
    growth = ours[-1] - ours[1]
    print(f"errors: receiver {our_errors}, bare {base_errors}")
    print(f"receiver growth after the first {args.step}: {growth:+.1f} MiB")
    print(f"peak RSS: receiver {max(ours):.1f} MiB, bare {max(base):.1f} MiB")
    print(f"peak RSS ratio receiver/bare: {max(ours) / max(base):.2f}")


if __name__ == "__main__":
    main()
