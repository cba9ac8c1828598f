"""Property-based fuzzing of the HTTP door and the DNS responder with hypothesis.

HTTP, for any input: no 5xx (a caller's mistake is always a 4xx), a JSON error body on
every rejection, the service keeps answering, and the provider changes only when the
request was accepted. DNS: see the section at the end.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from providers.local import ChallengeStore, LocalSettings
from receiver import dnsserver, signing
from receiver.dnsserver import EDNS_PAYLOAD, PLAIN_UDP_PAYLOAD, Answerer

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


# --- the DNS responder's parser --------------------------------------------------------
#
# For any datagram: no exception out of `Answerer.answer` (the UDP loop would log a
# traceback per packet), an answer that dnspython can read, and, over UDP, never more
# than the client's EDNS payload size allows (512 without EDNS or below 512).

DNS_ZONE = "example.test"
DNS_NAME = f"_acme-challenge.www.{DNS_ZONE}"
TCP_MAX = 65535

dns_names = st.one_of(
    st.sampled_from(
        [DNS_NAME, DNS_ZONE, f"ns.{DNS_ZONE}", f"nothing.{DNS_ZONE}", "example.org", "."]
    ),
    st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True), min_size=1, max_size=4).map(
        lambda labels: ".".join([*labels, DNS_ZONE])
    ),
)
rdtypes = st.sampled_from(["TXT", "SOA", "NS", "A", "AAAA", "ANY", "CAA", "MX", "OPT", "TSIG"])
# A question whose name is a compression pointer to itself, to its own label, forward,
# or around a two-pointer cycle: every one must be FORMERR, never a hang.
COMPRESSION_LOOPS = [
    b"\xc0\x0c",
    b"\x03www\xc0\x0c",
    b"\xc0\xff",
    b"\xc0\x0e\xc0\x0c",
    b"\x03www\xc0\x10\x00",
]


@st.composite
def dns_queries(draw: st.DrawFn) -> bytes:
    """A valid query (EDNS of any payload size or version, up to 40 extra questions,
    any header flags), then mutated: bytes overwritten, cut short or extended."""
    name, rdtype = draw(dns_names), draw(rdtypes)
    edns = draw(st.sampled_from([False, 0, 1]))
    query = dns.message.make_query(name, rdtype, use_edns=edns, payload=draw(st.integers(0, 65535)))
    for extra in draw(st.lists(dns_names, max_size=40)):
        query.question.append(dns.message.make_query(extra, "TXT").question[0])
    wire = bytearray(query.to_wire(max_size=TCP_MAX))  # (0 would mean the EDNS payload)
    flags = draw(st.one_of(st.just(0x0100), st.integers(0, 0x7FFF)))  # RD, or anything but QR
    wire[2:4] = flags.to_bytes(2, "big")
    for position, byte in draw(
        st.lists(st.tuples(st.integers(0, len(wire) - 1), st.integers(0, 255)), max_size=4)
    ):
        wire[position] = byte
    cut = draw(st.one_of(st.none(), st.integers(0, len(wire))))
    return bytes(wire[:cut]) + draw(st.binary(max_size=8))


@st.composite
def compression_loops(draw: st.DrawFn) -> bytes:
    header = draw(st.binary(min_size=2, max_size=2)) + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    return header + draw(st.sampled_from(COMPRESSION_LOOPS)) + b"\x00\x10\x00\x01"


def many_questions(count: int = 40) -> bytes:
    query = dns.message.make_query(DNS_NAME, "TXT", use_edns=0, payload=0)
    for i in range(count):
        name = f"{'x' * 60}.{'y' * 60}.n{i}.{DNS_ZONE}"
        query.question.append(dns.message.make_query(name, "TXT").question[0])
    return query.to_wire()


MANY_QUESTIONS = many_questions()  # 5 kB of questions: echoed whole, no answer fits
datagrams = st.one_of(st.binary(max_size=1500), dns_queries(), compression_loops())


def udp_bound(wire: bytes) -> int:
    """RFC 6891 6.2.5 with our 1232 cap: what an answer to `wire` may take over UDP."""
    try:
        query = dns.message.from_wire(wire)
    except Exception:  # answered by a bare 12-byte FORMERR, if at all
        return PLAIN_UDP_PAYLOAD
    if query.edns < 0:
        return PLAIN_UDP_PAYLOAD
    return max(PLAIN_UDP_PAYLOAD, min(query.payload, EDNS_PAYLOAD))


def check_dns_answer(query: bytes, response: bytes | None, bound: int) -> None:
    if response is None:
        return
    assert len(response) <= bound, (len(response), bound)
    parsed = dns.message.from_wire(response)
    assert parsed.flags & dns.flags.QR
    assert response[:2] == query[:2]


VALUES = 15  # about 850 bytes of TXT answer: too big for 512, not for 1232


def fill_store(database: Path) -> ChallengeStore:
    store = ChallengeStore(database, lifetime=3600)
    for i in range(VALUES):
        store.add(DNS_NAME, f"{i:02d}" + "v" * 41, 60)
    return store


@pytest.fixture
def dns_answerer(tmp_path: Path) -> Iterator[Answerer]:
    """One for all examples of a test: its answer cache is part of what is exercised."""
    settings = LocalSettings(database=tmp_path / "fuzz-dns.sqlite3")
    store = fill_store(settings.database)
    yield Answerer(store, [DNS_ZONE], settings, ["127.0.0.1"])
    store.close()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(datagram=datagrams)
@example(datagram=MANY_QUESTIONS)
@example(datagram=dns.message.make_query(DNS_NAME, "TXT", use_edns=0, payload=0).to_wire())
def test_the_dns_parser_answers_anything_within_the_size_limit(
    dns_answerer: Answerer, datagram: bytes
) -> None:
    udp = dns_answerer.answer(datagram, max_size=PLAIN_UDP_PAYLOAD)
    check_dns_answer(datagram, udp, udp_bound(datagram))
    check_dns_answer(datagram, dns_answerer.answer(datagram, max_size=None), TCP_MAX)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(datagrams, min_size=1, max_size=20))
@example(
    batch=[MANY_QUESTIONS, dns.message.make_query(DNS_NAME, "TXT", use_edns=0, payload=0).to_wire()]
)
async def test_the_dns_responder_over_real_udp(
    tmp_path: Path, captured: io.StringIO, batch: list[bytes]
) -> None:
    """The same, through a running responder's socket: every reply within its bound,
    no failure logged, and a plain question (sent last) still answered."""
    settings = LocalSettings(database=tmp_path / "fuzz-udp.sqlite3", dns_listen="127.0.0.1:0")
    fill_store(settings.database).close()
    # Distinct ids, so that each reply is matched to its query; the plain one is 0xFFFF.
    batch = [i.to_bytes(2, "big") + d[2:] if len(d) >= 2 else d for i, d in enumerate(batch)]
    plain = dns.message.make_query(DNS_NAME, "TXT", use_edns=0, payload=1232)
    plain.id = 0xFFFF
    async with dnsserver.running([DNS_ZONE], settings) as responder:
        replies = await udp_exchange(responder.address[1], [*batch, plain.to_wire()])
    last = dns.message.from_wire(replies.pop())
    assert last.id == 0xFFFF and len(last.answer[0]) == VALUES
    for reply in replies:
        (query,) = [q for q in batch if q[:2] == reply[:2]]
        check_dns_answer(query, reply, udp_bound(query))
    assert "dns_query_failed" not in captured.getvalue()


async def udp_exchange(port: int, datagrams: list[bytes]) -> list[bytes]:
    """Send every datagram from one socket, in order; the replies, up to and including
    the one to the last datagram (the responder answers in order)."""
    loop = asyncio.get_running_loop()
    replies: list[bytes] = []
    done = loop.create_future()
    last_id = datagrams[-1][:2]

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            replies.append(data)
            if data[:2] == last_id and not done.done():
                done.set_result(None)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
    try:
        for datagram in datagrams:
            transport.sendto(datagram)
        await asyncio.wait_for(done, 5)
    finally:
        transport.close()
    return replies


# Header values as raw bytes: invalid UTF-8, UTF-8 beyond latin-1, anything but the control
# characters, which end a header line (aiohttp answers those malformed requests itself).
header_bytes = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=20).map(str.encode),
    st.text(st.characters(min_codepoint=0x100, codec="utf-8"), max_size=10).map(str.encode),
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


deep_bodies = st.sampled_from(
    [
        b"[" * 30_000,
        b'{"data": ' + b"[" * 30_000 + b"}",
        b'{"subdomain": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"}",
        b'{"data": "\xff\xfe.\xc3\x28.\xa0\xa1"}',
        b"\xef\xbb\xbf{}",
    ]
)


@FUZZ
@given(
    path=st.sampled_from(["/callback", "/register", "/update"]),
    body=st.one_of(deep_bodies, st.binary(max_size=200)),
    user=header_bytes,
    key=header_bytes,
    content_type=st.one_of(st.just(b"application/json"), header_bytes),
    request_id=header_bytes,
    declared=st.one_of(st.none(), st.integers(min_value=65537, max_value=10**18)),
)
async def test_the_other_doors_take_any_bytes(
    start_service: ServiceFactory,
    path: str,
    body: bytes,
    user: bytes,
    key: bytes,
    content_type: bytes,
    request_id: bytes,
    declared: int | None,
) -> None:
    """Certificate Manager and acme-dns over a raw socket: deep nesting, invalid UTF-8 in
    headers and bodies, huge declared lengths: a 4xx with a JSON error, never a 5xx, and
    nothing written (registration is off here, so nothing may succeed)."""
    service = await start_service(
        acme_dns={"enabled": True, "zone": "example.net", "allow_register": False}
    )
    before = await service.all_records()
    headers = [
        (b"X-Api-User", user),
        (b"X-Api-Key", key),
        (b"Content-Type", content_type),
        (b"X-Request-Id", request_id),
    ]
    if declared is not None:
        headers.append((b"Content-Length", str(declared).encode()))
        body = b""  # never sent: the answer must not wait for it
    request = rawhttp.request("POST", path, headers, body)
    response = await rawhttp.exchange(service.client.host, service.client.port, request)
    assert 400 <= response.status < 500, response
    assert set(response.json()) == {"error", "detail"}, response
    assert await service.all_records() == before
