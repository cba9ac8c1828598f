"""A/B of checkouts: the receiver's CPU per request, several servers up at once.

Each spec is `label=CHECKOUT:MODE`, MODE `default` (journal and propagation checks on) or
`off` (both off), CHECKOUT a directory holding a `receiver/` package (this one, or a
`git worktree` of another commit). All servers start first, then the same wrk load as
`throughput.py` goes to each in turn, round after round, so machine noise and the
journal's growth fall on all of them alike; the medians are what to compare.

    python bench/ab.py before=/tmp/base:default after=.:default off=.:off [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
from pathlib import Path

from harness import Keys, free_port, jwks_server, process, receiver, receiver_config, tree_cpu
from throughput import SignedLoad, add_load_arguments


def system_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("specs", nargs="+", metavar="label=CHECKOUT:MODE")
    parser.add_argument("--rounds", type=int, default=5)
    add_load_arguments(parser, seconds=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        keys = Keys(folder)
        load = SignedLoad.from_args(folder, keys, args)
        jwks_url = stack.enter_context(jwks_server(keys.user_public))
        servers = {}
        for spec in args.specs:
            label, _, rest = spec.partition("=")
            checkout, _, mode = rest.rpartition(":")
            if mode not in ("default", "off"):
                parser.error(f"{spec}: MODE is default or off")
            port = free_port()
            on = mode == "default"
            config = receiver_config(folder, keys, jwks_url, port, journal=on, propagation=on)
            url = f"http://127.0.0.1:{port}/callback"
            server = stack.enter_context(process(receiver(config), url, cwd=Path(checkout)))
            load(url)  # warm-up: key and JWKS fetches, imports, caches
            servers[label] = (server, url)
        cpu: dict[str, list[float]] = {label: [] for label in servers}
        system: dict[str, list[float]] = {label: [] for label in servers}
        for _ in range(args.rounds):
            for label, (server, url) in servers.items():
                used, kernel = tree_cpu(server.pid), system_seconds(server.pid)
                rps = load(url)[0]
                requests = rps * args.seconds
                cpu[label].append((tree_cpu(server.pid) - used) / requests * 1e6)
                system[label].append((system_seconds(server.pid) - kernel) / requests * 1e6)
        for label in servers:
            print(
                f"{label:<12} CPU per request median {statistics.median(cpu[label]):4.0f} µs"
                f" (kernel {statistics.median(system[label]):3.0f});"
                f" rounds: {', '.join(f'{x:.0f}' for x in cpu[label])}"
            )


if __name__ == "__main__":
    main()
