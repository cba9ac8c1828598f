"""SQLite vs PostgreSQL state ([state]): notification throughput and responder query rate.

Both runs use the default configuration (journal on, propagation checks on, the `local`
provider) and differ only in where state lives: SQLite files beside the config, or a
PostgreSQL server (Debian's `postgresql`, started here on loopback the way the tests do,
fsync off in both: SQLite runs with synchronous=NORMAL). Same signed notifications, same
load generator, same query mix against the built-in responder (with PostgreSQL it answers
from its in-memory mirror). Also: how long a write through one process takes to be
served by another process's responder (LISTEN/NOTIFY), over `--samples` writes.

    python bench/state_backends.py [--seconds 10] [--connections 32] [--samples 50]

Prints each figure, then, last, the two ratios PostgreSQL/SQLite (goals: throughput
>= 0.7, responder >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dns.asyncquery
import dns.message
from dns_responder import NAME, load_dnsperf, load_python, wait_for_dns
from harness import Keys, cpus, free_port, jwks_server, process, receiver, signed_sender
from throughput import SignedLoad, add_load_arguments

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from providers.base import ChangeContext, ZoneRef  # noqa: E402
from receiver.config import load_file  # noqa: E402
from receiver.runtime import Runtime  # noqa: E402
from tests.backends.bind import free_port as free_dns_port  # noqa: E402 - UDP and TCP
from tests.backends.postgres import discard, started  # noqa: E402

VALUE = "x" * 43


def config(folder: Path, keys: Keys, jwks_url: str, port: int, dns: int, *, shared: bool) -> Path:
    state = '[state]\nurl_env = "DCR_DATABASE_URL"\n' if shared else ""
    database = "" if shared else f'database = "{folder}/store-{port}.sqlite3"\n'
    path = folder / f"receiver-{port}.toml"
    path.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
[log]
format = "json"
level = "warning"
{signed_sender(keys, jwks_url)}{state}[local]
{database}dns_listen = "127.0.0.1:{dns}"
value_lifetime_seconds = 86400
[[zones]]
name = "example.com"
provider = "local"
[[zones]]
name = "example.test"
provider = "local"
""")
    return path


@contextmanager
def serving(path: Path, port: int, url: str | None) -> Iterator[None]:
    os.environ.pop("DCR_DATABASE_URL", None)
    if url is not None:
        os.environ["DCR_DATABASE_URL"] = url
    with process(receiver(path), f"http://127.0.0.1:{port}/callback"):
        yield


def seed(path: Path, dns: int) -> None:
    """One TXT value at the name the query mix asks for, written through the receiver's
    own store (SQLite file or the shared database, as the config says)."""

    async def write() -> None:
        settings = load_file(path)
        async with Runtime.open(settings) as runtime:
            provider = runtime.dispatcher.provider_for(settings.zones[1])
            ref = ZoneRef("example.test", "example.test")
            await provider.add_txt(ref, NAME, VALUE, 60, ctx=ChangeContext(request_id="bench"))

    asyncio.run(write())
    wait_for_dns(dns)


def responder_rate(dns: int, seconds: float, folder: Path) -> float:
    if shutil.which("dnsperf"):
        return load_dnsperf(dns, seconds, folder)
    return load_python(dns, seconds)


async def notify_and_time(
    post_url: str, serve: tuple[str, int], bodies: list[bytes], name_of: list[str]
) -> list[float]:
    import aiohttp

    delays = []
    async with aiohttp.ClientSession() as session:
        for body, name in zip(bodies, name_of, strict=True):
            async with session.post(
                post_url, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                assert response.status == 200, await response.text()
            written = time.perf_counter()
            query = dns.message.make_query(name, "TXT")
            while True:
                answer = await dns.asyncquery.udp(query, serve[0], port=serve[1], timeout=1)
                if answer.answer:
                    break
            delays.append((time.perf_counter() - written) * 1000)
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_arguments(parser)
    parser.add_argument("--samples", type=int, default=50, help="cross-process visibility")
    args = parser.parse_args()
    server = started("dcr-bench-pg-")
    results: dict[str, tuple[float, float, float, float]] = {}
    delays: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            keys = Keys(folder)
            load = SignedLoad.from_args(folder, keys, args)
            generator = load.generator

            with jwks_server(keys.user_public) as jwks_url:
                for name, url in (("sqlite", None), ("postgres", server.new_database())):
                    port, dns_port = free_port(), free_dns_port()
                    path = config(folder, keys, jwks_url, port, dns_port, shared=url is not None)
                    with serving(path, port, url):
                        seed(path, dns_port)
                        callback = f"http://127.0.0.1:{port}/callback"
                        load(callback)  # warm-up: key and JWKS fetches, imports, caches
                        rps, p50, p99 = load(callback)
                        qps = responder_rate(dns_port, args.seconds, folder)
                        results[name] = (rps, p50, p99, qps)
                # Cross-process visibility: two processes on one database.
                url = server.new_database()
                ports = [(free_port(), free_dns_port()) for _ in range(2)]
                paths = [config(folder, keys, jwks_url, p, d, shared=True) for p, d in ports]
                with serving(paths[0], ports[0][0], url), serving(paths[1], ports[1][0], url):
                    fresh = keys.bodies(args.samples, start=args.pairs)[::2]  # adds only
                    names = [f"_acme-challenge.h{i}.example.com" for i in
                             range(args.pairs, args.pairs + args.samples)]  # fmt: skip
                    delays = asyncio.run(
                        notify_and_time(
                            f"http://127.0.0.1:{ports[0][0]}/callback",
                            ("127.0.0.1", ports[1][1]),
                            fresh,
                            names,
                        )
                    )
    finally:
        discard(server)
    print(
        f"load: {generator}, {args.connections} connections, {args.seconds:g} s, "
        f"{args.pairs * 2} distinct signed notifications (with user tokens), default "
        f"configuration (journal and propagation checks on, local zones), {cpus()} CPUs"
    )
    for name, (rps, p50, p99, qps) in results.items():
        print(
            f"  {name:<9} {rps:>7.0f} req/s   p50 {p50:7.2f} ms   p99 {p99:7.2f} ms"
            f"   responder {qps:>8.0f} q/s"
        )
    delays.sort()
    print(
        f"write in process A -> served by process B's responder: median "
        f"{statistics.median(delays):.1f} ms, max {delays[-1]:.1f} ms over {len(delays)} writes"
    )
    sqlite, postgres = results["sqlite"], results["postgres"]
    print(f"responder ratio postgres/sqlite: {postgres[3] / sqlite[3]:.2f}")
    print(f"throughput ratio postgres/sqlite: {postgres[0] / sqlite[0]:.2f}")


if __name__ == "__main__":
    main()
