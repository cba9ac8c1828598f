"""What a client cannot make the HTTP server do: wait for a body it declared too large,
hold a connection open without sending, or use up its file descriptors.

Requests are written by hand to sockets (tests/rawhttp.py): the point is the bytes and
the timing that a well-behaved client would never produce.
"""

from __future__ import annotations

import io
import time
from typing import Any

import pytest

from . import rawhttp
from .conftest import ServiceFactory, service_events

PASSWORD = "correct horse battery staple"


@pytest.fixture
def httpreq_on(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("HTTPREQ_PASSWORD", PASSWORD)
    return {"enabled": True, "username": "lego", "password_env": "HTTPREQ_PASSWORD"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/callback"), ("POST", "/present"), ("GET", "/healthz"), ("POST", "/nowhere")],
)
@pytest.mark.parametrize("declared", [10**12, 65537])
async def test_a_declared_length_over_the_limit_is_refused_before_the_body(
    captured: io.StringIO,
    start_service: ServiceFactory,
    httpreq_on: dict[str, Any],
    method: str,
    path: str,
    declared: int,
) -> None:
    """413 at once, with no byte of the body sent: the server must not wait for it."""
    service = await start_service(httpreq=httpreq_on)
    headers = [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % declared)]
    started = time.monotonic()
    request = rawhttp.request(method, path, headers, keep_alive=True)
    response = await rawhttp.exchange(service.client.host, service.client.port, request)
    assert time.monotonic() - started < 1
    assert response.status == 413
    assert response.json()["error"] == "body_too_large" and response.json()["detail"]
    assert response.headers["connection"] == "close"
    assert await service.all_records() == {}
    rejected = [e for e in service_events(captured) if "status" in e]
    assert [(e["event"], e["status"], e["error"]) for e in rejected] == [
        ("request_rejected", 413, "body_too_large")
    ]


async def test_a_declared_length_at_the_limit_is_read(
    start_service: ServiceFactory, httpreq_on: dict[str, Any]
) -> None:
    service = await start_service(httpreq=httpreq_on)
    body = b"{" + b" " * (65536 - 2) + b"}"
    headers = [(b"Content-Type", b"application/json")]
    response = await rawhttp.exchange(
        service.client.host,
        service.client.port,
        rawhttp.request("POST", "/present", headers, body),
    )
    assert response.status == 401  # read, then refused for its missing credentials
