"""The lego `httpreq` and acme-dns doors, and which doors are open."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import threading
import time
from typing import Any

import pytest

from receiver import signing
from receiver.accounts import Account
from receiver.errors import ConfigError, Forbidden
from receiver.ratelimit import RateLimit, source_key

from . import rawhttp
from .conftest import Sender, ServiceFactory, SettingsFactory, long_domain, service_events
from .rawhttp import exchange

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
        (  # the domain fits in 253 octets, its challenge name does not
            b'{"domain": "%s", "keyAuth": "t.' % long_domain(238).encode() + b"A" * 43 + b'"}',
            400,
            "invalid_name",
        ),
        (
            b'{"domain": "*.%s", "keyAuth": "t.' % long_domain(240).encode() + b"A" * 43 + b'"}',
            400,
            "invalid_name",
        ),
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
    """The reference server's answers: every failed authentication is 401 `forbidden`
    (which check failed is only logged), malformed fields are 400 with its codes."""
    service = await start_service(acme_dns=ACME_DNS)
    account, other = await register(service), await register(service)
    value = signing.challenge_value()

    wrong_key = "x" * 40
    for headers, body in [
        ({"X-Api-Key": wrong_key}, {}),
        ({"X-Api-Key": "short"}, {}),
        ({"X-Api-User": other["username"]}, {}),
        ({"X-Api-User": "not-a-uuid"}, {}),
        ({}, {"subdomain": other["subdomain"]}),
    ]:
        response = await update(service, account, value, headers=headers, **body)
        assert response.status == 401, (headers, body)
        assert await response.json() == {
            "error": "forbidden",
            "detail": "not allowed: check X-Api-User, X-Api-Key, the subdomain and the "
            "account's allowfrom",
        }
    response = await update(service, account, value, subdomain="../etc")
    assert (response.status, (await response.json())["error"]) == (400, "bad_subdomain")
    response = await update(service, account, "short")
    assert (response.status, (await response.json())["error"]) == (400, "bad_txt")
    response = await service.client.post("/update", json={"subdomain": account["subdomain"]})
    assert response.status == 401
    assert await service.all_records() == {}


async def test_acme_dns_user_name_in_any_uuid_spelling(start_service: ServiceFactory) -> None:
    """Go's uuid.Parse takes upper case and braces; the account is the same."""
    service = await start_service(acme_dns=ACME_DNS)
    account = await register(service)
    value = signing.challenge_value()
    spelled = "{" + account["username"].upper() + "}"
    response = await update(service, account, value, headers={"X-Api-User": spelled})
    assert response.status == 200, await response.text()
    assert await service.records(account["fulldomain"]) == {value}


async def test_acme_dns_source_networks(start_service: ServiceFactory) -> None:
    service = await start_service(acme_dns=ACME_DNS)
    inside = await register(service, b'{"allowfrom": ["127.0.0.0/8"]}')
    outside = await register(service, b'{"allowfrom": ["192.0.2.0/24", "2001:db8::/32"]}')
    assert outside["allowfrom"] == ["192.0.2.0/24", "2001:db8::/32"]
    assert (await update(service, inside, signing.challenge_value())).status == 200
    response = await update(service, outside, signing.challenge_value())
    assert response.status == 401
    assert (await response.json())["error"] == "forbidden"
    assert await service.records(outside["fulldomain"]) == frozenset()


def test_an_ipv4_mapped_peer_matches_ipv4_networks() -> None:
    """A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d."""
    account = Account("u", "s", ("127.0.0.0/8",))
    assert account.allows("::ffff:127.0.0.1")
    assert not account.allows("::ffff:10.0.0.1")
    assert not account.allows(None)
    assert Account("u", "s", ()).allows(None)


async def account_count(service: Any) -> int:
    door = service.runtime.doors.named("acme_dns")
    row = await door.store._file.run(  # observer access to the store
        lambda db: db.execute("SELECT count(*) FROM acme_dns_accounts").fetchone()
    )
    return int(row[0])


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"allowfrom": "10.0.0.0/8"}', "malformed_json_payload"),
        (b'{"allowfrom": [1, true]}', "malformed_json_payload"),
        (b'{"AllowFrom": [null]}', "malformed_json_payload"),
        (b'{"allowfrom": {"10.0.0.0/8": true}}', "malformed_json_payload"),
        (b'{"allowfrom": [["10.0.0.0/8"]]}', "malformed_json_payload"),
        (b'{"allowfrom": ["not-a-net"]}', "invalid_allowfrom_cidr"),
        (b'{"ALLOWFROM": ["10.0.0.0/33"]}', "invalid_allowfrom_cidr"),
        (b'{"allowfrom": ["127.0.0.0/8"], "AllowFrom": [""]}', "invalid_allowfrom_cidr"),
        (b"[]", "malformed_json_payload"),
        (b"{", "malformed_json_payload"),
        (b"[" * 30_000, "malformed_json_payload"),
    ],
)
async def test_acme_dns_unusable_allow_list_is_refused_not_dropped(
    start_service: ServiceFactory, body: bytes, code: str
) -> None:
    service = await start_service(acme_dns=ACME_DNS)
    response = await service.client.post("/register", data=body)
    assert response.status == 400, await response.text()
    assert (await response.json())["error"] == code
    assert await account_count(service) == 0


@pytest.mark.parametrize(
    ("body", "stored"),
    [
        (b"", []),
        (b"null", []),
        (b'{"allowfrom": null}', []),
        (b'{"AllowFrom": ["10.1.2.3/8"], "note": {"x": 1}}', ["10.0.0.0/8"]),
        (b'{"allowfrom": ["192.0.2.1"], "ALLOWFROM": ["[::1]/128"]}', ["::1/128"]),
        (b'{"allowFrom": ["[2001:db8::1]"]}', ["2001:db8::1/128"]),
    ],
)
async def test_acme_dns_allow_list_spellings(
    start_service: ServiceFactory, body: bytes, stored: list[str]
) -> None:
    """Keys match case-insensitively, the last one wins, unknown keys are ignored."""
    service = await start_service(acme_dns=ACME_DNS)
    response = await service.client.post(
        "/register", data=body, headers={"Content-Type": "text/plain"}
    )
    assert response.status == 201, await response.text()
    assert (await response.json())["allowfrom"] == stored


async def test_acme_dns_update_keys_in_any_case_and_any_content_type(
    start_service: ServiceFactory,
) -> None:
    service = await start_service(acme_dns=ACME_DNS)
    account = await register(service)
    stale, value = signing.challenge_value(), signing.challenge_value()
    body = (
        f'{{"SUBDOMAIN": "{account["subdomain"]}", "Txt": "{stale}", "tXt": "{value}",'
        f' "txt": null, "extra": [1, 2]}}'
    ).encode()
    headers = {"X-Api-User": account["username"], "X-Api-Key": account["password"]}
    for content_type in ("application/x-www-form-urlencoded", None):
        sent = dict(headers, **({"Content-Type": content_type} if content_type else {}))
        response = await service.client.post("/update", data=body, headers=sent)
        assert response.status == 200, await response.text()
        assert await response.json() == {"txt": value}
    assert await service.records(account["fulldomain"]) == {value}
    # The other doors keep their Content-Type rule.
    response = await service.client.post("/callback", data=b"{}", headers={"Content-Type": ""})
    assert response.status == 415


async def test_acme_dns_registration_can_be_closed(start_service: ServiceFactory) -> None:
    """As on the reference server, where the route then does not exist."""
    service = await start_service(acme_dns={**ACME_DNS, "allow_register": False})
    response = await service.client.post("/register")
    assert response.status == 404
    assert await response.json() == {
        "error": "not_found",
        "detail": "registration is disabled here",
    }


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


# --- what unauthenticated callers can cost (issue 21, finding 8) -------------------------


async def test_registrations_are_rate_limited_per_source_and_capped(
    start_service: ServiceFactory,
) -> None:
    service = await start_service(
        acme_dns={**ACME_DNS, "register_burst": 2, "register_per_hour": 1, "max_accounts": 3}
    )
    await register(service)
    await register(service)
    response = await service.client.post("/register")
    assert response.status == 429
    assert (await response.json())["error"] == "too_many_requests"
    assert 3000 <= int(response.headers["Retry-After"]) <= 3600
    assert await account_count(service) == 2

    # Another source has its own burst, but the total cap holds for everyone.
    door = service.runtime.doors.named("acme_dns")
    assert (await door.register(b"", "192.0.2.7"))["subdomain"]
    with pytest.raises(Forbidden) as refused:
        await door.register(b"", "198.51.100.9")
    assert refused.value.code == "account_limit_reached"
    assert await account_count(service) == 3

    metrics = await (await service.client.get("/metrics")).text()
    assert 'dcr_throttled_total{limit="acme_dns_register_rate"} 1.0' in metrics
    assert 'dcr_throttled_total{limit="acme_dns_accounts"} 1.0' in metrics


async def test_password_checks_run_one_at_a_time_with_a_bounded_queue(
    start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = await start_service(acme_dns={**ACME_DNS, "max_pending_password_checks": 3})
    account = await register(service)
    running, most = 0, 0
    lock = threading.Lock()
    real_scrypt = hashlib.scrypt

    def counted(*args: Any, **kwargs: Any) -> bytes:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.05)
            return real_scrypt(*args, **kwargs)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr("receiver.passwords.hashlib.scrypt", counted)
    flood = [
        update(service, account, signing.challenge_value(), headers={"X-Api-Key": "k" * 40})
        for _ in range(12)
    ]
    responses = await asyncio.gather(*flood)
    statuses = sorted(r.status for r in responses)
    assert most == 1
    assert statuses.count(401) == 3 and statuses.count(503) == 9, statuses
    busy = next(r for r in responses if r.status == 503)
    assert (await busy.json())["error"] == "busy" and busy.headers["Retry-After"] == "1"
    assert await service.all_records() == {}
    # The queue drains: a genuine update goes through afterwards.
    assert (await update(service, account, signing.challenge_value())).status == 200
    metrics = await (await service.client.get("/metrics")).text()
    assert 'dcr_throttled_total{limit="password_checks"} 9.0' in metrics
    assert "dcr_acme_dns_password_checks_pending 0.0" in metrics


def test_rate_limit_refills_and_groups_ipv6_by_64() -> None:
    now = [0.0]
    limit = RateLimit(per_hour=3600, burst=2, max_sources=2, clock=lambda: now[0])
    assert limit.wait_for("192.0.2.1") == 0 and limit.wait_for("192.0.2.1") == 0
    assert limit.wait_for("192.0.2.1") == pytest.approx(1.0)
    now[0] = 1.0
    assert limit.wait_for("192.0.2.1") == 0
    assert limit.wait_for("2001:db8::1") == 0 and limit.wait_for("2001:db8::ffff") == 0
    assert limit.wait_for("2001:db8:0:0:1::9") > 0  # the same /64
    assert limit.wait_for("2001:db8:0:1::1") == 0  # the next /64; the oldest source goes
    assert limit.wait_for("::ffff:192.0.2.1") == 0  # forgotten: a fresh burst
    assert source_key("::ffff:192.0.2.1") == "192.0.2.1"


def test_acme_dns_limits_are_validated(make_settings: SettingsFactory) -> None:
    with pytest.raises(ConfigError) as raised:
        make_settings(acme_dns={**ACME_DNS, "register_burst": 0, "max_pending_password_checks": 0})
    assert "acme_dns.register_burst: must be between 1 and 10000" in raised.value.problems
    assert (
        "acme_dns.max_pending_password_checks: must be between 1 and 10000" in raised.value.problems
    )


async def test_acme_dns_odd_bytes_in_credentials_are_refused_not_failed(
    start_service: ServiceFactory,
) -> None:
    """Non-ASCII and invalid UTF-8 in X-Api-User / X-Api-Key: 401, never a 500."""
    service = await start_service(acme_dns=ACME_DNS)
    account = await register(service)
    server = service.client.server
    body = f'{{"subdomain": "{account["subdomain"]}", "txt": "{"A" * 43}"}}'.encode()
    for user, key in [
        (b"\xff" * 36, account["password"].encode()),
        (account["username"].encode(), b"\xff" * 40),
        (account["username"].encode(), "é".encode() * 20),
        ("\u0660".encode() * 32, account["password"].encode()),  # int() reads these
    ]:
        request = (
            b"POST /update HTTP/1.1\r\nHost: x\r\nX-Api-User: " + user + b"\r\nX-Api-Key: "
            + key + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )  # fmt: skip
        response = await exchange(server.host, server.port, request)
        assert response.status == 401, response.body
        assert response.json()["error"] == "forbidden"
    assert await service.all_records() == {}


@pytest.mark.parametrize("path", ["/present", "/update", "/register"])
async def test_deeply_nested_bodies_are_malformed_not_failed(
    start_service: ServiceFactory, httpreq_on: dict[str, Any], path: str
) -> None:
    service = await start_service(httpreq=httpreq_on, acme_dns=ACME_DNS)
    account = await register(service)
    headers = {
        **basic("lego", PASSWORD),
        "X-Api-User": account["username"],
        "X-Api-Key": account["password"],
    }
    for body in (b"[" * 30_000, b'{"a":' * 12_000):
        response = await service.post(body, path=path, headers=headers)
        assert response.status == 400, await response.text()
        assert (await response.json())["error"] in ("malformed_body", "malformed_json_payload")
    assert await service.all_records() == {}
