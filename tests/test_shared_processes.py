"""Several receiver processes on one PostgreSQL database act as one receiver: what one
writes, every other serves, cleans up and sweeps; a killed process or a database restart
leaves nothing written unrecorded."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from receiver import signing

from .backends.postgres import Postgres
from .conftest import INSTANCE, Sender, ServerProcess
from .test_shared_state import served, zone_values

pytestmark = pytest.mark.slow
REQUIRED = "cert_domain_validation_required"
COMPLETED = "cert_domain_validation_completed"
FAILED = "cert_order_failed"
FOREIGN = ("_acme-challenge.keep.example.com", "someone else's value")


def write_config(tmp_path: Path, public_key_file: Path) -> Path:
    path = tmp_path / "shared.toml"
    path.write_text(f"""
[server]
listen = "127.0.0.1:0"
[log]
format = "json"
[certificate_manager]
allowed_instances = ["{INSTANCE}"]
public_key_file = "{public_key_file}"
[user_token]
verify = false
[state]
url_env = "DCR_DATABASE_URL"
connect_timeout_seconds = 1
[local]
dns_listen = "127.0.0.1:0"
[propagation]
check = false
[acme_dns]
enabled = true
zone = "auth.example.net"
allow_register = true
[[zones]]
name = "example.com"
provider = "local"
[[zones]]
name = "auth.example.net"
provider = "local"
""")
    return path


async def add_foreign_value(url: str) -> None:
    db = await asyncpg.connect(url)
    try:
        await db.execute(
            "INSERT INTO txt_values VALUES ($1, $2, 300, $3, $4)",
            *FOREIGN,
            time.time(),
            time.time() + 86400,
        )
    finally:
        await db.close()


async def pending_entries(url: str) -> int:
    db = await asyncpg.connect(url)
    try:
        return int(
            await db.fetchval("SELECT count(*) FROM journal_entries WHERE outcome = 'pending'")
        )
    finally:
        await db.close()


class Cluster:
    """N `serve` processes on one database."""

    def __init__(self, servers: list[ServerProcess], sender: Sender) -> None:
        self.servers = servers
        self.sender = sender
        self.session = aiohttp.ClientSession()

    def dns(self, index: int) -> tuple[str, int]:
        event = next(e for e in self.servers[index].events() if e.get("event") == "dns_listening")
        host, _, port = event["address"].rpartition(":")
        return host, int(port)

    async def notify(self, index: int, event: str, domain: str, value: str, **claims: Any) -> int:
        certificate = claims.pop("certificate", INSTANCE.rstrip(":") + ":certificate:c")
        body = self.sender.body(
            self.sender.claims(event, domain, value, certificateCRN=certificate, **claims)
        )
        try:
            async with self.session.post(
                self.servers[index].url, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                await response.read()
                return response.status
        except aiohttp.ClientError:
            return 0  # the process died under it

    async def failed_order(self, index: int, certificate: str) -> int:
        failed = {
            "instance_crn": INSTANCE,
            "event_type": FAILED,
            "version": 4,
            "certificates": [{"cert_crn": certificate, "name": "c", "domains": "x"}],
        }
        async with self.session.post(
            self.servers[index].url,
            data=self.sender.body(failed),
            headers={"Content-Type": "application/json"},
        ) as response:
            return response.status

    def base(self, index: int) -> str:
        return self.servers[index].url.rsplit("/", 1)[0]

    async def aclose(self) -> None:
        await self.session.close()


@pytest.fixture
async def cluster(
    run_server: Any,
    sender: Sender,
    public_key_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    postgres_url: str,
) -> Any:
    url = postgres_url
    monkeypatch.setenv("DCR_DATABASE_URL", url)
    config = write_config(tmp_path, public_key_file)
    servers = [await run_server(config) for _ in range(3)]
    for server in servers:
        await server.wait_for("dns_listening")
    made = Cluster(servers, sender)
    made.url = url  # type: ignore[attr-defined]
    made.config = config  # type: ignore[attr-defined]
    yield made
    await made.aclose()


async def test_round_robin_pairs_leave_the_zone_as_it_was(cluster: Any) -> None:
    await add_foreign_value(cluster.url)
    before = await zone_values(cluster.url)
    limit = asyncio.Semaphore(24)

    async def pair(i: int) -> None:
        domain, value = f"n{i % 100}.example.com", signing.challenge_value()
        async with limit:
            assert await cluster.notify(i % 3, REQUIRED, domain, value) == 200
            assert await cluster.notify((i + 1) % 3, COMPLETED, domain, value) == 200

    await asyncio.gather(*(pair(i) for i in range(300)))
    assert await zone_values(cluster.url) == before
    outcomes: dict[str, int] = {}
    async with asyncio.timeout(5):  # servers settle after they answer
        while outcomes != {"done": 600}:
            db = await asyncpg.connect(cluster.url)
            try:
                rows = await db.fetch(
                    "SELECT outcome, count(*) FROM journal_entries GROUP BY outcome"
                )
            finally:
                await db.close()
            outcomes = {row["outcome"]: row["count"] for row in rows}
            await asyncio.sleep(0.05)


async def test_every_responder_serves_what_any_process_wrote(cluster: Any) -> None:
    value = signing.challenge_value()
    name = "_acme-challenge.seen.example.com"
    written = time.monotonic()
    assert await cluster.notify(0, REQUIRED, "seen.example.com", value) == 200
    for index in range(3):
        while await served(cluster.dns(index), name) != {value}:
            assert time.monotonic() - written < 5, f"responder {index} never served it"
            await asyncio.sleep(0.01)
    assert await cluster.notify(2, COMPLETED, "seen.example.com", value) == 200
    for index in range(3):
        while await served(cluster.dns(index), name):
            assert time.monotonic() - written < 10, f"responder {index} kept serving it"
            await asyncio.sleep(0.01)


async def test_acme_dns_account_registered_through_one_updates_through_the_others(
    cluster: Any,
) -> None:
    async with cluster.session.post(cluster.base(0) + "/register") as response:
        assert response.status == 201
        account = await response.json()
    headers = {"X-Api-User": account["username"], "X-Api-Key": account["password"]}
    values = [signing.challenge_value() for _ in range(2)]
    for index, value in zip((1, 2), values, strict=True):
        body = {"subdomain": account["subdomain"], "txt": value}
        async with cluster.session.post(
            cluster.base(index) + "/update", json=body, headers=headers
        ) as response:
            assert response.status == 200, await response.text()
    assert (await zone_values(cluster.url))[account["fulldomain"]] == set(values)


async def test_a_failed_order_reaching_one_process_cleans_up_what_the_others_wrote(
    cluster: Any,
) -> None:
    certificate = INSTANCE.rstrip(":") + ":certificate:failed"
    other = INSTANCE.rstrip(":") + ":certificate:other"
    kept = signing.challenge_value()
    assert await cluster.notify(0, REQUIRED, "a.example.com", signing.challenge_value(),
                                certificate=certificate) == 200  # fmt: skip
    assert await cluster.notify(1, REQUIRED, "b.example.com", signing.challenge_value(),
                                certificate=certificate) == 200  # fmt: skip
    assert await cluster.notify(1, REQUIRED, "c.example.com", kept, certificate=other) == 200
    assert await cluster.failed_order(2, certificate) == 200
    assert await zone_values(cluster.url) == {"_acme-challenge.c.example.com": {kept}}


async def run_sweep(config: Path, url: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "receiver", "sweep", "--max-age", "0", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "DCR_DATABASE_URL": url},
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


async def test_kill_9_mid_burst_then_a_sweep_from_another_restores_the_zone(
    cluster: Any,
) -> None:
    await add_foreign_value(cluster.url)
    before = await zone_values(cluster.url)
    victim = cluster.servers[0]
    answered = 0
    enough = asyncio.Event()

    async def send(i: int) -> None:
        nonlocal answered
        status = await cluster.notify(0, REQUIRED, f"k{i}.example.com", signing.challenge_value())
        if status == 200:
            answered += 1
            if answered >= 15:
                enough.set()

    burst = [asyncio.create_task(send(i)) for i in range(200)]
    await enough.wait()
    os.kill(victim.proc.pid, signal.SIGKILL)
    await asyncio.gather(*burst)
    assert 15 <= answered < 200
    assert await zone_values(cluster.url) != before

    code, output = await run_sweep(cluster.config, cluster.url)
    assert code == 0, output
    assert await zone_values(cluster.url) == before
    assert await pending_entries(cluster.url) == 0


async def test_database_restart_mid_burst(
    run_server: Any,
    sender: Sender,
    public_key_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    own_postgres: Postgres,
) -> None:
    """Every notification succeeded (recorded and written) or got a 5xx; /readyz goes
    503 and back to 200; a sweep afterwards leaves the zone as it was, nothing pending."""
    url = own_postgres.new_database()
    monkeypatch.setenv("DCR_DATABASE_URL", url)
    config = write_config(tmp_path, public_key_file)
    servers = [await run_server(config) for _ in range(3)]
    cluster = Cluster(servers, sender)
    try:
        await add_foreign_value(url)
        before = await zone_values(url)
        outcomes: dict[str, int] = {}
        counter = itertools.count()

        async def keep_sending(stop: asyncio.Event) -> None:
            while not stop.is_set():
                i = next(counter)
                value = signing.challenge_value()
                outcomes[value] = await cluster.notify(i % 3, REQUIRED, f"r{i}.example.com", value)

        seen: list[Any] = []

        async def readyz(index: int) -> int:
            async with cluster.session.get(cluster.base(index) + "/readyz") as response:
                seen.append(await response.json())
                return response.status

        stop = asyncio.Event()
        senders = [asyncio.create_task(keep_sending(stop)) for _ in range(6)]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(own_postgres.stop)
        await asyncio.sleep(0.5)
        assert await readyz(0) == 503
        await asyncio.to_thread(own_postgres.start)
        deadline = time.monotonic() + 15
        while await readyz(0) != 200:
            assert time.monotonic() < deadline, f"readiness never recovered: {seen[-1]}"
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*senders)

        statuses = set(outcomes.values())
        assert statuses <= {200, 503}, statuses
        assert 200 in statuses and 503 in statuses
        published = {v for values in (await zone_values(url)).values() for v in values}
        db = await asyncpg.connect(url)
        try:
            journalled = {r["value"] for r in await db.fetch("SELECT value FROM journal_entries")}
        finally:
            await db.close()
        ok = {value for value, status in outcomes.items() if status == 200}
        assert ok <= published  # every success is written ...
        assert ok <= journalled  # ... and recorded
        assert published - {FOREIGN[1]} <= journalled  # nothing written unrecorded

        code, output = await run_sweep(config, url)
        assert code == 0, output
        assert await zone_values(url) == before
        assert await pending_entries(url) == 0
    finally:
        await cluster.aclose()
