"""The built-in responder, queried over real UDP and TCP with dnspython."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers.local import ChallengeStore, LocalSettings
from receiver import signing
from receiver.dnsserver import Answerer
from receiver.hosts.http import DNS_ADDRESS

from .conftest import Sender, ServiceFactory

REQUIRED = "cert_domain_validation_required"
COMPLETED = "cert_domain_validation_completed"
ZONE = "example.test"
NAME = "_acme-challenge.www.example.test"


def local_sections(tmp_path: Path, **local: Any) -> dict[str, Any]:
    return {
        "local": {
            "database": str(tmp_path / "store.sqlite3"),
            "dns_listen": "127.0.0.1:0",
            **local,
        },
        "zones": [{"name": ZONE, "provider": "local", "ttl": 30}],
    }


@pytest.fixture
async def served(start_service: ServiceFactory, tmp_path: Path) -> Any:
    service = await start_service(**local_sections(tmp_path))
    service.dns_port = service.client.server.app[DNS_ADDRESS][1]
    return service


async def publish(
    service: Any, sender: Sender, domain: str, value: str | None = None, event: str = REQUIRED
) -> str:
    value = value or signing.challenge_value()
    resp = await service.post(sender.body(sender.claims(event, domain, value)))
    assert resp.status == 200, await resp.text()
    return value


async def ask(
    port: int, name: str, rdtype: str = "TXT", *, tcp: bool = False, **make: Any
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **make)
    if tcp:
        return await dns.asyncquery.tcp(query, "127.0.0.1", port=port, timeout=3)
    return await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=3, ignore_trailing=True)


def txt_values(response: dns.message.Message) -> set[str]:
    return {
        b"".join(r.strings).decode()
        for rrset in response.answer
        for r in rrset
        if rrset.rdtype == dns.rdatatype.TXT
    }


async def raw_udp(port: int, data: bytes, wait: float = 0.5) -> bytes | None:
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, payload: bytes, addr: Any) -> None:
            if not got.done():
                got.set_result(payload)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(data)
        return await asyncio.wait_for(got, wait)
    except TimeoutError:
        return None
    finally:
        transport.close()


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_txt_answer_with_every_value(served: Any, sender: Sender, tcp: bool) -> None:
    apex = await publish(served, sender, "www.example.test")
    wildcard = await publish(served, sender, "*.www.example.test")
    response = await ask(served.dns_port, NAME, tcp=tcp)
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert txt_values(response) == {apex, wildcard}
    assert response.answer[0].ttl == 30


async def test_values_leave_one_by_one(served: Any, sender: Sender) -> None:
    one = await publish(served, sender, "www.example.test")
    two = await publish(served, sender, "*.www.example.test")
    await publish(served, sender, "www.example.test", one, COMPLETED)
    assert txt_values(await ask(served.dns_port, NAME)) == {two}
    await publish(served, sender, "*.www.example.test", two, COMPLETED)
    response = await ask(served.dns_port, NAME)
    assert response.rcode() == dns.rcode.NXDOMAIN


async def test_names_are_case_insensitive_and_the_question_keeps_its_case(
    served: Any, sender: Sender
) -> None:
    value = await publish(served, sender, "www.example.test")
    response = await ask(served.dns_port, "_AcMe-ChAlLeNgE.wWw.ExAmPlE.tEsT")
    assert txt_values(response) == {value}
    assert response.question[0].name.to_text() == "_AcMe-ChAlLeNgE.wWw.ExAmPlE.tEsT."


async def test_nxdomain_versus_nodata(served: Any, sender: Sender) -> None:
    await publish(served, sender, "www.example.test")
    cases = {
        ("nothing.example.test", "TXT"): dns.rcode.NXDOMAIN,
        ("deeper._acme-challenge.www.example.test", "TXT"): dns.rcode.NXDOMAIN,
        (NAME, "A"): dns.rcode.NOERROR,  # the name exists, the type does not
        ("www.example.test", "TXT"): dns.rcode.NOERROR,  # an empty non-terminal
        (ZONE, "A"): dns.rcode.NOERROR,  # the apex always exists
        (ZONE, "TXT"): dns.rcode.NOERROR,
    }
    for (name, rdtype), rcode in cases.items():
        response = await ask(served.dns_port, name, rdtype)
        assert response.rcode() == rcode, (name, rdtype)
        assert response.flags & dns.flags.AA
        assert not response.answer
        (soa,) = response.authority
        assert soa.rdtype == dns.rdatatype.SOA and soa.name.to_text() == f"{ZONE}."
        assert soa.ttl == 5 and soa[0].minimum == 5


async def test_apex_soa_ns_and_glue(served: Any, sender: Sender) -> None:
    soa = await ask(served.dns_port, ZONE, "SOA")
    (record,) = soa.answer[0]
    assert (
        record.mname.to_text() == f"ns.{ZONE}." and record.rname.to_text() == f"hostmaster.{ZONE}."
    )
    serial = record.serial
    await publish(served, sender, "www.example.test")
    assert (await ask(served.dns_port, ZONE, "SOA")).answer[0][0].serial > serial
    ns = await ask(served.dns_port, ZONE, "NS")
    assert [r.target.to_text() for r in ns.answer[0]] == [f"ns.{ZONE}."]
    glue = await ask(served.dns_port, f"ns.{ZONE}", "A")
    assert [r.address for r in glue.answer[0]] == ["127.0.0.1"]


async def test_outside_the_zones_is_refused(served: Any) -> None:
    for name in ("example.org", "test", "badexample.test", "."):
        response = await ask(served.dns_port, name, "TXT")
        assert response.rcode() == dns.rcode.REFUSED, name
        assert not response.flags & dns.flags.AA


async def test_edns_is_mirrored_and_unknown_versions_get_badvers(served: Any) -> None:
    with_edns = await ask(served.dns_port, ZONE, "SOA", use_edns=0, payload=4096)
    assert with_edns.edns == 0 and with_edns.payload == 1232
    without = await ask(served.dns_port, ZONE, "SOA", use_edns=False)
    assert without.edns == -1
    future = await ask(served.dns_port, ZONE, "SOA", use_edns=1)
    assert future.rcode() == dns.rcode.BADVERS and not future.answer


async def test_truncation_over_udp_and_the_full_answer_over_tcp(
    served: Any, sender: Sender
) -> None:
    values = {await publish(served, sender, "www.example.test") for _ in range(40)}
    small = await ask(served.dns_port, NAME, use_edns=False)
    assert small.flags & dns.flags.TC and not small.answer
    big = await ask(served.dns_port, NAME, use_edns=0, payload=1232)
    assert big.flags & dns.flags.TC and not big.answer
    full = await ask(served.dns_port, NAME, tcp=True)
    assert not full.flags & dns.flags.TC
    assert txt_values(full) == values


@pytest.mark.parametrize("payload", [0, 1, 100, 511])
async def test_an_edns_payload_below_512_means_512(
    served: Any, sender: Sender, payload: int
) -> None:
    """RFC 6891 §6.2.5: sizes below 512 are treated as 512. Payload 0 used to lift the cap
    altogether (dnspython reads max_size=0 as 65,535): a big answer went out whole."""
    query = dns.message.make_query(NAME, "TXT", use_edns=0, payload=payload)
    first = await publish(served, sender, "www.example.test")
    small = await raw_udp(served.dns_port, query.to_wire())  # about 110 bytes: it fits
    assert small is not None and txt_values(dns.message.from_wire(small)) == {first}

    values = {first} | {await publish(served, sender, "www.example.test") for _ in range(11)}
    wire = await raw_udp(served.dns_port, query.to_wire())
    assert wire is not None
    response = dns.message.from_wire(wire)
    assert len(wire) <= 512, len(wire)
    assert response.flags & dns.flags.TC and not response.answer
    roomy = await ask(served.dns_port, NAME, use_edns=0, payload=1232)  # the same 700-odd
    assert not roomy.flags & dns.flags.TC and txt_values(roomy) == values  # bytes fit here


@pytest.mark.parametrize("payload", [512, 1232, 4096])
async def test_over_tcp_the_edns_payload_size_does_not_limit_the_answer(
    served: Any, sender: Sender, payload: int
) -> None:
    """A resolver retrying over TCP after TC keeps its EDNS option. The payload size is
    a UDP limit: over TCP the whole answer goes out (dnspython's to_wire() without a
    size used to take it as the limit, and the query failed with TooBig)."""
    values = {await publish(served, sender, "www.example.test") for _ in range(40)}
    full = await ask(served.dns_port, NAME, tcp=True, use_edns=0, payload=payload)
    assert not full.flags & dns.flags.TC
    assert txt_values(full) == values


async def test_several_queries_on_one_tcp_connection(served: Any, sender: Sender) -> None:
    value = await publish(served, sender, "www.example.test")
    reader, writer = await asyncio.open_connection("127.0.0.1", served.dns_port)
    try:
        for query_id in (1, 2, 3):
            query = dns.message.make_query(NAME, "TXT")
            query.id = query_id
            wire = query.to_wire()
            writer.write(struct.pack("!H", len(wire)) + wire)
            await writer.drain()
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            response = dns.message.from_wire(await reader.readexactly(length))
            assert response.id == query_id and txt_values(response) == {value}
    finally:
        writer.close()


async def test_malformed_packets_never_stop_the_server(served: Any, sender: Sender) -> None:
    port = served.dns_port
    assert await raw_udp(port, b"") is None
    assert await raw_udp(port, b"\x12\x34\x01") is None  # shorter than a header: dropped
    garbage = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff\xff"
    formerr = await raw_udp(port, garbage)
    assert formerr is not None
    parsed = dns.message.from_wire(formerr)
    assert parsed.id == 0xABCD and parsed.rcode() == dns.rcode.FORMERR
    response_packet = dns.message.make_response(dns.message.make_query(NAME, "TXT")).to_wire()
    assert await raw_udp(port, response_packet) is None  # never answer a response

    update = dns.message.make_query(NAME, "TXT")
    update.set_opcode(dns.opcode.NOTIFY)
    answered = await raw_udp(port, update.to_wire())
    assert answered is not None and dns.message.from_wire(answered).rcode() == dns.rcode.NOTIMP

    two_questions = dns.message.make_query(NAME, "TXT")
    two_questions.question.append(dns.message.make_query(ZONE, "SOA").question[0])
    answered = await raw_udp(port, two_questions.to_wire())
    assert answered is not None and dns.message.from_wire(answered).rcode() == dns.rcode.FORMERR

    chaos = dns.message.make_query("version.bind", "TXT", rdclass=dns.rdataclass.CH)
    answered = await raw_udp(port, chaos.to_wire())
    assert answered is not None and dns.message.from_wire(answered).rcode() == dns.rcode.REFUSED

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x00\x05hello")  # a TCP frame too short to be a query: hang up
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 3) == b""
    writer.close()

    value = await publish(served, sender, "www.example.test")
    assert txt_values(await ask(port, NAME)) == {value}
    assert txt_values(await ask(port, NAME, tcp=True)) == {value}


def _answerer(tmp_path: Path) -> Answerer:
    settings = LocalSettings(database=tmp_path / "fuzz.sqlite3")
    store = ChallengeStore(settings.database, lifetime=3600)
    store.add(NAME, "v" * 43, 60)
    return Answerer(store, [ZONE], settings, ["127.0.0.1"])


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_get_a_parseable_answer_or_none(tmp_path: Path, data: bytes) -> None:
    answerer = _answerer(tmp_path)
    for limit in (512, None):
        response = answerer.answer(data, max_size=limit)
        if response is not None:
            parsed = dns.message.from_wire(response)
            assert parsed.flags & dns.flags.QR
            assert response[:2] == data[:2]
            if limit is not None:
                assert len(response) <= 1232


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.from_regex(r"[A-Za-z0-9_.-]{1,60}", fullmatch=True),
    rdtype=st.sampled_from(["TXT", "A", "AAAA", "SOA", "NS", "ANY", "CAA", "MX"]),
)
def test_arbitrary_questions_are_answered(tmp_path: Path, name: str, rdtype: str) -> None:
    try:
        query = dns.message.make_query(name, rdtype)
    except Exception:  # names dnspython itself refuses to build
        return
    response = _answerer(tmp_path).answer(query.to_wire(), max_size=512)
    assert response is not None
    parsed = dns.message.from_wire(response)
    assert parsed.id == query.id and parsed.rcode() in (
        dns.rcode.NOERROR,
        dns.rcode.NXDOMAIN,
        dns.rcode.REFUSED,
    )


async def test_values_survive_a_restart(
    start_service: ServiceFactory, tmp_path: Path, sender: Sender
) -> None:
    first = await start_service(**local_sections(tmp_path))
    value = await publish(first, sender, "www.example.test")
    await first.client.close()
    second = await start_service(**local_sections(tmp_path))
    port = second.client.server.app[DNS_ADDRESS][1]
    assert txt_values(await ask(port, NAME)) == {value}


async def test_values_expire_on_their_own(
    start_service: ServiceFactory, tmp_path: Path, sender: Sender
) -> None:
    service = await start_service(**local_sections(tmp_path, value_lifetime_seconds=1))
    port = service.client.server.app[DNS_ADDRESS][1]
    value = await publish(service, sender, "www.example.test")
    assert txt_values(await ask(port, NAME)) == {value}
    await asyncio.sleep(1.2)
    assert (await ask(port, NAME)).rcode() == dns.rcode.NXDOMAIN


async def test_a_write_by_another_process_is_served_at_once(served: Any, tmp_path: Path) -> None:
    other = ChallengeStore(tmp_path / "store.sqlite3", lifetime=3600)
    try:
        assert (await ask(served.dns_port, NAME)).rcode() == dns.rcode.NXDOMAIN  # now cached
        other.add(NAME, "o" * 43, 30)
        assert txt_values(await ask(served.dns_port, NAME)) == {"o" * 43}
        other.remove(NAME, "o" * 43)
        assert (await ask(served.dns_port, NAME)).rcode() == dns.rcode.NXDOMAIN
    finally:
        other.close()


def test_store_expiry_and_serial(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = ChallengeStore(tmp_path / "s.sqlite3", lifetime=10, clock=lambda: now[0])
    assert store.add(NAME, "a" * 43, 60) is True
    assert store.add(NAME, "a" * 43, 60) is False  # refresh, not a change
    serial = store.serial()
    assert store.add(NAME, "b" * 43, 60) is True
    assert store.serial() > serial
    now[0] += 11
    assert store.values(NAME) == []
    assert not store.has_descendants("www.example.test")
    assert store.add(NAME, "a" * 43, 90) is True  # an expired value comes back as new
    assert [(v.value, v.ttl) for v in store.values(NAME)] == [("a" * 43, 90)]
    assert store.purge_expired() == 1  # "b" is gone for good
    assert store.remove(NAME, "a" * 43) is True
    assert store.remove(NAME, "a" * 43) is False
    store.close()


def test_close_waits_for_a_call_running_in_a_thread(tmp_path: Path) -> None:
    """Shutdown closes the store while a purge may still run in a worker thread: the
    close must wait for it (it used to free the connection under it and crash)."""
    import threading
    import time as clock

    def slow_clock() -> float:
        clock.sleep(0.3)
        return clock.time()

    store = ChallengeStore(tmp_path / "s.sqlite3", lifetime=10, clock=slow_clock)
    results: list[object] = []
    worker = threading.Thread(target=lambda: results.append(store.purge_expired()))
    worker.start()
    clock.sleep(0.05)  # the purge is inside the store now
    store.close()
    worker.join()
    assert results == [0]
    with pytest.raises(Exception, match="closed"):
        store.values(NAME)
