"""Built-in responder vs pebble-challtestsrv's DNS server, same query load, same run.

Both serve one TXT value at `_acme-challenge.example.test`; the query mix is what a CA's
resolver sends during validation (TXT at the challenge name, plus a CAA, a SOA and a
miss). Each server runs as its own process, as in production; the load comes from
dnsperf when installed (Debian package `dnsperf`), else from a built-in asyncio UDP
generator. Servers are measured alternately, `--rounds` times each; the best round counts.

    python bench/dns_responder.py [--seconds 10] [--rounds 2] [--generator auto|dnsperf|python]

Prints queries/s for each server and, last, the ratio (goal: at least 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dns.message

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.backends.bind

from providers.local import ChallengeStore  # noqa: E402
from receiver import signing  # noqa: E402
from tests.backends.bind import free_port  # noqa: E402 - a port free for UDP and TCP

NAME = "_acme-challenge.example.test"
VALUE = "x" * 43
QUERIES = [
    (NAME, "TXT"),
    (NAME, "TXT"),
    ("example.test", "CAA"),
    ("example.test", "SOA"),
    ("_acme-challenge.missing.example.test", "TXT"),
]


def wait_for_dns(port: int, within: float = 15) -> None:
    query = dns.message.make_query(NAME, "TXT").to_wire()
    deadline = time.monotonic() + within
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        while time.monotonic() < deadline:
            sock.sendto(query, ("127.0.0.1", port))
            try:
                reply = dns.message.from_wire(sock.recv(4096))
            except OSError:
                continue
            if reply.answer:
                return
            time.sleep(0.1)
    raise RuntimeError(f"no TXT answer on port {port}")


@contextmanager
def receiver(folder: Path) -> Iterator[int]:
    port = free_port()
    key = folder / "sender.pem"
    public = signing.write_key_pair(key)
    store = ChallengeStore(folder / "store.sqlite3", lifetime=86400)
    store.add(NAME, VALUE, 60)
    store.close()
    config = folder / "receiver.toml"
    config.write_text(f"""
[server]
listen = "127.0.0.1:0"
[log]
format = "json"
level = "warning"
[certificate_manager]
allowed_instances = ["{signing.DEMO_CRN}"]
public_key_file = "{public}"
[local]
database = "store.sqlite3"
dns_listen = "127.0.0.1:{port}"
value_lifetime_seconds = 86400
[[zones]]
name = "example.test"
provider = "local"
""")
    proc = subprocess.Popen(
        [sys.executable, "-m", "receiver", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        wait_for_dns(port)
        yield port
    finally:
        proc.terminate()
        proc.wait()


@contextmanager
def challtestsrv(attempts: int = 3) -> Iterator[int]:
    binary = shutil.which("pebble-challtestsrv")
    if binary is None:
        raise SystemExit("pebble-challtestsrv not found: apt-get install pebble")
    for attempt in range(attempts):
        port, management = free_port(), free_port()
        proc = subprocess.Popen(
            [
                binary,
                "-dns01",
                f"127.0.0.1:{port}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                f"127.0.0.1:{management}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _set_txt(management, proc)
            wait_for_dns(port)
        except RuntimeError:
            proc.terminate()
            proc.wait()
            if attempt == attempts - 1:
                raise
            continue
        try:
            yield port
        finally:
            proc.terminate()
            proc.wait()
        return


def _set_txt(management: int, proc: subprocess.Popen[bytes]) -> None:
    body = json.dumps({"host": NAME + ".", "value": VALUE}).encode()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(  # loopback only
                urllib.request.Request(f"http://127.0.0.1:{management}/set-txt", data=body),
                timeout=1,
            )
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"pebble-challtestsrv management API unavailable (exit {proc.poll()})")


def load_dnsperf(port: int, seconds: float, folder: Path) -> float:
    queries = folder / "queries.txt"
    queries.write_text("".join(f"{name} {rdtype}\n" for name, rdtype in QUERIES))
    out = subprocess.run(
        [
            "dnsperf",
            "-s",
            "127.0.0.1",
            "-p",
            str(port),
            "-d",
            str(queries),
            "-l",
            str(seconds),
            "-c",
            "4",
            "-q",
            "200",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    if lost and int(lost.group(1)) > 0:
        print(f"  (dnsperf: {lost.group(1)} queries lost)")
    match = re.search(r"Queries per second:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(out)
    return float(match.group(1))


def load_python(port: int, seconds: float, concurrency: int = 64) -> float:
    """An asyncio UDP client keeping `concurrency` queries in flight."""
    wires = [dns.message.make_query(name, rdtype).to_wire() for name, rdtype in QUERIES]

    async def run() -> int:
        loop = asyncio.get_running_loop()
        answered = 0
        window = asyncio.Semaphore(concurrency)

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                nonlocal answered
                answered += 1
                window.release()

        transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
        stop = loop.time() + seconds
        index = 0
        while loop.time() < stop:
            try:
                await asyncio.wait_for(window.acquire(), 1)
            except TimeoutError:  # a lost datagram: reopen its slot
                window.release()
                continue
            transport.sendto(wires[index % len(wires)])
            index += 1
        transport.close()
        return answered

    return asyncio.run(run()) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--generator", choices=["auto", "dnsperf", "python"], default="auto")
    args = parser.parse_args()
    generator = args.generator
    if generator == "auto":
        generator = "dnsperf" if shutil.which("dnsperf") else "python"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        def measure(port: int) -> float:
            if generator == "dnsperf":
                return load_dnsperf(port, args.seconds, folder)
            return load_python(port, args.seconds)

        results: dict[str, list[float]] = {"receiver": [], "challtestsrv": []}
        with receiver(folder) as ours, challtestsrv() as theirs:
            for _ in range(args.rounds):
                results["challtestsrv"].append(measure(theirs))
                results["receiver"].append(measure(ours))
    best = {name: max(values) for name, values in results.items()}
    print(
        f"load: {generator}, {args.seconds:g} s x {args.rounds} rounds, "
        f"{os.cpu_count()} CPUs, query mix {len(QUERIES)} names"
    )
    for name, values in results.items():
        print(
            f"  {name:<13} {best[name]:>9.0f} q/s  (rounds: "
            f"{', '.join(f'{v:.0f}' for v in values)})"
        )
    print(f"ratio receiver/challtestsrv: {best['receiver'] / best['challtestsrv']:.2f}")


if __name__ == "__main__":
    main()
