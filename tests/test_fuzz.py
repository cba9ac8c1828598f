"""Property-based fuzzing of the HTTP door with hypothesis.

For any input: no 5xx (a caller's mistake is always a 4xx), a JSON error body on every
rejection, the service keeps answering, and the provider changes only when the request
was accepted.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver import signing

from . import rawhttp
from .conftest import INSTANCE, Sender, ServiceFactory

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
REQUIRED = "cert_domain_validation_required"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
names = st.sampled_from(
    [
        "example.com",
        "*.example.com",
        "www.example.com",
        "example.org",
        "a..example.com",
        "*.*.example.com",
        "bücher.example.com",
        "",
        "x" * 300,
        "_acme-challenge.example.com",
        "EXAMPLE.COM.",
    ]
)
record_names = st.sampled_from(
    [
        "_acme-challenge",
        "_acme-challenge.example.com.",
        "www",
        "",
        "_acme-challenge.www.example.com",
        "_ACME-CHALLENGE",
    ]
)
values = st.one_of(st.just("A" * 43), st.text(max_size=50), st.integers(), st.none())
events = (
    st.sampled_from(
        [
            REQUIRED,
            "cert_domain_validation_completed",
            "cert_order_failed",
            "test_notification_channel",
            "",
            "nonsense",
        ]
    )
    | st.integers()
)


async def check(service: Any, resp: Any, before: dict[str, frozenset[str]]) -> None:
    assert resp.status < 500, await resp.text()
    body = await resp.json()
    if resp.status >= 400:
        assert set(body) == {"error", "detail"} and body["error"] and body["detail"]
        assert await service.all_records() == before, "a rejected request changed records"


@FUZZ
@given(
    body=st.binary(max_size=2000),
    content_type=st.sampled_from(
        [
            "application/json",
            "text/plain",
            "",
            "application/x-www-form-urlencoded",
            "application/jwt+json",
        ]
    ),
)
async def test_arbitrary_bytes(
    start_service: ServiceFactory, body: bytes, content_type: str
) -> None:
    service = await start_service()
    before = await service.all_records()
    resp = await service.client.post("/callback", data=body, headers={"Content-Type": content_type})
    await check(service, resp, before)
    assert resp.status != 200


@FUZZ
@given(document=json_values)
async def test_arbitrary_json(start_service: ServiceFactory, document: Any) -> None:
    service = await start_service()
    before = await service.all_records()
    resp = await service.post(json.dumps(document).encode())
    await check(service, resp, before)


@FUZZ
@given(
    claims=st.fixed_dictionaries(
        {
            "event_type": events,
            "domain": names,
            "challenge": st.one_of(
                st.fixed_dictionaries({"txt_record_name": record_names, "txt_record_val": values}),
                json_values,
            ),
            "instance_crn": st.sampled_from([INSTANCE, INSTANCE + "x", ""]) | st.integers(),
        },
        optional={
            "domain_validation_method": st.sampled_from(["dns-01", "http-01", 1]),
            "certificateCRN": st.text(max_size=20) | st.integers(),
            "userToken": st.text(max_size=20) | st.integers(),
            "certificates": json_values,
            "exp": st.integers(min_value=-(2**40), max_value=2**40) | st.text(max_size=5),
            "iat": st.integers(min_value=-(2**40), max_value=2**40),
        },
    )
)
async def test_signed_but_wrong_claims(
    start_service: ServiceFactory, sender: Sender, claims: dict[str, Any]
) -> None:
    """Correctly signed by an allowed sender: the claims themselves are the attack."""
    service = await start_service()
    before = await service.all_records()
    resp = await service.post(sender.body(claims))
    await check(service, resp, before)
    if resp.status == 200 and (await resp.json()).get("status") == "published":
        assert claims["event_type"] == REQUIRED
        assert claims["challenge"]["txt_record_val"] == "A" * 43  # only a valid value lands


@FUZZ
@given(
    # (a leading "//" would make the test client read the path as a host)
    path=st.from_regex(r"/([A-Za-z0-9_.%-][A-Za-z0-9_./%-]{0,40})?", fullmatch=True),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
)
async def test_arbitrary_paths_and_methods(
    start_service: ServiceFactory, sender: Sender, path: str, method: str
) -> None:
    service = await start_service()
    before = await service.all_records()
    resp = await service.client.request(
        method, path, data=sender.body(), headers={"Content-Type": "application/json"}
    )
    assert resp.status < 500
    if resp.status >= 400:
        await check(service, resp, before)
    # the service still works afterwards
    ok = await service.post(
        sender.body(sender.claims(REQUIRED, "example.com", signing.challenge_value()))
    )
    assert ok.status == 200


HTTPREQ_AUTH = {"Authorization": "Basic " + base64.b64encode(b"lego:fuzz-password").decode()}
door_bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"fqdn": names | record_names, "value": values},
        optional={"keyAuth": st.text(max_size=60), "domain": names, "token": st.text(max_size=9)},
    ).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"subdomain": st.text(max_size=40) | st.uuids().map(str), "txt": values}
    ).map(lambda v: json.dumps(v).encode()),
)


@FUZZ
@given(
    path=st.sampled_from(["/present", "/cleanup", "/update", "/register"]),
    body=door_bodies,
    authenticated=st.booleans(),
)
async def test_the_other_doors_never_fail_on_caller_input(
    start_service: ServiceFactory,
    monkeypatch: Any,
    path: str,
    body: bytes,
    authenticated: bool,
) -> None:
    """httpreq and acme-dns: whatever arrives, a 4xx or an accepted write, never a 5xx;
    nothing changes unless the answer was a success."""
    monkeypatch.setenv("FUZZ_HTTPREQ_PASSWORD", "fuzz-password")
    service = await start_service(
        httpreq={"enabled": True, "username": "lego", "password_env": "FUZZ_HTTPREQ_PASSWORD"},
        acme_dns={"enabled": True, "zone": "example.net", "allow_register": False},
    )
    before = await service.all_records()
    headers = HTTPREQ_AUTH if authenticated else {}
    if authenticated and path == "/update":
        headers = {"X-Api-User": "nobody", "X-Api-Key": "x" * 40}
    resp = await service.post(body, path=path, headers=headers)
    assert resp.status < 500, await resp.text()
    if resp.status >= 400:
        assert "error" in await resp.json()
        assert await service.all_records() == before
    else:
        assert path in ("/present", "/cleanup") and authenticated


# Header values as raw bytes: invalid UTF-8, UTF-8 beyond latin-1, anything but the control
# characters, which end a header line (aiohttp answers those malformed requests itself).
header_bytes = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=20).map(str.encode),
    st.text(st.characters(min_codepoint=0x100), max_size=10).map(str.encode),
).map(lambda raw: bytes(c for c in raw if c == 0x09 or 0x20 <= c != 0x7F))
credentials = st.one_of(
    header_bytes,
    header_bytes.map(lambda raw: b"Basic " + raw),
    header_bytes.map(lambda raw: b"Basic " + base64.b64encode(b"lego:" + raw)),
    st.just(HTTPREQ_AUTH["Authorization"].encode()),  # the only ones that may write
)
HTTPREQ_BODY = json.dumps({"fqdn": "_acme-challenge.example.com.", "value": "A" * 43}).encode()


@FUZZ
@given(
    path=st.sampled_from(["/present", "/cleanup"]),
    authorization=credentials,
    content_type=st.one_of(st.just(b"application/json"), header_bytes),
    request_id=header_bytes,
    declared=st.one_of(st.none(), st.integers(min_value=65537, max_value=10**18)),
)
async def test_the_httpreq_door_takes_any_header_bytes(
    start_service: ServiceFactory,
    monkeypatch: Any,
    path: str,
    authorization: bytes,
    content_type: bytes,
    request_id: bytes,
    declared: int | None,
) -> None:
    """Raw bytes over a socket (aiohttp's client would refuse most of them): a 4xx with a
    JSON error or an accepted write with the right credentials; never a 5xx. A declared
    length over the limit is refused before any body is sent."""
    monkeypatch.setenv("FUZZ_HTTPREQ_PASSWORD", "fuzz-password")
    service = await start_service(
        httpreq={"enabled": True, "username": "lego", "password_env": "FUZZ_HTTPREQ_PASSWORD"}
    )
    before = await service.all_records()
    headers = [
        (b"Authorization", authorization),
        (b"Content-Type", content_type),
        (b"X-Request-Id", request_id),
    ]
    body = HTTPREQ_BODY
    if declared is not None:
        headers.append((b"Content-Length", str(declared).encode()))
        body = b""  # never sent: the answer must not wait for it
    request = rawhttp.request("POST", path, headers, body)
    response = await rawhttp.exchange(service.client.host, service.client.port, request)
    assert response.status < 500, response
    if response.status >= 400:
        assert set(response.json()) == {"error", "detail"}, response
        assert await service.all_records() == before, "a rejected request changed records"
    else:
        assert authorization == HTTPREQ_AUTH["Authorization"].encode() and declared is None
