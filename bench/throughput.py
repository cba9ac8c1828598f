"""The receiver's throughput and latency in its default configuration, against what it
costs to do less, all under the same load in the same run.

- bare: an aiohttp app that reads the body and answers 200;
- floor: the bare app plus what no verifying receiver can skip (bench/floor_app.py:
  parsing, one RS256 verification, one log line), and the same with one durable SQLite
  row committed per request (the floor for a receiver that keeps a journal);
- receiver, bookkeeping off: journal and propagation checks off;
- receiver, default: journal on, propagation checks on (the configuration users run).
The receiver verifies envelope and user token (a JWKS served locally) on the `memory`
provider. Load: wrk (Debian package `wrk`) when installed, cycling through distinct
signed notifications with a Lua script, else an asyncio client. Each server is its own
process; one load thread; same concurrency. All servers start first; then each is loaded
in turn, `--rounds` times: single runs of one server after another swung the ratios by
±0.06 on this shared VM, medians of interleaved rounds by a few hundredths.

    python bench/throughput.py [--seconds 10] [--connections 32] [--rounds 3]

Prints the medians of requests/s, p50, p99 and the server's CPU per request for each,
then the medians of the rounds' ratios (each pair loaded back to back);
the last three lines are the issue's goals: default/bookkeeping-off throughput (>= 0.8),
default/floor-with-journal p99 (<= 2) and throughput (>= 0.6). CPU per request (from
/proc, the server process alone) is the steadier figure on a machine that is doing other
work: requests/s moves with whatever else runs, CPU per request much less.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from harness import (
    Keys,
    bare,
    cpus,
    floor,
    free_port,
    jwks_server,
    process,
    receiver,
    receiver_config,
    tree_cpu,
)

LUA = """
local bodies = {}
for line in io.lines("%s") do bodies[#bodies + 1] = line end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i + 1
  return wrk.format(nil, nil, nil, bodies[(i %% #bodies) + 1])
end
"""


def with_wrk(
    url: str, bodies_file: Path, seconds: float, connections: int
) -> tuple[float, float, float]:
    script = bodies_file.with_suffix(".lua")
    script.write_text(LUA % bodies_file)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    if re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        print("  (wrk saw non-2xx answers: check the configuration)")
    return rps, _ms(out, "50%"), _ms(out, "99%")


def _ms(out: str, percentile: str) -> float:
    match = re.search(rf"^\s+{re.escape(percentile)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    assert match, out
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def with_python(
    url: str, bodies: list[bytes], seconds: float, connections: int
) -> tuple[float, float, float]:
    async def run() -> tuple[float, float, float]:
        latencies: list[float] = []
        stop = time.perf_counter() + seconds
        index = 0
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections)
        ) as session:

            async def worker() -> None:
                nonlocal index
                while time.perf_counter() < stop:
                    body = bodies[index % len(bodies)]
                    index += 1
                    started = time.perf_counter()
                    async with session.post(
                        url, data=body, headers={"Content-Type": "application/json"}
                    ) as resp:
                        await resp.read()
                        assert resp.status == 200, resp.status
                    latencies.append((time.perf_counter() - started) * 1000)

            begun = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(connections)))
            elapsed = time.perf_counter() - begun
        latencies.sort()
        return (
            len(latencies) / elapsed,
            latencies[len(latencies) // 2],
            latencies[int(len(latencies) * 0.99)],
        )

    return asyncio.run(run())


@dataclass(frozen=True)
class SignedLoad:
    """Distinct signed notifications (with user tokens) sent by wrk when it is installed,
    else by an asyncio client: the load every receiver benchmark drives."""

    generator: str  # "wrk" or "python"
    bodies: list[bytes]
    bodies_file: Path
    seconds: float
    connections: int

    @classmethod
    def prepare(
        cls, folder: Path, keys: Keys, pairs: int, generator: str, seconds: float, connections: int
    ) -> SignedLoad:
        if generator == "auto":
            generator = "wrk" if shutil.which("wrk") else "python"
        bodies = keys.bodies(pairs)
        bodies_file = folder / "bodies.txt"
        bodies_file.write_bytes(b"\n".join(bodies) + b"\n")
        return cls(generator, bodies, bodies_file, seconds, connections)

    @classmethod
    def from_args(cls, folder: Path, keys: Keys, args: argparse.Namespace) -> SignedLoad:
        """`prepare`, from the options `add_load_arguments` declared."""
        return cls.prepare(folder, keys, args.pairs, args.generator, args.seconds, args.connections)

    def __call__(self, url: str) -> tuple[float, float, float]:
        """(requests/s, p50 ms, p99 ms) at `url`."""
        if self.generator == "wrk":
            return with_wrk(url, self.bodies_file, self.seconds, self.connections)
        return with_python(url, self.bodies, self.seconds, self.connections)


def add_load_arguments(parser: argparse.ArgumentParser, *, seconds: float = 10) -> None:
    """The options of every benchmark that drives a `SignedLoad` (`SignedLoad.from_args`)."""
    parser.add_argument("--seconds", type=float, default=seconds)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=3000, help="distinct notification pairs")
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_arguments(parser)
    parser.add_argument(
        "--rounds", type=int, default=3, help="loads of each server, in turns (medians printed)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        keys = Keys(folder)
        load = SignedLoad.from_args(folder, keys, args)
        jwks_url = stack.enter_context(jwks_server(keys.user_public))
        commits = folder / "floor-commits.sqlite3"
        servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        for name, argv in {
            "bare": bare,
            "floor": lambda port: floor(port, keys.sender_public),
            "floor+journal": lambda port: floor(port, keys.sender_public, commits),
            "bookkeeping off": lambda port: receiver(
                receiver_config(folder, keys, jwks_url, port, journal=False)
            ),
            "default": lambda port: receiver(
                receiver_config(folder, keys, jwks_url, port, journal=True, propagation=True)
            ),
        }.items():
            port = free_port()
            url = f"http://127.0.0.1:{port}/callback"
            servers[name] = (stack.enter_context(process(argv(port), url)), url)
            if name != "bare":
                load(url)  # warm-up: key and JWKS fetches, imports, caches
        rounds: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in servers}
        for _ in range(args.rounds):  # in turns: the machine's noise falls on all alike
            for name, (server, url) in servers.items():
                used = tree_cpu(server.pid)
                rps, p50, p99 = load(url)
                cpu = (tree_cpu(server.pid) - used) / (rps * args.seconds)
                rounds[name].append((rps, p50, p99, cpu))
    medians = {
        name: [statistics.median(x) for x in zip(*runs, strict=True)]
        for name, runs in rounds.items()
    }
    print(
        f"load: {load.generator}, {args.connections} connections, {args.seconds:g} s, "
        f"{len(load.bodies)} distinct signed notifications (with user tokens), {cpus()} CPUs; "
        f"medians of {args.rounds} rounds, every server loaded in turn"
    )
    for name, (rps, p50, p99, cpu) in medians.items():
        print(
            f"  {name:<16} {rps:>8.0f} req/s   p50 {p50:7.2f} ms   p99 {p99:7.2f} ms"
            f"   CPU {cpu * 1e6:5.0f} µs/request"
        )

    def ratio(top: str, bottom: str, column: int) -> float:
        """The median of the rounds' ratios: each pair was loaded back to back."""
        pairs = zip(rounds[top], rounds[bottom], strict=True)
        return statistics.median(a[column] / b[column] for a, b in pairs)

    print(
        f"floor/bare (parse, one RS256 verification, one log line): "
        f"throughput {ratio('floor', 'bare', 0):.2f}, p99 {ratio('floor', 'bare', 2):.2f}"
    )
    print(f"floor+journal/floor: throughput {ratio('floor+journal', 'floor', 0):.2f}")
    print(f"receiver default/bare: throughput {ratio('default', 'bare', 0):.2f}")
    print(
        "CPU per request bookkeeping-off/default (as a throughput ratio): "
        f"{ratio('bookkeeping off', 'default', 3):.2f}"
    )
    each = ", ".join(
        f"{d[0] / o[0]:.2f}"
        for d, o in zip(rounds["default"], rounds["bookkeeping off"], strict=True)
    )
    print(f"default/bookkeeping-off throughput in each round: {each}")
    print(f"throughput ratio default/bookkeeping-off: {ratio('default', 'bookkeeping off', 0):.2f}")
    print(f"p99 ratio default/floor-with-journal: {ratio('default', 'floor+journal', 2):.2f}")
    print(
        f"throughput ratio default/floor-with-journal: {ratio('default', 'floor+journal', 0):.2f}"
    )


if __name__ == "__main__":
    main()
