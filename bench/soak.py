"""Soak: the receiver at a steady request rate for minutes; errors and RSS, start and end.

Not run in CI. Full verification (envelope and user token) on the `memory` provider,
distinct notifications (required, then completed) sent open-loop at `--rate` per second,
so a slow receiver shows as late requests and errors rather than a slower test.

    python bench/soak.py [--minutes 10] [--rate 200] [--journal]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp
from harness import Keys, free_port, jwks_server, process, receiver, receiver_config, rss_mib


async def drive(url: str, bodies: list[bytes], rate: float, seconds: float) -> tuple[int, int]:
    """Send bodies in order at `rate` per second for `seconds`; (sent, non-200 answers)."""
    errors = sent = 0
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:

        async def post(body: bytes) -> None:
            nonlocal errors
            try:
                async with session.post(
                    url, data=body, headers={"Content-Type": "application/json"}
                ) as resp:
                    await resp.read()
                    errors += resp.status != 200
            except aiohttp.ClientError:
                errors += 1

        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            due = int(elapsed * rate)
            while sent < due:
                task = asyncio.create_task(post(bodies[sent % len(bodies)]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)
    return sent, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=200, help="requests per second")
    parser.add_argument("--pairs", type=int, default=20_000, help="distinct notification pairs")
    parser.add_argument("--journal", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        keys = Keys(folder, "ES256")
        bodies = keys.bodies(args.pairs)
        with jwks_server(keys.user_public) as jwks_url:
            port = free_port()
            url = f"http://127.0.0.1:{port}/callback"
            config = receiver_config(folder, keys, jwks_url, port, journal=args.journal)
            with process(receiver(config), url) as proc:
                asyncio.run(drive(url, bodies[:200], 50, 2))  # warm-up
                start_rss = rss_mib(proc.pid)
                sent, errors = asyncio.run(drive(url, bodies, args.rate, args.minutes * 60))
                end_rss = rss_mib(proc.pid)
    print(
        f"soak: {args.minutes:g} min at {args.rate:g} req/s, journal "
        f"{'on' if args.journal else 'off'}: {sent} requests"
    )
    print(f"RSS start {start_rss:.1f} MiB, end {end_rss:.1f} MiB ({end_rss - start_rss:+.1f})")
    print(f"errors: {errors}")


if __name__ == "__main__":
    main()
