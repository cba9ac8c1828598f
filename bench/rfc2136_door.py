"""The RFC 2136 door vs the same changes as HTTP notifications vs BIND, same run.

One receiver process serves both the RFC 2136 door and lego's httpreq door, writing to a
`memory` zone with the journal on (the door requires it) and propagation checks off; a
BIND `named` process accepts the same signed UPDATEs into its own zone (and journals them
to disk, as it always does). Every client adds a value at a name of its own and then
removes it, one change per message: a signed UPDATE over UDP (TSIG hmac-sha256, signed
afresh for each message, as clients do) or an HTTP request (POST /present, /cleanup with
basic auth, keep-alive). The servers are measured in turns, `--rounds` times each; the
best round of each counts.

    python bench/rfc2136_door.py [--seconds 10] [--clients 32] [--rounds 2]

Prints changes/s and latency for each, and last the ratios door/httpreq and door/BIND.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.rcode
import dns.tsigkeyring
import dns.update

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench.harness, tests.backends.bind

from bench.harness import machine_busy, process, receiver, tree_cpu  # noqa: E402
from tests.backends.bind import KEY_NAME, Bind, free_port  # noqa: E402

ZONE = "example.com"
PASSWORD = "bench-password"


@dataclass
class Result:
    changes: int
    errors: int
    latencies: list[float]
    seconds: float
    server_cpu: float = 0.0  # CPU seconds the answering server used meanwhile
    client_cpu: float = 0.0  # and the load generator (this process)
    other_cpu: float = 0.0  # and everything else on the machine (another session's tests)

    @property
    def rate(self) -> float:
        return self.changes / self.seconds

    def line(self, label: str, rounds: list[float]) -> str:
        ordered = sorted(self.latencies) or [0.0]
        p50 = statistics.median(ordered) * 1000
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
        shown = ", ".join(f"{r:.0f}" for r in rounds)
        per_change = self.server_cpu / max(1, self.changes) * 1e6
        return (
            f"  {label:<26} {self.rate:>6.0f} changes/s  p50 {p50:5.1f} ms  p99 {p99:6.1f} ms"
            f"  errors {self.errors}  server CPU {per_change:4.0f} us/change"
            f" ({self.server_cpu / self.seconds:.2f} cores), load generator"
            f" {self.client_cpu / self.seconds:.2f}, everything else"
            f" {self.other_cpu / self.seconds:.2f}  (rounds: {shown})"
        )


def value_for(client: int, index: int) -> str:
    """A distinct 43-character base64url value, as a DNS-01 digest is."""
    return f"{client:04d}v{index:038d}"


Change = Callable[[int, int, bool], Awaitable[bool]]  # (client, index, add) -> answered ok


async def drive(change: Change, clients: int, seconds: float) -> Result:
    """`clients` loops, each adding a value at its own names and removing it again."""
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds
    latencies: list[float] = []
    errors = 0

    async def client(number: int) -> None:
        nonlocal errors
        index = 0
        while loop.time() < stop:
            for add in (True, False):
                started = time.perf_counter()
                ok = await change(number, index, add)
                latencies.append(time.perf_counter() - started)
                errors += not ok
            index += 1

    started = loop.time()
    await asyncio.gather(*(client(n) for n in range(clients)))
    return Result(len(latencies), errors, latencies, loop.time() - started)


async def updates(port: int, secret: str, clients: int, seconds: float) -> Result:
    """Signed UPDATEs over one UDP socket, answers matched by message id."""
    loop = asyncio.get_running_loop()
    keyring = dns.tsigkeyring.from_text({KEY_NAME: secret})
    waiting: dict[int, asyncio.Future[int]] = {}

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            if len(data) >= 4:
                future = waiting.pop(int.from_bytes(data[:2], "big"), None)
                if future is not None and not future.done():
                    future.set_result(data[3] & 0x0F)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))

    async def change(client: int, index: int, add: bool) -> bool:
        update = dns.update.UpdateMessage(ZONE, keyring=keyring, keyname=KEY_NAME)
        name = f"_acme-challenge.c{client}-{index % 50}.{ZONE}."
        if add:
            update.add(name, 60, "TXT", value_for(client, index))
        else:
            update.delete(name, "TXT", value_for(client, index))
        while update.id in waiting:
            update.id = (update.id + 1) % 65536
        future: asyncio.Future[int] = loop.create_future()
        waiting[update.id] = future
        transport.sendto(update.to_wire())
        try:
            return await asyncio.wait_for(future, 3) == dns.rcode.NOERROR
        except TimeoutError:
            waiting.pop(update.id, None)
            return False

    try:
        return await drive(change, clients, seconds)
    finally:
        transport.close()


async def notifications(url: str, clients: int, seconds: float) -> Result:
    """The same changes through lego's httpreq protocol, keep-alive connections."""
    import aiohttp

    credentials = base64.b64encode(f"bench:{PASSWORD}".encode()).decode()
    headers = {"Content-Type": "application/json", "Authorization": f"Basic {credentials}"}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def change(client: int, index: int, add: bool) -> bool:
            name = f"_acme-challenge.c{client}-{index % 50}.{ZONE}."
            body = json.dumps({"fqdn": name, "value": value_for(client, index)})
            path = "/present" if add else "/cleanup"
            async with session.post(url + path, data=body) as response:
                await response.read()
                return response.status == 200

        return await drive(change, clients, seconds)


def config(folder: Path, http_port: int, dns_port: int, secret: str) -> Path:
    path = folder / "receiver.toml"
    (folder / "tsig.secret").write_text(secret)
    (folder / "httpreq.password").write_text(PASSWORD)
    path.write_text(f"""
[server]
listen = "127.0.0.1:{http_port}"
[log]
format = "json"
[certificate_manager]
enabled = false
[httpreq]
enabled = true
username = "bench"
password_file = "{folder}/httpreq.password"
[journal]
database = "{folder}/journal.sqlite3"
[propagation]
check = false
[rfc2136_door]
enabled = true
listen = "127.0.0.1:{dns_port}"
[[rfc2136_door.keys]]
name = "{KEY_NAME}"
secret_file = "{folder}/tsig.secret"
zones = ["{ZONE}"]
changes_per_minute = 10000000
burst = 10000
[[zones]]
name = "{ZONE}"
provider = "memory"
""")
    return path


@contextmanager
def bind(folder: Path) -> Iterator[Bind]:
    server = Bind(folder / "bind", [ZONE])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_for_door(port: int, within: float = 15) -> None:
    import dns.query

    deadline = time.monotonic() + within
    while True:
        try:
            query = dns.message.make_query(ZONE, "SOA")
            if dns.query.udp(query, "127.0.0.1", port=port, timeout=0.5).answer:
                return
        except (dns.exception.Timeout, OSError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the receiver's RFC 2136 door did not answer")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[Result]] = {"door": [], "httpreq": [], "bind": []}
    with tempfile.TemporaryDirectory() as tmp, bind(Path(tmp)) as named:
        folder = Path(tmp)
        http_port, dns_port = free_port(), free_port()
        url = f"http://127.0.0.1:{http_port}"
        path = config(folder, http_port, dns_port, named.secret)
        with process(receiver(path), f"{url}/present") as ours:
            wait_for_door(dns_port)
            assert named.process is not None
            for _ in range(args.rounds):
                for name, pid, load in (
                    ("door", ours.pid, updates(dns_port, named.secret, args.clients, args.seconds)),
                    ("httpreq", ours.pid, notifications(url, args.clients, args.seconds)),
                    (
                        "bind",
                        named.process.pid,
                        updates(named.port, named.secret, args.clients, args.seconds),
                    ),
                ):
                    server_before, client_before = tree_cpu(pid), time.process_time()
                    busy_before = machine_busy()
                    result = asyncio.run(load)
                    result.server_cpu = tree_cpu(pid) - server_before
                    result.client_cpu = time.process_time() - client_before
                    result.other_cpu = max(
                        0.0, machine_busy() - busy_before - result.server_cpu - result.client_cpu
                    )
                    results[name].append(result)
    best = {name: max(rounds, key=lambda r: r.rate) for name, rounds in results.items()}
    print(
        f"load: {args.clients} clients, {args.seconds:g} s x {args.rounds} rounds,"
        f" {os.cpu_count()} CPUs; each client adds a value, then removes it, one change per"
        " message (signed UDP UPDATE, or HTTP request)"
    )
    labels = {
        "door": "rfc2136 door -> memory",
        "httpreq": "httpreq (HTTP) -> memory",
        "bind": "BIND named, its own zone",
    }
    for name, label in labels.items():
        print(best[name].line(label, [r.rate for r in results[name]]))
    print(f"ratio door/httpreq: {best['door'].rate / best['httpreq'].rate:.2f}")
    print(f"ratio door/bind: {best['door'].rate / best['bind'].rate:.2f}")


if __name__ == "__main__":
    main()
