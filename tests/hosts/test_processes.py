"""The serverless doors as real processes: the genuine `awslambdaric` runtime client against
a fake Runtime API, and `functions-framework --asgi`, each with the `local` provider so the
record can be read from its SQLite file by an independent observer."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from receiver import signing
from receiver.config import CONFIG_ENV

from ..conftest import Sender
from ..fakes.lambda_runtime import FakeLambdaRuntime
from . import events
from .conftest import WriteConfig, stored_values

pytestmark = pytest.mark.slow
REQUIRED = "cert_domain_validation_required"
REPO = Path(__file__).resolve().parents[2]
JSON = {"Content-Type": "application/json"}
FQDN = "_acme-challenge.www.example.com"


def local_zone(database: Path) -> list[dict[str, object]]:
    return [{"name": "example.com", "provider": "local", "options": {"database": str(database)}}]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def fake_runtime_api() -> Iterator[FakeLambdaRuntime]:
    fake = FakeLambdaRuntime().start()
    yield fake
    fake.stop()


async def _stop(proc: asyncio.subprocess.Process) -> str:
    """SIGTERM first (gunicorn then stops its workers), then SIGKILL to the whole group the
    test started (a worker left behind would hold the output pipe open)."""
    if proc.returncode is None:
        proc.terminate()
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), 10)
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = await proc.communicate()
    return output.decode(errors="replace")


async def test_lambda_under_the_real_runtime_client(
    tmp_path: Path,
    sender: Sender,
    write_config: WriteConfig,
    fake_runtime_api: FakeLambdaRuntime,
) -> None:
    database = tmp_path / "challenges.sqlite3"
    config = write_config(local_zone(database))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "awslambdaric",
        "receiver.hosts.aws_lambda.handler",
        env={
            **os.environ,
            CONFIG_ENV: str(config),
            "AWS_LAMBDA_RUNTIME_API": fake_runtime_api.address,
            "AWS_LAMBDA_FUNCTION_NAME": "dns-challenge-receiver",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group, ended as a whole in _stop
    )
    try:
        value = signing.challenge_value()
        body = sender.body(sender.claims(REQUIRED, "www.example.com", value))
        event = events.function_url(body, headers=JSON, base64_encoded=True)
        answer = await asyncio.to_thread(fake_runtime_api.invoke, event)
        assert answer.kind == "response", answer
        assert answer.body["statusCode"] == 200, answer
        assert stored_values(database, FQDN) == {value}

        forged = Sender(sender.keys, key_name="attacker")
        event = events.rest_api_v1(
            forged.body(forged.claims(REQUIRED, "www.example.com")), headers=JSON
        )
        answer = await asyncio.to_thread(fake_runtime_api.invoke, event)
        assert answer.kind == "response"
        assert answer.body["statusCode"] == 401, answer
        assert '"error": "invalid_signature"' in answer.body["body"]
        assert stored_values(database, FQDN) == {value}
    finally:
        output = await _stop(proc)
    assert '"event": "notification"' in output  # the receiver's own summary lines


async def test_lambda_on_postgres_closes_its_connection_on_sigterm(
    sender: Sender,
    write_config: WriteConfig,
    fake_runtime_api: FakeLambdaRuntime,
    postgres_url: str,
) -> None:
    """One connection, opened on first use and reused while warm; gone after SIGTERM."""
    import asyncpg

    config = write_config(
        [{"name": "example.com", "provider": "memory"}], state={"url_env": "DCR_DATABASE_URL"}
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "awslambdaric", "receiver.hosts.aws_lambda.handler",
        env={
            **os.environ,
            CONFIG_ENV: str(config),
            "DCR_DATABASE_URL": postgres_url,
            "AWS_LAMBDA_RUNTIME_API": fake_runtime_api.address,
            "AWS_LAMBDA_FUNCTION_NAME": "dns-challenge-receiver",
        },
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip

    async def connections() -> int:
        db = await asyncpg.connect(postgres_url)
        try:
            return int(
                await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name ="
                    " 'dns-challenge-receiver' AND datname = current_database()"
                )
            )
        finally:
            await db.close()

    try:
        for _ in range(3):
            body = sender.body(sender.claims(REQUIRED, "www.example.com"))
            answer = await asyncio.to_thread(
                fake_runtime_api.invoke, events.function_url(body, headers=JSON)
            )
            assert answer.kind == "response" and answer.body["statusCode"] == 200, answer
        assert await connections() == 1
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await proc.wait()
        assert proc.returncode == 0
        assert await connections() == 0
    finally:
        output = await _stop(proc)
    assert "Traceback" not in output, output


@dataclass
class Served:
    url: str
    output: str = ""  # the process's log lines, once it has stopped


@asynccontextmanager
async def functions_framework_serving(
    target: str, config: Path, **env: str
) -> AsyncIterator[Served]:
    """`functions-framework --asgi` serving `target` of deploy/gcp/main.py on loopback."""
    port = _free_port()
    binary = Path(sys.executable).with_name("functions-framework")
    proc = await asyncio.create_subprocess_exec(
        str(binary),
        f"--target={target}",
        f"--source={REPO / 'deploy' / 'gcp' / 'main.py'}",
        "--asgi",
        "--host=127.0.0.1",
        f"--port={port}",
        env={**os.environ, CONFIG_ENV: str(config), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group, ended as a whole in _stop
    )
    served = Served(f"http://127.0.0.1:{port}")
    try:
        async with asyncio.timeout(30):  # listening: a request to `sweep` would sweep
            while True:
                if proc.returncode is not None:
                    raise AssertionError("functions-framework exited:\n" + await _stop(proc))
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.05)
                else:
                    writer.close()
                    await writer.wait_closed()
                    break
        yield served
    finally:
        served.output = await _stop(proc)


@pytest.fixture
async def functions_framework(
    tmp_path: Path, write_config: WriteConfig
) -> AsyncIterator[tuple[str, Path]]:
    """The receiver (`handler`) under functions-framework, on a `local` SQLite store."""
    database = tmp_path / "challenges.sqlite3"
    async with functions_framework_serving("handler", write_config(local_zone(database))) as served:
        yield served.url, database


async def test_cloud_functions_under_functions_framework(
    functions_framework: tuple[str, Path], sender: Sender
) -> None:
    url, database = functions_framework
    value = signing.challenge_value()
    async with aiohttp.ClientSession() as session:
        body = sender.body(sender.claims(REQUIRED, "www.example.com", value))
        async with session.post(f"{url}/callback", data=body, headers=JSON) as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "published", "fqdn": FQDN, "record": FQDN}
            assert resp.headers["X-Request-Id"]
        assert stored_values(database, FQDN) == {value}

        forged = Sender(sender.keys, key_name="attacker")
        body = forged.body(forged.claims(REQUIRED, "www.example.com"))
        async with session.post(f"{url}/callback", data=body, headers=JSON) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "invalid_signature"
        too_big = b"{" + b" " * 70_000 + b"}"
        async with session.post(f"{url}/callback", data=too_big, headers=JSON) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"] == "body_too_large"
        async with session.get(f"{url}/readyz") as resp:
            assert resp.status == 200
    assert stored_values(database, FQDN) == {value}


async def test_cloud_functions_sweep_under_functions_framework(
    sender: Sender, write_config: WriteConfig, postgres_url: str
) -> None:
    """Two functions on one database, as deployed: `handler` writes, and `sweep` (what Cloud
    Scheduler calls) removes the values that have gone stale, and only those."""
    import asyncpg

    config = write_config(
        [{"name": "example.com", "provider": "local"}], state={"url_env": "DCR_DATABASE_URL"}
    )
    values: dict[str, str] = {}
    async with (
        functions_framework_serving("handler", config, DCR_DATABASE_URL=postgres_url) as receiver,
        functions_framework_serving("sweep", config, DCR_DATABASE_URL=postgres_url) as sweeper,
        aiohttp.ClientSession() as session,
    ):
        for name in ("stale", "fresh"):
            values[name] = signing.challenge_value()
            body = sender.body(sender.claims(REQUIRED, f"{name}.example.com", values[name]))
            async with session.post(f"{receiver.url}/callback", data=body, headers=JSON) as resp:
                assert resp.status == 200, await resp.text()
        db = await asyncpg.connect(postgres_url)
        try:
            await db.execute(  # written three hours ago, as far as the journal knows
                "UPDATE journal_entries SET created = created - 3 * 3600 WHERE value = $1",
                values["stale"],
            )
            async with session.post(sweeper.url) as resp:
                assert resp.status == 200, await resp.text()
                assert await resp.json() == {"removed": 1, "settled": 0, "failed": 0, "skipped": 0}
            rows = await db.fetch("SELECT value FROM txt_values")
            assert {row["value"] for row in rows} == {values["fresh"]}
        finally:
            await db.close()
    assert '"event": "sweep"' in sweeper.output
    assert "Traceback" not in sweeper.output, sweeper.output


async def test_cloud_functions_sweep_reports_a_broken_config_as_503(
    write_config: WriteConfig,
) -> None:
    """The scheduler sees a failure (and retries as configured); the log says why."""
    config = write_config(
        [{"name": "example.com", "provider": "local"}], state={"url_env": "DCR_UNSET_URL"}
    )
    async with (
        functions_framework_serving("sweep", config) as sweeper,
        aiohttp.ClientSession() as session,
        session.post(sweeper.url) as resp,
    ):
        assert resp.status == 503
        assert await resp.json() == {"error": "sweep_failed"}
    assert "config_invalid" in sweeper.output and "DCR_UNSET_URL" in sweeper.output


@pytest.mark.parametrize("module", ["receiver.hosts.aws_lambda", "receiver.hosts.gcp_functions"])
def test_serverless_doors_do_not_import_aiohttp(module: str) -> None:
    probe = (
        f"import sys, {module}\n"
        "print(sorted(m for m in sys.modules if m == 'aiohttp' or m.startswith('aiohttp.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert result.stdout.strip() == "[]"


COLLECTOR_PROBE = """
import gc, json, sys
import receiver.hosts.aws_lambda as host
imported = gc.isenabled()
answer = host.handler(json.loads(sys.argv[1]), None)
print(json.dumps({"imported": imported, "status": answer["statusCode"],
                  "answered": gc.isenabled(), "frozen": gc.get_freeze_count()}))
"""
HEALTH = events.function_url(b"", headers={}, method="GET", path="/healthz")


@pytest.mark.parametrize(
    ("under_runtime_client", "first_event", "status"),
    [(True, HEALTH, 200), (True, {"source": "aws.events"}, 400), (False, HEALTH, 200)],
)
def test_lambda_pauses_the_collector_from_import_to_its_first_answer(
    under_runtime_client: bool, first_event: dict[str, object], status: int
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AWS_LAMBDA_RUNTIME_API"}
    if under_runtime_client:
        env["AWS_LAMBDA_RUNTIME_API"] = "127.0.0.1:9"  # set by Lambda for awslambdaric
    result = subprocess.run(
        [sys.executable, "-c", COLLECTOR_PROBE, json.dumps(first_event)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env=env,
    )
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["status"] == status
    assert seen["answered"] is True  # running once the first answer is out, whatever it was
    if under_runtime_client:
        assert seen["imported"] is False  # paused through the imports
        assert seen["frozen"] > 10_000  # start-up's objects, out of the collector's way
    else:
        assert seen["imported"] is True  # a test or a tool keeps its collector
        assert seen["frozen"] == 0
