"""Receiver vs a bare aiohttp app: throughput and latency under the same load.

The receiver runs with full verification (envelope signature and user token, a JWKS
served locally) on the `memory` provider; the baseline only reads the body and answers
200. A third app, the verifying floor (bench/floor_app.py), adds to the baseline only
what no verifying receiver can skip: parsing, one RS256 verification, one log line.
All get the same load: wrk (Debian package `wrk`) when installed, cycling through
distinct signed notifications with a Lua script, else an asyncio client. Each server is
its own process; one load thread; same concurrency.

    python bench/throughput.py [--seconds 10] [--connections 32] [--journal]

Prints requests/s, p50 and p99 for each, the floor's own ratios to the baseline (the
best any verifying receiver could reach), the receiver's ratio to the floor, then, last,
the receiver's p99 ratio (goal <= 2) and throughput ratio (goal >= 0.6) to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import tempfile
import time
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=3000, help="distinct notification pairs")
    parser.add_argument("--journal", action="store_true", help="keep the journal on")
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    args = parser.parse_args()
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "python"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        keys = Keys(folder)
        bodies = keys.bodies(args.pairs)
        bodies_file = folder / "bodies.txt"
        bodies_file.write_bytes(b"\n".join(bodies) + b"\n")

        def load(url: str) -> tuple[float, float, float]:
            if generator == "wrk":
                return with_wrk(url, bodies_file, args.seconds, args.connections)
            return with_python(url, bodies, args.seconds, args.connections)

        results = {}
        with jwks_server(keys.user_public) as jwks_url:
            port = free_port()
            url = f"http://127.0.0.1:{port}/callback"
            with process(bare(port), url):
                results["bare aiohttp"] = load(url)
            port = free_port()
            url = f"http://127.0.0.1:{port}/callback"
            with process(floor(port, keys.sender_public), url):
                load(url)  # warm-up, as for the receiver
                results["floor"] = load(url)
            port = free_port()
            url = f"http://127.0.0.1:{port}/callback"
            config = receiver_config(folder, keys, jwks_url, port, journal=args.journal)
            with process(receiver(config), url):
                load(url)  # warm-up: key and JWKS fetches, imports, caches
                results["receiver"] = load(url)
    print(
        f"load: {generator}, {args.connections} connections, {args.seconds:g} s, "
        f"{len(bodies)} distinct signed notifications (with user tokens), "
        f"journal {'on' if args.journal else 'off'}, {cpus()} CPUs"
    )
    for name, (rps, p50, p99) in results.items():
        print(f"  {name:<13} {rps:>8.0f} req/s   p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")
    ours, theirs, least = results["receiver"], results["bare aiohttp"], results["floor"]
    print(
        f"floor/bare (parse, one RS256 verification, one log line): "
        f"throughput {least[0] / theirs[0]:.2f}, p99 {least[2] / theirs[2]:.2f}"
    )
    print(f"receiver/floor: throughput {ours[0] / least[0]:.2f}, p99 {ours[2] / least[2]:.2f}")
    print(f"p99 ratio receiver/bare: {ours[2] / theirs[2]:.2f}")
    print(f"throughput ratio receiver/bare: {ours[0] / theirs[0]:.2f}")


if __name__ == "__main__":
    main()
