"""The lego `httpreq` and acme-dns doors, and which doors are open."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
from typing import Any

import pytest

from receiver import signing
from receiver.errors import ConfigError

from . import rawhttp
from .conftest import Sender, ServiceFactory, SettingsFactory, service_events

PASSWORD = "correct horse battery staple"
WRONG_NAME = b'{"fqdn": "www.example.com.", "value": "' + b"A" * 43 + b'"}'


def basic(user: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


@pytest.fixture
def httpreq_on(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("HTTPREQ_PASSWORD", PASSWORD)
    return {"enabled": True, "username": "lego", "password_env": "HTTPREQ_PASSWORD"}


async def test_httpreq_present_and_cleanup(
    start_service: ServiceFactory, httpreq_on: dict[str, Any]
) -> None:
    service = await start_service(httpreq=httpreq_on)
    value = signing.challenge_value()
    body = f'{{"fqdn": "_acme-challenge.WWW.example.com.", "value": "{value}"}}'.encode()
    response = await service.post(body, path="/present", headers=basic("lego", PASSWORD))
    assert response.status == 200, await response.text()
    assert (await response.json())["fqdn"] == "_acme-challenge.www.example.com"
    assert await service.records("_acme-challenge.www.example.com") == {value}

    response = await service.post(body, path="/cleanup", headers=basic("lego", PASSWORD))
    assert response.status == 200
    assert await service.records("_acme-challenge.www.example.com") == frozenset()


async def test_httpreq_raw_mode_hashes_the_key_authorization(
    start_service: ServiceFactory, httpreq_on: dict[str, Any]
) -> None:
    service = await start_service(httpreq=httpreq_on)
    token, thumbprint = "tok3n-abc", "A" * 43
    key_auth = f"{token}.{thumbprint}"
    expected = base64.urlsafe_b64encode(hashlib.sha256(key_auth.encode()).digest())
    body = f'{{"domain": "*.shop.example.com", "token": "{token}", "keyAuth": "{key_auth}"}}'
    response = await service.post(body.encode(), path="/present", headers=basic("lego", PASSWORD))
    assert response.status == 200, await response.text()
    assert await service.records("_acme-challenge.shop.example.com") == {
        expected.decode().rstrip("=")
    }


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "credentials_required"),
        (basic("lego", "wrong"), "invalid_credentials"),
        (basic("other", PASSWORD), "invalid_credentials"),
        ({"Authorization": "Basic !!!"}, "invalid_credentials"),
        ({"Authorization": "Bearer x"}, "credentials_required"),
    ],
)
async def test_httpreq_rejects_bad_credentials(
    start_service: ServiceFactory, httpreq_on: dict[str, Any], headers: dict[str, str], code: str
) -> None:
    service = await start_service(httpreq=httpreq_on)
    body = f'{{"fqdn": "_acme-challenge.example.com.", "value": "{"A" * 43}"}}'.encode()
    response = await service.post(body, path="/present", headers=headers)
    assert response.status == 401
    assert (await response.json())["error"] == code
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert await service.all_records() == {}


@pytest.mark.parametrize(
    "credentials",
    [
        "Basic é".encode(),  # UTF-8 in the header: base64 refuses non-ASCII text
        b"Basic \xff\xfe",  # not UTF-8 at all
        b"Basic bGVnbzp\xff",  # valid base64 but for one byte
        b"Basic " + base64.b64encode("lego:pässword".encode("latin-1")),  # not UTF-8 inside
        b"bAsIc \xc3\xa9",
    ],
)
async def test_httpreq_non_ascii_credentials_are_401(
    captured: io.StringIO,
    start_service: ServiceFactory,
    httpreq_on: dict[str, Any],
    credentials: bytes,
) -> None:
    """Raw bytes over a socket: aiohttp's client would not send these headers."""
    service = await start_service(httpreq=httpreq_on)
    body = f'{{"fqdn": "_acme-challenge.example.com.", "value": "{"A" * 43}"}}'.encode()
    headers = [(b"Authorization", credentials), (b"Content-Type", b"application/json")]
    client = service.client
    response = await rawhttp.exchange(
        client.host, client.port, rawhttp.request("POST", "/present", headers, body)
    )
    assert response.status == 401
    assert response.json() == {
        "error": "invalid_credentials",
        "detail": "malformed basic credentials",
    }
    assert response.headers["www-authenticate"].startswith("Basic")
    assert await service.all_records() == {}
    logged = [(e["event"], e.get("status")) for e in service_events(captured)]
    assert logged == [("notification", 401)]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"not json", 400, "malformed_body"),
        (b"[]", 400, "malformed_body"),
        (b"{}", 400, "invalid_request"),
        (
            WRONG_NAME,
            400,
            "invalid_record_name",
        ),
        (b'{"fqdn": "_acme-challenge.example.com.", "value": "short"}', 400, "invalid_value"),
        (b'{"fqdn": "_acme-challenge.example.org.", "value": "' + b"A" * 43 + b'"}', 403, None),
        (b'{"domain": "example.com", "keyAuth": "no-dot"}', 400, "invalid_value"),
        (
            b'{"domain": "example.com", "token": "x", "keyAuth": "y.' + b"A" * 43 + b'"}',
            400,
            "invalid_value",
        ),
        (b'{"domain": "bad..name", "keyAuth": "t.' + b"A" * 43 + b'"}', 400, "invalid_name"),
    ],
)
async def test_httpreq_rejects_bad_bodies(
    start_service: ServiceFactory,
    httpreq_on: dict[str, Any],
    body: bytes,
    status: int,
    code: str | None,
) -> None:
    service = await start_service(httpreq=httpreq_on)
    response = await service.post(body, path="/present", headers=basic("lego", PASSWORD))
    assert response.status == status
    if code is not None:
        assert (await response.json())["error"] == code
    assert await service.all_records() == {}


async def test_doors_are_closed_unless_enabled(
    start_service: ServiceFactory, sender: Sender, httpreq_on: dict[str, Any]
) -> None:
    service = await start_service()
    for path in ("/present", "/cleanup", "/register", "/update"):
        response = await service.post(b"{}", path=path)
        assert response.status == 404, path

    service = await start_service(
        certificate_manager={"enabled": False, "allowed_instances": []}, httpreq=httpreq_on
    )
    response = await service.post(sender.body())
    assert response.status == 404
    assert (await service.client.get("/readyz")).status == 200


def test_a_receiver_needs_an_open_door(make_settings: SettingsFactory) -> None:
    with pytest.raises(ConfigError, match="every door is disabled"):
        make_settings(certificate_manager={"enabled": False})
    with pytest.raises(ConfigError) as caught:
        make_settings(httpreq={"enabled": True}, acme_dns={"enabled": True, "zone": "nope.test"})
    problems = "\n".join(caught.value.problems)
    assert "httpreq.username: required" in problems
    assert "httpreq.password: required" in problems
    assert "acme_dns.zone: 'nope.test' must be a [[zones]] entry with a provider" in problems


# --- acme-dns ----------------------------------------------------------------------------

ACME_DNS = {"enabled": True, "zone": "example.net", "allow_register": True}


async def register(service: Any, body: bytes = b"") -> dict[str, Any]:
    headers = {"Content-Type": "application/json"} if body else {}
    response = await service.client.post("/register", data=body, headers=headers)
    assert response.status == 201, await response.text()
    account: dict[str, Any] = await response.json()
    return account


async def update(service: Any, account: dict[str, Any], value: str, **overrides: Any) -> Any:
    headers = {"X-Api-User": account["username"], "X-Api-Key": account["password"]}
    headers.update(overrides.pop("headers", {}))
    body = {"subdomain": account["subdomain"], "txt": value, **overrides}
    return await service.client.post("/update", json=body, headers=headers)


async def test_acme_dns_register_and_update_keep_two_values(
    start_service: ServiceFactory,
) -> None:
    service = await start_service(acme_dns=ACME_DNS)
    account = await register(service)
    assert account["fulldomain"] == f"{account['subdomain']}.example.net"
    assert len(account["password"]) == 40

    values = [signing.challenge_value() for _ in range(3)]
    for value in values:
        response = await update(service, account, value)
        assert response.status == 200, await response.text()
        assert await response.json() == {"txt": value}
    # The apex and the wildcard of one order both fit; a third update pushes out the oldest.
    assert await service.records(account["fulldomain"]) == set(values[1:])

    response = await update(service, account, values[1])  # refreshed, so values[2] is older
    assert response.status == 200
    fresh = signing.challenge_value()
    assert (await update(service, account, fresh)).status == 200
    assert await service.records(account["fulldomain"]) == {values[1], fresh}


async def test_acme_dns_rejections(start_service: ServiceFactory) -> None:
    service = await start_service(acme_dns=ACME_DNS)
    account, other = await register(service), await register(service)
    value = signing.challenge_value()

    response = await update(service, account, value, headers={"X-Api-Key": "wrong"})
    assert response.status == 401
    assert (await response.json())["error"] == "invalid_credentials"
    response = await update(service, account, value, headers={"X-Api-User": other["username"]})
    assert response.status == 401
    response = await update(service, account, value, subdomain=other["subdomain"])
    assert response.status == 403
    assert (await response.json())["error"] == "bad_subdomain"
    response = await update(service, account, value, subdomain="../etc")
    assert response.status == 400
    response = await update(service, account, "short")
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_value"
    response = await service.client.post("/update", json={"subdomain": account["subdomain"]})
    assert response.status == 401
    assert await service.all_records() == {}


async def test_acme_dns_source_networks(start_service: ServiceFactory) -> None:
    service = await start_service(acme_dns=ACME_DNS)
    inside = await register(service, b'{"allowfrom": ["127.0.0.0/8"]}')
    outside = await register(service, b'{"allowfrom": ["192.0.2.0/24", "2001:db8::/32"]}')
    assert outside["allowfrom"] == ["192.0.2.0/24", "2001:db8::/32"]
    assert (await update(service, inside, signing.challenge_value())).status == 200
    response = await update(service, outside, signing.challenge_value())
    assert response.status == 403
    assert (await response.json())["error"] == "source_not_allowed"

    response = await service.client.post("/register", json={"allowfrom": ["not-a-net"]})
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_cidr"


async def test_acme_dns_registration_can_be_closed(start_service: ServiceFactory) -> None:
    service = await start_service(acme_dns={**ACME_DNS, "allow_register": False})
    response = await service.client.post("/register")
    assert response.status == 403
    assert (await response.json())["error"] == "registration_disabled"


async def test_acme_dns_credentials_are_stored_hashed(
    start_service: ServiceFactory, tmp_path: Any
) -> None:
    service = await start_service(acme_dns=ACME_DNS)
    account = await register(service)
    database = service.runtime.settings.journal.database
    assert database is not None
    files = [database, database.with_name(database.name + "-wal")]  # WAL: both hold data
    raw = b"".join([await asyncio.to_thread(f.read_bytes) for f in files if f.exists()])
    assert account["username"].encode() in raw
    assert account["password"].encode() not in raw
    assert b"scrypt$" in raw
