"""The Lambda handler, called as Lambda calls it, with events shaped like AWS's examples.

The handler owns its event loop (asyncio.Runner), so each call runs in a worker thread
while the test's loop keeps serving the fake IBM Cloud's key endpoint.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from providers.base import ZoneRef
from providers.memory import MemoryProvider
from receiver import signing
from receiver.hosts import aws_lambda

from ..conftest import INSTANCE, FakeIbmCloud, Sender, ServiceFactory
from . import events
from .conftest import WriteConfig

REQUIRED = "cert_domain_validation_required"
COMPLETED = "cert_domain_validation_completed"
JSON = {"Content-Type": "application/json"}
# The shipped Lambda config's [state] (its URL variable and pool size), minus the URL.
DEPLOYED_STATE = tomllib.loads(
    (Path(__file__).resolve().parents[2] / "deploy" / "aws" / "receiver.toml").read_text()
)["state"]


@dataclass
class Context:
    """The attributes of Lambda's context object that the handler may read."""

    aws_request_id: str = "8476a536-e9f4-11e8-9739-2dfe598c3fcd"
    function_name: str = "dns-challenge-receiver"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


async def invoke(event: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
    answer = await asyncio.to_thread(aws_lambda.handler, event, Context())
    assert set(answer) == {"statusCode", "headers", "body", "isBase64Encoded"}
    assert answer["isBase64Encoded"] is False
    assert answer["headers"]["Content-Type"] == "application/json"
    return answer["statusCode"], answer["headers"], json.loads(answer["body"])


async def memory_records(container: aws_lambda._Container, fqdn: str) -> frozenset[str]:
    runtime = container.holder._runtime
    assert runtime is not None
    (provider,) = {id(p): p for p in runtime.providers.values()}.values()
    assert isinstance(provider, MemoryProvider)
    return await provider.list_txt(ZoneRef("", ""), fqdn)


@pytest.mark.parametrize("kind", sorted(events.BUILDERS))
@pytest.mark.parametrize("base64_encoded", [False, True], ids=["text", "base64"])
async def test_signed_notifications_write_and_remove_the_record(
    kind: str,
    base64_encoded: bool,
    sender: Sender,
    write_config: WriteConfig,
    lambda_container: aws_lambda._Container,
) -> None:
    write_config()
    build = events.BUILDERS[kind]
    value = signing.challenge_value()
    body = sender.body(sender.claims(REQUIRED, "www.example.com", value))
    status, headers, answer = await invoke(build(body, headers=JSON, base64_encoded=base64_encoded))
    assert (status, answer) == (
        200,
        {
            "status": "published",
            "fqdn": "_acme-challenge.www.example.com",
            "record": "_acme-challenge.www.example.com",
        },
    )
    assert headers["X-Request-Id"]
    assert await memory_records(lambda_container, "_acme-challenge.www.example.com") == {value}

    body = sender.body(sender.claims(COMPLETED, "www.example.com", value))
    status, _, answer = await invoke(build(body, headers=JSON, base64_encoded=base64_encoded))
    assert (status, answer["status"]) == (200, "removed")
    assert await memory_records(lambda_container, "_acme-challenge.www.example.com") == set()


@pytest.mark.parametrize("kind", sorted(events.BUILDERS))
async def test_forged_notification_is_rejected_as_json_and_writes_nothing(
    kind: str,
    sender: Sender,
    write_config: WriteConfig,
    lambda_container: aws_lambda._Container,
) -> None:
    write_config()
    forged = Sender(sender.keys, key_name="attacker")  # right instance, wrong key
    body = forged.body(forged.claims(REQUIRED, "www.example.com"))
    status, _, answer = await invoke(events.BUILDERS[kind](body, headers=JSON))
    assert 400 <= status < 500
    assert set(answer) == {"error", "detail"}
    runtime = lambda_container.holder._runtime
    assert runtime is not None
    assert await memory_records(lambda_container, "_acme-challenge.www.example.com") == set()


@pytest.mark.parametrize(
    ("method", "path", "content_type", "forged"),
    [
        ("POST", "/callback", "application/json", False),
        ("POST", "/callback", "application/json", True),
        ("POST", "/callback", "text/plain", False),
        ("GET", "/callback", "application/json", False),
        ("POST", "/elsewhere", "application/json", False),
    ],
)
async def test_same_answers_as_the_http_door(
    method: str,
    path: str,
    content_type: str,
    forged: bool,
    sender: Sender,
    write_config: WriteConfig,
    lambda_container: aws_lambda._Container,
    start_service: ServiceFactory,
) -> None:
    """One core, two doors: the same status and JSON body for the same request (aiohttp's
    router words its own 404/405 details, so only status and error code are compared there)."""
    write_config()
    service = await start_service()
    signer = Sender(sender.keys, key_name="attacker") if forged else sender
    body = signer.body(signer.claims(REQUIRED, "www.example.com", signing.challenge_value()))
    over_http = await service.client.request(
        method, path, data=body, headers={"Content-Type": content_type}
    )
    status, _, answer = await invoke(
        events.http_api_v2(body, headers={"Content-Type": content_type}, method=method, path=path)
    )
    expected = await over_http.json()
    if over_http.status in (404, 405):
        answer, expected = answer["error"], expected["error"]
    assert (status, answer) == (over_http.status, expected)


async def test_header_names_in_any_case(
    sender: Sender, write_config: WriteConfig, lambda_container: aws_lambda._Container
) -> None:
    write_config()
    event = events.rest_api_v1(
        sender.body(sender.claims(REQUIRED, "any.example.com")),
        headers={"CONTENT-type": "application/json", "X-REQUEST-ID": "cm-42"},
    )
    status, headers, _ = await invoke(event)
    assert status == 200
    assert headers["X-Request-Id"] == "cm-42"


async def test_named_stage_is_not_part_of_the_route(
    sender: Sender, write_config: WriteConfig, lambda_container: aws_lambda._Container
) -> None:
    write_config()
    value = signing.challenge_value()
    event = events.http_api_v2(
        sender.body(sender.claims(REQUIRED, "example.net", value)), headers=JSON, stage="prod"
    )
    assert event["rawPath"] == "/prod/callback"
    status, _, answer = await invoke(event)
    assert (status, answer["status"]) == (200, "published")
    assert await memory_records(lambda_container, "_acme-challenge.example.net") == {value}


async def test_one_runtime_and_one_key_fetch_per_container(
    sender: Sender,
    ibm_cloud: FakeIbmCloud,
    write_config: WriteConfig,
    lambda_container: aws_lambda._Container,
) -> None:
    write_config()
    runtimes = []
    for _ in range(3):
        body = sender.body(sender.claims(REQUIRED, "www.example.com"))
        status, _, _ = await invoke(events.function_url(body, headers=JSON))
        assert status == 200
        runtimes.append(lambda_container.holder._runtime)
    assert runtimes[0] is not None and runtimes.count(runtimes[0]) == 3
    assert ibm_cloud.key_fetches == [INSTANCE]


async def test_health_paths(
    write_config: WriteConfig, lambda_container: aws_lambda._Container
) -> None:
    write_config()
    status, _, answer = await invoke(
        events.function_url(b"", headers={}, method="GET", path="/healthz")
    )
    assert (status, answer) == (200, {"status": "alive"})
    status, _, answer = await invoke(
        events.function_url(b"", headers={}, method="GET", path="/readyz")
    )
    assert status == 200
    assert answer["status"] == "ready"
    assert set(answer["checks"].values()) == {"ok"}


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"version": "2.0", "requestContext": {}},
        {"detail-type": "Scheduled Event", "source": "aws.events"},
        "not a mapping",
    ],
)
async def test_events_that_are_not_http_are_400(
    event: Any, write_config: WriteConfig, lambda_container: aws_lambda._Container
) -> None:
    write_config()
    status, _, answer = await invoke(event)
    assert (status, answer["error"]) == (400, "bad_request")


async def test_body_flagged_base64_that_is_not_is_400(
    write_config: WriteConfig, lambda_container: aws_lambda._Container
) -> None:
    write_config()
    event = events.http_api_v2(b"{}", headers=JSON)
    event["isBase64Encoded"] = True
    event["body"] = "{not base64!"
    status, _, answer = await invoke(event)
    assert (status, answer["error"]) == (400, "bad_request")


async def test_broken_config_is_503_json_then_recovers(
    sender: Sender, write_config: WriteConfig, lambda_container: aws_lambda._Container
) -> None:
    path = write_config()
    good = path.read_text()
    path.write_text("[certificate_manager]\nallowed_instances = 7\n")
    body = sender.body(sender.claims(REQUIRED, "www.example.com"))
    status, _, answer = await invoke(events.function_url(body, headers=JSON))
    assert (status, answer["error"]) == (503, "not_configured")
    path.write_text(good)  # the next invocation tries again
    status, _, answer = await invoke(events.function_url(body, headers=JSON))
    assert (status, answer["status"]) == (200, "published")


async def test_journal_on_postgres_and_a_failed_order_cleaned_up_on_lambda(
    sender: Sender,
    write_config: WriteConfig,
    lambda_container: aws_lambda._Container,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With [state], Lambda keeps a journal (in the shared database) like the server does:
    a failed order reaching a warm container removes what earlier invocations wrote."""
    import asyncpg

    monkeypatch.setenv("DCR_DATABASE_URL", postgres_url)
    write_config(
        [{"name": "example.com", "provider": "local"}], state={"url_env": "DCR_DATABASE_URL"}
    )
    certificate = INSTANCE.rstrip(":") + ":certificate:lambda"
    values = [signing.challenge_value() for _ in range(2)]
    for domain, value in zip(("example.com", "*.example.com"), values, strict=True):
        claims = sender.claims(REQUIRED, domain, value, certificateCRN=certificate)
        status, _, answer = await invoke(events.function_url(sender.body(claims), headers=JSON))
        assert status == 200, answer
    failed = {
        "instance_crn": INSTANCE,
        "event_type": "cert_order_failed",
        "version": 4,
        "certificates": [{"cert_crn": certificate, "name": "c", "domains": "example.com"}],
    }
    status, _, answer = await invoke(events.function_url(sender.body(failed), headers=JSON))
    assert (status, answer["removed"], answer["failed"]) == (200, 2, 0)

    db = await asyncpg.connect(postgres_url)
    try:
        journal = await db.fetch("SELECT door, action, outcome FROM journal_entries ORDER BY id")
        left = await db.fetchval("SELECT count(*) FROM txt_values")
        connections = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name ="
            " 'dns-challenge-receiver' AND datname = current_database()"
        )
    finally:
        await db.close()
    assert [tuple(row) for row in journal] == [
        ("certificate_manager", "add", "done"),
        ("certificate_manager", "add", "done"),
        ("failed_order", "remove", "done"),
        ("failed_order", "remove", "done"),
    ]
    assert left == 0
    assert connections == 1  # opened on first use, reused by every warm invocation


async def test_scheduled_sweep_on_lambda_removes_stale_values(
    sender: Sender,
    write_config: WriteConfig,
    lambda_container: aws_lambda._Container,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncpg

    monkeypatch.setenv(DEPLOYED_STATE["url_env"], postgres_url)
    # The pool of deploy/aws/receiver.toml: the sweep must fit in it (its lock holds one).
    write_config([{"name": "example.com", "provider": "local"}], state=DEPLOYED_STATE)
    body = sender.body(sender.claims(REQUIRED, "stale.example.com"))
    status, _, _ = await invoke(events.function_url(body, headers=JSON))
    assert status == 200
    db = await asyncpg.connect(postgres_url)  # written three hours ago, as far as it knows
    await db.execute("UPDATE journal_entries SET created = created - 3 * 3600")
    await db.close()
    scheduled = {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}
    counts = await asyncio.to_thread(aws_lambda.sweep_handler, scheduled, Context())
    assert counts == {"removed": 1, "settled": 0, "failed": 0, "skipped": 0}
    db = await asyncpg.connect(postgres_url)
    try:
        assert await db.fetchval("SELECT count(*) FROM txt_values") == 0
    finally:
        await db.close()
