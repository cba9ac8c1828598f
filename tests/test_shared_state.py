"""`[state]` on a real PostgreSQL server: the service, its responder, its failures."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from receiver import config, signing
from receiver.errors import ConfigError
from receiver.hosts.http import DNS_ADDRESS
from receiver.state import State

from .backends.postgres import Postgres
from .conftest import INSTANCE, Sender, ServiceFactory

REQUIRED = "cert_domain_validation_required"
COMPLETED = "cert_domain_validation_completed"
CERT = INSTANCE.rstrip(":") + ":certificate:aaaa"


def shared(url: str, monkeypatch: pytest.MonkeyPatch, **local: Any) -> dict[str, Any]:
    """Sections for a service on `url` with the `local` zone example.com."""
    monkeypatch.setenv("DCR_DATABASE_URL", url)
    return {
        "state": {"url_env": "DCR_DATABASE_URL", "connect_timeout_seconds": 1},
        "local": {"dns_listen": "127.0.0.1:0", **local},
        "zones": [{"name": "example.com", "provider": "local"}],
    }


async def zone_values(url: str) -> dict[str, set[str]]:
    """What the database holds, read by the test directly (an observer)."""
    db = await asyncpg.connect(url)
    try:
        rows = await db.fetch("SELECT fqdn, value FROM txt_values WHERE expires > $1", time.time())
    finally:
        await db.close()
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row["fqdn"], set()).add(row["value"])
    return found


async def eventually(check: Any, within: float = 2.0, *, every: float = 0.01) -> None:
    """Wait until `check()` is true: another process's view catches up on its own."""
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - nothing to wait on but time
            await asyncio.sleep(every)


async def txt(server: tuple[str, int], name: str) -> dns.message.Message:
    query = dns.message.make_query(name, "TXT")
    return await dns.asyncquery.udp(query, server[0], port=server[1], timeout=2)


async def served(server: tuple[str, int], name: str) -> set[str]:
    answer = await txt(server, name)
    return {b"".join(r.strings).decode() for rrset in answer.answer for r in rrset}


async def publish(
    service: Any, sender: Sender, domain: str, event: str = REQUIRED, **kw: Any
) -> Any:
    value = kw.pop("value", None) or signing.challenge_value()
    body = sender.body(sender.claims(event, domain, value, certificateCRN=CERT, **kw))
    return value, await service.post(body)


async def test_notifications_journal_and_serve_from_postgres(
    start_service: ServiceFactory,
    sender: Sender,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    service = await start_service(**shared(postgres_url, monkeypatch))
    responder = service.client.server.app[DNS_ADDRESS]
    value, response = await publish(service, sender, "www.example.com")
    assert response.status == 200, await response.text()
    assert await zone_values(postgres_url) == {"_acme-challenge.www.example.com": {value}}
    for _ in range(100):  # the mirror follows the database
        if await served(responder, "_acme-challenge.www.example.com") == {value}:
            break
        await asyncio.sleep(0.02)
    assert await served(responder, "_acme-challenge.www.example.com") == {value}

    _, response = await publish(service, sender, "www.example.com", COMPLETED, value=value)
    assert response.status == 200
    assert await zone_values(postgres_url) == {}
    entries = await service.runtime.journal.entries()
    assert [(e.action, e.outcome, e.sender) for e in entries] == [
        ("add", "done", INSTANCE),
        ("remove", "done", INSTANCE),
    ]
    ready = await (await service.client.get("/readyz")).json()
    assert ready["checks"]["database"] == "ok (schema version 3)"
    assert not list(tmp_path.rglob("*.sqlite3*"))  # with [state], no SQLite file anywhere


async def test_database_down_at_start_then_back(
    start_service: ServiceFactory,
    sender: Sender,
    own_postgres: Postgres,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service starts, refuses to write unrecorded (503), and recovers by itself."""
    url = own_postgres.new_database()
    own_postgres.stop()
    sections = shared(url, monkeypatch)
    sections["zones"] = [{"name": "example.com", "provider": "memory"}]
    service = await start_service(**sections)
    response = await service.client.get("/readyz")
    assert response.status == 503
    assert "unavailable" in (await response.json())["checks"]["database"]
    value, response = await publish(service, sender, "www.example.com")
    assert response.status == 503
    assert (await response.json())["error"] == "journal_unavailable"
    assert "Retry-After" in response.headers
    assert await service.all_records() == {}  # nothing written unrecorded

    await asyncio.to_thread(own_postgres.start)
    deadline = time.monotonic() + 10
    while (await service.client.get("/readyz")).status != 200:
        assert time.monotonic() < deadline, "did not recover"
        await asyncio.sleep(0.2)
    _, response = await publish(service, sender, "www.example.com", value=value)
    assert response.status == 200, await response.text()
    assert await service.records("_acme-challenge.www.example.com") == {value}


async def test_acme_dns_accounts_while_the_database_is_down_are_503(
    start_service: ServiceFactory, own_postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = own_postgres.new_database()
    service = await start_service(
        **shared(url, monkeypatch),
        acme_dns={"enabled": True, "zone": "example.com", "allow_register": True},
    )
    assert (await service.client.post("/register")).status == 201
    own_postgres.stop()
    response = await service.client.post("/register")
    assert response.status == 503
    assert (await response.json())["error"] == "state_unavailable"


async def test_a_schema_newer_than_the_code_is_refused(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = config.from_mapping(
        {
            "certificate_manager": {"enabled": False},
            "httpreq": {"enabled": True, "username": "u", "password_env": "DCR_DATABASE_URL"},
            **shared(postgres_url, monkeypatch),
        },
        base_dir=tmp_path,
    )
    async with State.open(settings) as state:
        await state.prepare()
        db = await asyncpg.connect(postgres_url)
        await db.execute("INSERT INTO schema_migrations VALUES (999, 'from the future', 0)")
        await db.close()
    async with State.open(settings) as state:
        with pytest.raises(ConfigError) as refused:
            await state.prepare()
    assert "schema is version 999, newer than this dns-challenge-receiver understands" in str(
        refused.value
    )


async def run_cli(*argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "receiver",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def cli_config(tmp_path: Path) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(
        '[certificate_manager]\nenabled = false\n[httpreq]\nenabled = true\nusername = "u"\n'
        'password_env = "HTTPREQ_PASSWORD"\n[state]\nurl_env = "DCR_DATABASE_URL"\n'
        "connect_timeout_seconds = 2\n"
        '[[zones]]\nname = "example.com"\nprovider = "memory"\n'
    )
    return path


async def test_migrate_and_probe_commands(postgres_server: Postgres, tmp_path: Path) -> None:
    url = postgres_server.new_database()
    env = {"DCR_DATABASE_URL": url, "HTTPREQ_PASSWORD": "x"}
    path = str(cli_config(tmp_path))
    code, out, err = await run_cli("migrate", "--config", path, env=env)
    assert (code, out) == (0, "migrated: applied 1, 2, 3; schema version 3\n")
    assert '"event": "database_migrated"' in err
    code, out, _ = await run_cli("migrate", "--config", path, env=env)
    assert (code, out) == (0, "up to date: schema version 3\n")
    indexes = postgres_server.psql(
        "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes"
        " WHERE tablename = 'journal_entries'",
        database=url.rsplit("/", 1)[1],
    )
    assert indexes.strip() == "journal_created,journal_entries_pkey,journal_value"  # 3 dropped one
    code, out, err = await run_cli("check-config", "--probe", "--config", path, env=env)
    assert code == 0, err
    assert "ok   [state]" in out and "connected; schema version 3" in out


WRONG_DATABASES = [
    (lambda s, url: s.url("test1", password="wrong"), "the database refused the password"),
    (lambda s, url: url.rsplit("/", 1)[0] + "/nosuchdb", 'database "nosuchdb" does not exist'),
    (lambda s, url: url + "?sslmode=require", "TLS does not match"),
]


@pytest.mark.parametrize(
    ("mangle", "expected"),
    [
        *[(mangle, f"state.url: {text}") for mangle, text in WRONG_DATABASES],
        (lambda s, url: f"postgresql://u:p@127.0.0.1:{s.port + 1}/x", "the database is unavail"),
    ],
)
async def test_unusable_databases_are_named_never_a_traceback(
    postgres_server: Postgres, tmp_path: Path, mangle: Any, expected: str
) -> None:
    url = mangle(postgres_server, postgres_server.new_database())
    env = {"DCR_DATABASE_URL": url, "HTTPREQ_PASSWORD": "x"}
    path = str(cli_config(tmp_path))
    code, out, err = await run_cli("migrate", "--config", path, env=env)
    assert code == 1 and err.startswith(f"state: {expected}"), err
    assert "Traceback" not in err and postgres_server.password not in err
    code, out, err = await run_cli("check-config", "--probe", "--config", path, env=env)
    assert code == 1 and "FAIL [state]" in out and expected in out, out + err
    assert "Traceback" not in err


async def test_serve_refuses_to_start_on_a_wrong_password(
    postgres_server: Postgres, tmp_path: Path
) -> None:
    url = postgres_server.url(postgres_server.new_database().rsplit("/", 1)[1], password="no")
    env = {"DCR_DATABASE_URL": url, "HTTPREQ_PASSWORD": "x"}
    code, _, err = await run_cli("serve", "--config", str(cli_config(tmp_path)), env=env)
    assert code == 2
    assert "state.url: the database refused the password" in err and "Traceback" not in err


async def test_the_mirror_polls_when_it_cannot_listen_and_listens_again(
    postgres_url: str,
) -> None:
    """A dropped LISTEN connection costs a poll interval of lag, never stale answers."""
    from providers.base import Secret
    from receiver.config import StateSettings
    from receiver.postgres.database import Database
    from receiver.postgres.records import PostgresRecords, RecordMirror

    reader = Database(StateSettings(url=Secret(postgres_url)))
    writer = Database(StateSettings(url=Secret(postgres_url)))
    mirror = RecordMirror(reader, poll_interval=0.05, safety_interval=0.5)
    records = PostgresRecords(writer, lifetime=3600)
    try:
        await mirror.start()
        await eventually(lambda: mirror.listening)
        admin = await asyncpg.connect(postgres_url)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'dns-challenge-receiver-listen'"
            )
        finally:
            await admin.close()
        assert killed == 1
        await eventually(lambda: not mirror.listening)
        name = "_acme-challenge.x.example.com"
        assert await records.add(name, "v1", 60)
        await eventually(lambda: [v.value for v in mirror.values(name)] == ["v1"])  # polled
        assert mirror.has_descendants("x.example.com") and mirror.has_descendants("example.com")
        assert not mirror.has_descendants(name)
        await eventually(lambda: mirror.listening, within=5)  # and it listens again
        serial = mirror.serial()
        assert await records.remove(name, "v1")
        await eventually(lambda: not mirror.values(name))
        assert mirror.serial() > serial  # monotonic, whoever wrote
    finally:
        await mirror.aclose()
        await reader.aclose()
        await writer.aclose()


async def test_the_mirror_closes_right_after_it_starts_listening(postgres_url: str) -> None:
    """A server stopped just after start: aclose ends every time (on Python 3.11,
    asyncio.wait_for swallowed a cancel that came as the mirror's event was set, and
    aclose then waited forever: the conformance suite's teardown hung)."""
    from providers.base import Secret
    from receiver.config import StateSettings
    from receiver.postgres.database import Database
    from receiver.postgres.records import RecordMirror

    database = Database(StateSettings(url=Secret(postgres_url)))
    try:
        for attempt in range(24):  # the old loop failed about every second time
            mirror = RecordMirror(database)
            await mirror.start()
            # The moment it begins to listen, or a step or two later: no sleep in between.
            await eventually(lambda: mirror.listening, every=0)  # noqa: B023 - awaited at once
            for _ in range(attempt % 3):
                await asyncio.sleep(0)
            # Not asyncio.timeout: aclose suppresses the CancelledError that it would send.
            closing = asyncio.create_task(mirror.aclose())
            done, _ = await asyncio.wait({closing}, timeout=5)
            assert done, f"aclose still waiting (attempt {attempt})"
    finally:
        await database.aclose()


async def test_journal_command_reads_the_shared_journal(
    start_service: ServiceFactory,
    sender: Sender,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    service = await start_service(**shared(postgres_url, monkeypatch))
    value, response = await publish(service, sender, "cli.example.com")
    assert response.status == 200
    path = cli_config(tmp_path)
    env = {"DCR_DATABASE_URL": postgres_url, "HTTPREQ_PASSWORD": "x"}
    code, out, err = await run_cli("journal", "--json", "--config", str(path), env=env)
    assert code == 0, err
    (line,) = out.strip().splitlines()
    assert f'"value": "{value}"' in line and '"outcome": "done"' in line


async def test_journal_off_with_shared_state(
    start_service: ServiceFactory,
    sender: Sender,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """That process writes without journalling; accounts and records stay shared."""
    service = await start_service(
        **shared(postgres_url, monkeypatch),
        journal={"enabled": False},
        acme_dns={"enabled": True, "zone": "example.com", "allow_register": True},
    )
    assert service.runtime.journal is None
    value, response = await publish(service, sender, "nojournal.example.com")
    assert response.status == 200
    assert (await service.client.post("/register")).status == 201
    db = await asyncpg.connect(postgres_url)
    try:
        assert await db.fetchval("SELECT count(*) FROM journal_entries") == 0
        assert await db.fetchval("SELECT count(*) FROM acme_dns_accounts") == 1
        assert await db.fetchval("SELECT value FROM txt_values") == value
    finally:
        await db.close()


async def test_a_sweep_runs_with_a_pool_of_one_and_one_sweep_at_a_time(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The sweep's lock is held outside the pool (a pool of one still sweeps), and a
    second process's sweep skips while the first holds it."""
    from receiver.runtime import Runtime
    from receiver.sweep import sweep

    monkeypatch.setenv("DCR_DATABASE_URL", postgres_url)
    settings = config.from_mapping(
        {
            "certificate_manager": {"enabled": False},
            "httpreq": {"enabled": True, "username": "u", "password_env": "DCR_DATABASE_URL"},
            "state": {"url_env": "DCR_DATABASE_URL", "max_connections": 1},
            "zones": [{"name": "example.com", "provider": "local"}],
        },
        base_dir=tmp_path,
    )
    async with Runtime.open(settings) as first, Runtime.open(settings) as second:
        provider = first.dispatcher.provider_for(settings.zones[0])
        from providers.base import ChangeContext, ZoneRef

        await provider.add_txt(
            ZoneRef("example.com", "example.com"), "_acme-challenge.x.example.com", "v", 60,
            ctx=ChangeContext(request_id="t"),
        )  # fmt: skip
        assert (await sweep(first, max_age=0)).as_dict()["failed"] == 0
        assert second.state.database is not None
        async with second.state.exclusive("sweep") as held:
            assert held
            skipped = await sweep(first, max_age=0)
            assert skipped.as_dict() == {"removed": 0, "settled": 0, "failed": 0, "skipped": 0}
        async with second.state.exclusive("sweep") as held:
            assert held  # released when the first block ended
