"""The journal, failed-order clean-up and the sweep."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from providers.base import ZoneRef
from providers.local import ChallengeStore
from receiver import signing
from receiver.journal import Entry, GroupCommit
from receiver.sqlite.journal import SqliteJournal
from receiver.sweep import sweep

from . import rawhttp
from .conftest import (
    INSTANCE,
    OTHER_INSTANCE,
    Sender,
    ServiceFactory,
    service_events,
    shared_store_config,
)

REQUIRED = "cert_domain_validation_required"
COMPLETED = "cert_domain_validation_completed"
CERT_A = INSTANCE.rstrip(":") + ":certificate:aaaa"
CERT_B = INSTANCE.rstrip(":") + ":certificate:bbbb"


def local_sections(tmp_path: Path, **journal: Any) -> dict[str, Any]:
    return {
        "local": {"database": str(tmp_path / "shared.sqlite3"), "dns_listen": "127.0.0.1:0"},
        "zones": [{"name": "example.com", "provider": "local"}],
        "journal": journal,
    }


async def publish(
    service: Any,
    sender: Sender,
    domain: str,
    *,
    certificate: str = CERT_A,
    event: str = REQUIRED,
    value: str | None = None,
    **claims: Any,
) -> str:
    value = value or signing.challenge_value()
    body = sender.body(sender.claims(event, domain, value, certificateCRN=certificate, **claims))
    resp = await service.post(body)
    assert resp.status == 200, await resp.text()
    return value


def store_values(tmp_path: Path) -> dict[str, set[str]]:
    store = ChallengeStore(tmp_path / "shared.sqlite3", lifetime=3600)
    try:
        return {name: {v.value for v in store.values(name)} for name in store.names("example.com")}
    finally:
        store.close()


def age(tmp_path: Path, value: str, seconds: float) -> None:
    """Pretend the entries of `value` were written `seconds` ago."""
    with sqlite3.connect(tmp_path / "shared.sqlite3") as db:
        db.execute(
            "UPDATE journal_entries SET created = ? WHERE value = ?", (time.time() - seconds, value)
        )


async def test_every_write_is_recorded_with_its_origin(
    start_service: ServiceFactory, sender: Sender, tmp_path: Path
) -> None:
    service = await start_service(**local_sections(tmp_path))
    user_token = sender.user_token()
    value = await publish(service, sender, "*.www.example.com", user_token=user_token)
    await publish(service, sender, "*.www.example.com", value=value, event=COMPLETED)
    entries = await service.runtime.journal.entries()
    assert [(e.action, e.outcome) for e in entries] == [("add", "done"), ("remove", "done")]
    first = entries[0]
    assert (first.door, first.sender, first.user, first.certificate, first.domain) == (
        "certificate_manager",
        INSTANCE,
        "IBMid-550000DEMO",
        CERT_A,
        "*.www.example.com",
    )
    assert (first.fqdn, first.value, first.provider, first.zone) == (
        "_acme-challenge.www.example.com",
        value,
        "local",
        "example.com",
    )
    assert first.request_id and first.settled and first.settled >= first.created


async def test_nothing_is_written_when_the_journal_cannot_record(
    start_service: ServiceFactory, sender: Sender, tmp_path: Path
) -> None:
    (tmp_path / "not-a-directory").write_text("")
    service = await start_service(
        **local_sections(tmp_path, database=str(tmp_path / "not-a-directory" / "j.sqlite3"))
    )
    resp = await service.post(sender.body(sender.claims(REQUIRED, "example.com")))
    assert resp.status == 503
    assert (await resp.json())["error"] == "journal_unavailable"
    assert store_values(tmp_path) == {}


@pytest.mark.parametrize("event", ["cert_order_failed", "cert_renew_failed"])
async def test_a_failed_order_removes_its_values_and_only_those(
    start_service: ServiceFactory, sender: Sender, tmp_path: Path, event: str
) -> None:
    service = await start_service(**local_sections(tmp_path))
    a1 = await publish(service, sender, "example.com")
    a2 = await publish(service, sender, "*.example.com")
    b1 = await publish(service, sender, "www.example.com", certificate=CERT_B)
    other = Sender(sender.keys, instance_crn=OTHER_INSTANCE, key_name="other_instance")
    foreign = await publish(service, other, "example.com", certificate=CERT_A)  # same CRN text

    failed = {
        "instance_crn": INSTANCE,
        "event_type": event,
        "version": 4,
        "certificates": [
            {
                "cert_crn": CERT_A,
                "name": "a",
                "domains": "example.com",
                "additional_info": {"code": "x", "message": "y"},
            }
        ],
    }
    resp = await service.post(sender.body(failed))
    assert resp.status == 200
    assert await resp.json() == {
        "status": "cleaned",
        "event_type": event,
        "removed": 2,
        "failed": 0,
    }
    assert store_values(tmp_path) == {
        "_acme-challenge.example.com": {foreign},  # another instance's value stays
        "_acme-challenge.www.example.com": {b1},
    }
    assert a1 not in str(store_values(tmp_path)) and a2 not in str(store_values(tmp_path))
    doors = [e.door for e in await service.runtime.journal.entries() if e.action == "remove"]
    assert doors == ["failed_order", "failed_order"]


async def test_malformed_certificate_lists_are_rejected(
    start_service: ServiceFactory, sender: Sender, tmp_path: Path
) -> None:
    service = await start_service(**local_sections(tmp_path))
    failed = {
        "instance_crn": INSTANCE,
        "event_type": "cert_order_failed",
        "certificates": [{"cert_crn": 7}],
    }
    resp = await service.post(sender.body(failed))
    assert resp.status == 400


async def test_sweep_age_boundaries(
    start_service: ServiceFactory, sender: Sender, tmp_path: Path
) -> None:
    service = await start_service(**local_sections(tmp_path, max_age_seconds=7200))
    old = await publish(service, sender, "old.example.com")
    young = await publish(service, sender, "young.example.com")
    done = await publish(service, sender, "done.example.com")
    await publish(service, sender, "done.example.com", value=done, event=COMPLETED)
    age(tmp_path, old, 7201)
    age(tmp_path, young, 7100)
    age(tmp_path, done, 9000)

    dry = await sweep(service.runtime, dry_run=True)
    assert [e.value for e in dry.removed] == [old]
    assert store_values(tmp_path)["_acme-challenge.old.example.com"] == {old}  # dry: kept

    report = await sweep(service.runtime)
    assert [e.value for e in report.removed] == [old]
    assert store_values(tmp_path) == {"_acme-challenge.young.example.com": {young}}
    assert (await sweep(service.runtime)).removed == []  # settled: never swept again


async def test_pending_entries_are_settled_from_the_providers_state(
    start_service: ServiceFactory, sender: Sender, tmp_path: Path
) -> None:
    """What a kill -9 between the write and the settle leaves behind."""
    service = await start_service(**local_sections(tmp_path))
    journal = service.runtime.journal
    (provider,) = service.runtime.providers.values()
    landed, lost = signing.challenge_value(), signing.challenge_value()
    from providers.base import ChangeContext

    await provider.add_txt(
        ZoneRef("example.com", "example.com"),
        "_acme-challenge.landed.example.com",
        landed,
        60,
        ctx=ChangeContext("crash"),
    )
    for name, value in (("landed", landed), ("lost", lost)):
        await journal.begin(
            Entry(
                action="add",
                outcome="pending",
                fqdn=f"_acme-challenge.{name}.example.com",
                value=value,
                provider="local",
                zone="example.com",
                door="certificate_manager",
                created=time.time() - 10,
            )
        )
    report = await sweep(service.runtime, max_age=0)
    assert [e.value for e in report.removed] == [landed]
    assert [e.value for e in report.settled] == [lost]
    assert store_values(tmp_path) == {}
    outcomes = {(e.value, e.action, e.outcome) for e in await journal.entries()}
    assert outcomes == {
        (landed, "add", "done"),
        (landed, "remove", "done"),
        (lost, "add", "failed"),
    }


async def test_two_processes_share_one_journal(
    start_service: ServiceFactory, sender: Sender, tmp_path: Path
) -> None:
    first = await start_service(**local_sections(tmp_path))
    second = await start_service(**local_sections(tmp_path))
    values = await asyncio.gather(
        *(publish((first, second)[i % 2], sender, f"h{i}.example.com") for i in range(30))
    )
    await second.runtime.journal.entries()  # its settles go out after its answers
    entries = await first.runtime.journal.entries()
    assert len(entries) == 30 and {e.value for e in entries} == set(values)
    assert {e.outcome for e in entries} == {"done"}
    report = await sweep(second.runtime, max_age=0)  # one sweeps what both wrote
    assert len(report.removed) == 30
    assert store_values(tmp_path) == {}


async def test_journal_never_holds_a_token(
    start_service: ServiceFactory, sender: Sender, tmp_path: Path
) -> None:
    service = await start_service(**local_sections(tmp_path))
    user_token = sender.user_token()
    body = sender.body(sender.claims(REQUIRED, "example.com", user_token=user_token))
    assert (await service.post(body)).status == 200
    await service.runtime.journal.aclose()  # checkpoint the WAL into the file
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("shared.sqlite3*"))
    envelope = json.loads(body)["data"]
    for secret in (user_token, user_token.split(".")[2], envelope, envelope.split(".")[2]):
        assert secret.encode() not in raw


async def test_prune_keeps_what_the_sweep_needs(tmp_path: Path) -> None:
    journal = GroupCommit(SqliteJournal(tmp_path / "j.sqlite3"))
    long_ago = time.time() - 200 * 86400

    def entry(action: str, value: str) -> Entry:
        return Entry(
            action=action,
            outcome="pending",
            fqdn="n",
            value=value,  # type: ignore[arg-type]
            provider="local",
            zone="z",
            door="t",
            created=long_ago,
        )

    for action, value in (("add", "gone"), ("remove", "gone"), ("add", "published")):
        await journal.settle(await journal.begin(entry(action, value)), "done")
    await journal.begin(entry("add", "crashed"))  # pending: never pruned
    assert await journal.prune(time.time() - 90 * 86400) == 2
    assert sorted(e.value for e in await journal.entries()) == ["crashed", "published"]
    await journal.aclose()


async def test_audit_endpoint_needs_the_admin_token(
    start_service: ServiceFactory,
    sender: Sender,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed = await start_service(**local_sections(tmp_path))
    assert (await closed.client.get("/journal")).status == 404
    monkeypatch.setenv("ADMIN_TOKEN", "s3cret-admin")
    service = await start_service(**local_sections(tmp_path, admin_token_env="ADMIN_TOKEN"))
    value = await publish(service, sender, "www.example.com")
    await publish(service, sender, "other.example.com")
    assert (await service.client.get("/journal")).status == 401
    wrong = await service.client.get("/journal", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    resp = await service.client.get(
        "/journal?domain=www.example.com", headers={"Authorization": "Bearer s3cret-admin"}
    )
    assert resp.status == 200
    entries = (await resp.json())["entries"]
    assert [e["value"] for e in entries] == [value]


async def test_journal_and_sweep_commands(
    start_service: ServiceFactory, sender: Sender, tmp_path: Path, public_key_file: Path
) -> None:
    service = await start_service(**local_sections(tmp_path))
    value = await publish(service, sender, "cli.example.com")
    config = tmp_path / "r.toml"
    config.write_text(f"""
[certificate_manager]
allowed_instances = ["{INSTANCE}"]
public_key_file = "{public_key_file}"
[local]
database = "shared.sqlite3"
[propagation]
check = false
[[zones]]
name = "example.com"
provider = "local"
""")

    async def run(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "receiver",
            *args,
            "--config",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode() + err.decode()

    code, out = await run("journal", "--json", "--since", "1h")
    assert code == 0
    (line,) = out.strip().splitlines()
    assert json.loads(line)["value"] == value
    code, out = await run("journal", "--domain", "example.org")
    assert (code, out.strip()) == (0, "")
    code, out = await run("sweep")  # younger than the default 2 hours
    assert (code, out) == (0, "")
    code, out = await run("sweep", "--max-age", "0s")
    assert code == 0 and f"removed _acme-challenge.cli.example.com {value}" in out
    assert store_values(tmp_path) == {}


async def test_kill_9_mid_burst_then_sweep_restores_the_zone(
    tmp_path: Path, sender: Sender, public_key_file: Path, run_server: Any
) -> None:
    import os
    import signal

    import aiohttp

    store = ChallengeStore(tmp_path / "shared.sqlite3", lifetime=86400)
    store.add("_acme-challenge.keep.example.com", "someone else's value", 300)
    store.close()
    before = store_values(tmp_path)
    config = shared_store_config(tmp_path, public_key_file)
    server = await run_server(config)
    bodies = [sender.body(sender.claims(REQUIRED, f"b{i}.example.com")) for i in range(300)]
    answered = 0
    enough = asyncio.Event()

    async def send(session: aiohttp.ClientSession, body: bytes) -> None:
        nonlocal answered
        try:
            async with session.post(
                server.url, data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                await resp.read()
                answered += 1
                if answered >= 15:
                    enough.set()
        except aiohttp.ClientError:
            pass  # the server died under it

    async with aiohttp.ClientSession() as session:
        burst = [asyncio.create_task(send(session, body)) for body in bodies]
        await enough.wait()
        os.kill(server.proc.pid, signal.SIGKILL)
        await asyncio.gather(*burst)
    await server.proc.wait()
    assert 15 <= answered < 300  # killed in the middle
    assert store_values(tmp_path) != before

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "receiver",
        "sweep",
        "--max-age",
        "0",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert store_values(tmp_path) == before
    journal = SqliteJournal(tmp_path / "shared.sqlite3")
    try:
        assert "pending" not in {e.outcome for e in await journal.entries()}
    finally:
        await journal.aclose()


async def test_the_server_sweeps_at_start_and_then_periodically(
    start_service: ServiceFactory, sender: Sender, tmp_path: Path
) -> None:
    first = await start_service(**local_sections(tmp_path))
    stale = await publish(first, sender, "stale.example.com")
    fresh = await publish(first, sender, "fresh.example.com")
    age(tmp_path, stale, 3 * 3600)
    await start_service(**local_sections(tmp_path))  # a restart: sweeps at once
    for _ in range(50):
        if "_acme-challenge.stale.example.com" not in store_values(tmp_path):
            break
        await asyncio.sleep(0.05)
    assert store_values(tmp_path) == {"_acme-challenge.fresh.example.com": {fresh}}


ADMIN = {"Authorization": "Bearer s3cret-admin"}


def answers_logged(captured: io.StringIO) -> list[tuple[str, int]]:
    """(event, status) of every logged answer; a traceback anywhere fails the test."""
    found = service_events(captured)
    assert not [e for e in found if "exception" in e], found
    return [(e["event"], e["status"]) for e in found if "status" in e]


async def audited_service(
    start_service: ServiceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    monkeypatch.setenv("ADMIN_TOKEN", "s3cret-admin")
    return await start_service(**local_sections(tmp_path, admin_token_env="ADMIN_TOKEN"))


@pytest.mark.parametrize(
    "authorization",
    [
        b"Bearer \xff",  # not UTF-8
        b"\xff",
        "Bearer s3cret-admé".encode(),
        b"Bearer s3cret-admin\xc0",
    ],
)
async def test_audit_endpoint_undecodable_credentials_are_401(
    captured: io.StringIO,
    start_service: ServiceFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    authorization: bytes,
) -> None:
    """Raw bytes over a socket: aiohttp's client would not send these headers."""
    service = await audited_service(start_service, tmp_path, monkeypatch)
    request = rawhttp.request("GET", "/journal", [(b"Authorization", authorization)])
    response = await rawhttp.exchange(service.client.host, service.client.port, request)
    assert response.status == 401
    assert response.json()["error"] == "unauthorized" and response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"
    assert answers_logged(captured) == [("notification", 401)]


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        ("s3cret-admin", 401),  # the scheme is required
        ("Basic s3cret-admin", 401),
        ("Bearer", 401),
        ("Bearer  s3cret-admin", 200),  # RFC 7235: one or more spaces
        ("bearer s3cret-admin", 200),  # the scheme is case-insensitive
        ("BEARER s3cret-admin", 200),
        ("Bearer s3cret-admin2", 401),
    ],
)
async def test_audit_endpoint_bearer_scheme(
    start_service: ServiceFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    authorization: str,
    status: int,
) -> None:
    service = await audited_service(start_service, tmp_path, monkeypatch)
    resp = await service.client.get("/journal", headers={"Authorization": authorization})
    assert resp.status == status
    if status == 401:
        assert (await resp.json())["error"] == "unauthorized"


@pytest.mark.parametrize(
    "query", ["limit=-1", "limit=0", "limit=10001", "limit=x", "limit=", "since=nan", "since=x"]
)
async def test_audit_endpoint_rejects_bad_queries(
    captured: io.StringIO,
    start_service: ServiceFactory,
    sender: Sender,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    query: str,
) -> None:
    service = await audited_service(start_service, tmp_path, monkeypatch)
    await publish(service, sender, "www.example.com")
    resp = await service.client.get(f"/journal?{query}", headers=ADMIN)
    assert resp.status == 400, await resp.text()
    body = await resp.json()
    assert body["error"] == "bad_request" and body["detail"]
    assert answers_logged(captured)[-1:] == [("notification", 400)]
    assert answers_logged(captured).count(("notification", 400)) == 1


async def test_audit_endpoint_limit_and_domain_are_literal(
    start_service: ServiceFactory,
    sender: Sender,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`domain` is a name and the names below it, never a LIKE pattern; limit is a count."""
    service = await audited_service(start_service, tmp_path, monkeypatch)
    www = await publish(service, sender, "www.example.com")
    other = await publish(service, sender, "other.example.com")

    async def values(query: str) -> list[str]:
        resp = await service.client.get(f"/journal?{query}", headers=ADMIN)
        assert resp.status == 200, await resp.text()
        return [e["value"] for e in (await resp.json())["entries"]]

    assert len(await values("limit=10000")) == 2
    assert await values("limit=1") == [other]
    for pattern in ("%25", "%25example.com", "_", "example.co_", "www.example.co%25", "\\"):
        assert await values(f"domain={pattern}") == [], pattern
    assert await values("domain=www.example.com") == [www]
    assert len(await values("domain=example.com")) == 2
    assert await values("domain=_acme-challenge.www.example.com") == [www]


async def test_the_server_answers_before_the_settle_commits(
    start_service: ServiceFactory,
    sender: Sender,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The intent is committed before the write; the outcome need not be before the
    answer (a lost settle leaves the entry pending for the sweep). Serverless waits."""
    service = await start_service(**local_sections(tmp_path))
    journal = service.runtime.journal
    release = asyncio.Event()
    write_batch = journal.backend.write_batch

    async def slow_settles(entries: Any, checks: Any, settlements: Any) -> Any:
        if settlements:
            await release.wait()
        return await write_batch(entries, checks, settlements)

    monkeypatch.setattr(journal.backend, "write_batch", slow_settles)
    async with asyncio.timeout(5):
        value = await publish(service, sender, "fast.example.com")  # answered meanwhile
    (pending,) = await journal.backend.entries()
    assert (pending.value, pending.outcome) == (value, "pending")
    release.set()
    (settled,) = await journal.entries()  # a process reads its own settles
    assert settled.outcome == "done"


async def test_a_journal_file_made_before_loses_the_unused_certificate_index(
    tmp_path: Path,
) -> None:
    """The index on `certificate` was never used by a query and cost a third of every
    insert: a file that has it loses it when the journal opens, its entries kept."""
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE journal_entries (id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT"
        " NULL, settled REAL, action TEXT NOT NULL, outcome TEXT NOT NULL, door TEXT NOT NULL,"
        " sender TEXT, user TEXT, certificate TEXT, domain TEXT, fqdn TEXT NOT NULL, value TEXT"
        " NOT NULL, provider TEXT NOT NULL, zone TEXT NOT NULL, request_id TEXT, error TEXT);"
        "CREATE INDEX journal_certificate ON journal_entries (certificate);"
        "INSERT INTO journal_entries (created, action, outcome, door, fqdn, value, provider,"
        " zone) VALUES (1.0, 'add', 'done', 'httpreq', '_acme-challenge.example.com', 'v',"
        " 'memory', 'example.com');"
    )
    old.close()
    journal = SqliteJournal(path)
    (kept,) = await journal.entries()
    await journal.aclose()
    indexes = sqlite3.connect(path).execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'journal_entries'"
    )
    assert sorted(name for (name,) in indexes) == ["journal_created", "journal_value"]
    assert (kept.value, kept.outcome) == ("v", "done")
