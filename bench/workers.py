"""`serve --workers 2` vs `serve --workers 1`: throughput under the same load, same run.

The receiver runs as in bench/throughput.py (envelope and user token verified, a JWKS
served locally, the `memory` provider), once with one worker (the plain single process)
and once with two (a supervisor and two workers sharing the port). Both get the same
load: wrk (Debian package `wrk`) when installed, cycling through distinct signed
notifications, else the asyncio client in this process; one load thread, same
concurrency.

The load generator runs on the same cores as the receiver, so its CPU is measured, not
assumed away: wrk's from getrusage(RUSAGE_CHILDREN) around its run (it is the only child
that ends meanwhile), the asyncio client's from getrusage(RUSAGE_SELF); the receiver's,
all its processes together, from /proc/<pid>/stat. Both are printed in cores (CPU seconds
per second of load), with what the rest of the machine used meanwhile (/proc/stat): on a
shared machine, the figures mean something only when that is near 0.

    python bench/workers.py [--seconds 10] [--connections 32] [--rounds 3] [--journal]
                            [--propagation]

`--journal --propagation` is the receiver's default configuration (bench/throughput.py's
"default"); without them, its "bookkeeping off".

Prints requests/s, p50, p99 and CPU for each (the best of `--rounds`, taken in turns),
then, last, the throughput ratio workers 2 / workers 1 (goal >= 1.6 on 2 cores).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import (
    Keys,
    cpus,
    free_port,
    jwks_server,
    machine_busy,
    process,
    receiver,
    receiver_config,
    tree_cpu,
)
from throughput import SignedLoad, add_load_arguments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_arguments(parser)
    parser.add_argument("--journal", action="store_true", help="keep the journal on")
    parser.add_argument("--propagation", action="store_true", help="check propagation")
    parser.add_argument("--rounds", type=int, default=1, help="the best of this many of each")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        keys = Keys(folder)
        load = SignedLoad.from_args(folder, keys, args)
        generator, bodies = load.generator, load.bodies
        who = resource.RUSAGE_CHILDREN if generator == "wrk" else resource.RUSAGE_SELF

        results: dict[int, Run] = {}
        with jwks_server(keys.user_public) as jwks_url:
            for _ in range(args.rounds):  # alternating, so that a busy spell hits both
                for count in (1, 2):
                    port = free_port()
                    config = receiver_config(
                        folder,
                        keys,
                        jwks_url,
                        port,
                        journal=args.journal,
                        propagation=args.propagation,
                    )
                    run = measure([*receiver(config), "--workers", str(count)], port, load, who)
                    if count not in results or run.rps > results[count].rps:
                        results[count] = run
    print(
        f"load: {generator}, {args.connections} connections, {args.seconds:g} s, "
        f"{len(bodies)} distinct signed notifications (with user tokens), "
        f"journal {'on' if args.journal else 'off'}, "
        f"propagation checks {'on' if args.propagation else 'off'}, {cpus()} CPUs, "
        f"best of {args.rounds}"
    )
    for count, run in results.items():
        print(
            f"  --workers {count}  {run.rps:>8.0f} req/s   p50 {run.p50:7.2f} ms   "
            f"p99 {run.p99:7.2f} ms   CPU in cores: receiver {run.receiver:.2f}, "
            f"{generator} {run.generator:.2f}, everything else {run.others:.2f}"
        )
    one, two = results[1], results[2]
    per_request = (two.receiver / two.rps) / (one.receiver / one.rps)
    print(f"receiver CPU per request ratio 2/1: {per_request:.2f}")
    print(f"throughput ratio workers 2/1: {two.rps / one.rps:.2f}")


@dataclass(frozen=True)
class Run:
    rps: float
    p50: float
    p99: float
    receiver: float  # cores: CPU seconds per second of load
    generator: float
    others: float


def measure(
    argv: list[str], port: int, load: Callable[[str], tuple[float, float, float]], who: int
) -> Run:
    """One receiver process tree under `load`, after a warm-up run (every worker fetches
    its keys and fills its caches), with the CPU each side used meanwhile."""
    url = f"http://127.0.0.1:{port}/callback"
    with process(argv, url) as proc:
        load(url)
        began, served = time.perf_counter(), tree_cpu(proc.pid)
        generated, busy = _used(who), machine_busy()
        rps, p50, p99 = load(url)
        wall = time.perf_counter() - began
        serving = (tree_cpu(proc.pid) - served) / wall
        generating = (_used(who) - generated) / wall
        others = (machine_busy() - busy) / wall - serving - generating
    return Run(rps, p50, p99, serving, generating, max(0.0, others))


def _used(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
