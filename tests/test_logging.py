"""One summary event per notification; no token, key or signature in any log line."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import structlog

from receiver import signing
from receiver.logs import REDACTED, scrub

from .conftest import INSTANCE, Sender, ServiceFactory

REQUIRED = "cert_domain_validation_required"


def events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def test_summary_event_fields(
    captured: io.StringIO, start_service: ServiceFactory, sender: Sender
) -> None:
    service = await start_service()
    value = signing.challenge_value()
    resp = await service.post(
        sender.body(sender.claims(REQUIRED, "*.example.com", value)),
        headers={"X-Request-Id": "req-1"},
    )
    assert resp.status == 200
    (summary,) = [e for e in events(captured) if e["event"] == "notification"]
    assert summary["event_type"] == REQUIRED
    assert summary["domain"] == "*.example.com"
    assert summary["fqdn"] == "_acme-challenge.example.com"
    assert summary["provider"] == "memory"
    assert summary["outcome"] == "published"
    assert summary["request_id"] == "req-1"
    assert summary["certificate_crn"].endswith(":certificate:demo")
    assert summary["status"] == 200 and summary["level"] == "info"
    assert isinstance(summary["duration_ms"], float)


async def test_rejections_are_logged_with_a_reason(
    captured: io.StringIO, start_service: ServiceFactory, sender: Sender
) -> None:
    service = await start_service()
    await service.post(sender.body(key=sender.keys["attacker"].private_pem))
    await service.post(b"nope")
    await service.client.get("/callback")
    found = events(captured)
    rejected = [
        e for e in found if e.get("outcome") == "rejected" or e["event"] == "request_rejected"
    ]
    assert [e.get("error") for e in rejected] == [
        "invalid_signature",
        "malformed_body",
        "method_not_allowed",
    ]
    assert all(e.get("reason") or e["event"] == "request_rejected" for e in rejected)


async def test_no_secret_reaches_the_logs(
    captured: io.StringIO, start_service: ServiceFactory, sender: Sender
) -> None:
    service = await start_service(user_token={"required": True})
    user_token = sender.user_token()
    bad_user_token = sender.user_token(key="attacker")
    good = sender.token(sender.claims(REQUIRED, user_token=user_token))
    forged = sender.token(sender.claims(REQUIRED, user_token=bad_user_token))
    wrong_key = sender.token(
        sender.claims(REQUIRED, user_token=user_token), key=sender.keys["attacker"].private_pem
    )
    for token in (good, forged, wrong_key):
        await service.post(signing.envelope(token))
    await service.post(b'{"data": "' + good.encode() + b'x"}')  # malformed: echoes nothing
    structlog.get_logger("test").info(
        "careless", payload={"Authorization": "Bearer abc"}, note=f"token was {user_token}"
    )

    text = captured.getvalue()
    assert text.count('"event": "notification"') == 4
    secrets = [good, forged, wrong_key, user_token, bad_user_token, "Bearer abc"]
    secrets += [t.split(".")[2] for t in (good, forged, wrong_key, user_token, bad_user_token)]
    for pair in sender.keys.values():
        secrets += [line.decode() for line in pair.private_pem.splitlines()[1:-1]]
        secrets += [line.decode() for line in pair.public_pem.splitlines()[1:-1]]
    leaked = [s for s in secrets if s in text]
    assert not leaked, f"{len(leaked)} secrets in logs"
    assert REDACTED in text


def test_scrub_rules() -> None:
    jwt_like = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    pem = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----"
    scrubbed = scrub(
        {
            "api_token": "abc",
            "password": "p",
            "userToken": "t",
            "note": f"x {jwt_like} y",
            "nested": [{"secret_access_key": "k"}, pem],
            "count": 3,
            "private_zone": True,
            "fqdn": "_acme-challenge.example.com",
        }
    )
    assert scrubbed == {
        "api_token": REDACTED,
        "password": REDACTED,
        "userToken": REDACTED,
        "note": f"x {REDACTED} y",
        "nested": [{"secret_access_key": REDACTED}, REDACTED],
        "count": 3,
        "private_zone": True,
        "fqdn": "_acme-challenge.example.com",
    }


async def test_tracebacks_carry_no_frame_locals(
    captured: io.StringIO,
    start_service: ServiceFactory,
    sender: Sender,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from receiver.doors import certificate_manager

    async def broken(body: bytes, verifier: Any) -> Any:
        envelope_secret = body.decode()[::-1]  # a local that must not be printed
        raise RuntimeError(f"bug with {len(envelope_secret)} bytes")

    monkeypatch.setattr(certificate_manager, "receive", broken)
    service = await start_service()
    body = sender.body()
    resp = await service.post(body)
    assert resp.status == 500
    (error,) = [e for e in events(captured) if e["event"] == "unhandled_error"]
    frames = error["exception"][0]["frames"]
    assert frames and all("locals" not in frame or not frame["locals"] for frame in frames)
    assert body.decode()[::-1][:40] not in captured.getvalue()


def summaries(stream: io.StringIO) -> list[dict[str, Any]]:
    return [e for e in events(stream) if e["event"] == "notification"]


async def test_a_rejected_notification_is_logged_with_what_was_read_before_it(
    captured: io.StringIO, start_service: ServiceFactory, sender: Sender
) -> None:
    service = await start_service()
    bad_value = sender.claims(REQUIRED, value="A" * 42)  # verified, then refused
    forged = sender.body(key=sender.keys["attacker"].private_pem)  # never verified
    bad_user = sender.claims(REQUIRED, user_token=sender.user_token(key="attacker"))
    for body in (sender.body(bad_value), forged, sender.body(bad_user)):
        assert (await service.post(body)).status in (400, 401)
    value, signature, user = summaries(captured)

    assert (value["error"], value["event_type"]) == ("invalid_value", REQUIRED)
    assert value["instance_crn"] == INSTANCE and "claimed_event_type" not in value
    assert user["error"] == "invalid_user_token" and user["event_type"] == REQUIRED
    # Not verified: the event type it claims is logged, under a name that says so.
    assert signature["error"] == "invalid_signature" and "event_type" not in signature
    assert signature["claimed_event_type"] == REQUIRED


async def test_a_failed_order_summary_names_its_certificates(
    captured: io.StringIO, start_service: ServiceFactory, sender: Sender
) -> None:
    service = await start_service()
    cleaned, untouched = (INSTANCE.rstrip(":") + f":certificate:{c}" for c in ("aaaa", "bbbb"))
    published = sender.claims(REQUIRED, "www.example.com", certificateCRN=cleaned)
    assert (await service.post(sender.body(published))).status == 200
    failed = {
        "instance_crn": INSTANCE,
        "event_type": "cert_order_failed",
        "certificates": [{"cert_crn": cleaned}, {"cert_crn": untouched}],
    }
    assert (await service.post(sender.body(failed))).status == 200
    summary = summaries(captured)[-1]
    assert summary["outcome"] == "cleaned" and summary["removed"] == 1
    assert summary["certificates"] == [cleaned, untouched]  # what it asked for
    assert summary["cleaned_certificates"] == [cleaned]  # what had values to remove
