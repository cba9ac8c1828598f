"""Fuzzing the RFC 2136 door's UPDATE path with hypothesis, through the listener's own
entry (`Rfc2136Listener.respond`: decide, carry out, answer) on a live service.

For any input: no exception escapes, an answer (when there is one) parses as a DNS
response to the same id, and nothing is written unless the message was signed by a
configured key, and then only what it really said."""

from __future__ import annotations

import base64
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.tsigkeyring
import dns.update
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from receiver.doors.rfc2136 import Rfc2136Door, Rfc2136Listener

from .conftest import Service, ServiceFactory
from .rfc2136_clients import KEY, digest, new_secret

FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
CHALLENGE = "_acme-challenge.example.com."
VALUE = "A" * 43


@pytest.fixture
async def door(
    start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> tuple[Service, Rfc2136Listener, str]:
    secret = new_secret()
    monkeypatch.setenv("FUZZ_SECRET", secret)
    service = await start_service(
        certificate_manager={"enabled": False, "allowed_instances": []},
        rfc2136_door={
            "enabled": True,
            "listen": "127.0.0.1:0",
            "keys": [{"name": KEY, "secret_env": "FUZZ_SECRET", "zones": ["example.com"]}],
        },
    )
    runtime = service.runtime
    return service, Rfc2136Listener(runtime, Rfc2136Door(runtime.settings, runtime.policy)), secret


async def answer_of(listener: Rfc2136Listener, wire: bytes, tcp: bool) -> bytes | None:
    answer = await listener.respond(wire, remote="127.0.0.1", max_size=None if tcp else 512)
    if answer is not None:
        assert len(wire) >= 12, "an answer to bytes without a header"
        assert answer[:2] == wire[:2]  # the same id
        assert answer[2] & 0x80  # QR: a response
        if not tcp:
            assert len(answer) <= 1232
        dns.message.from_wire(answer, keyring=False)  # it parses
    return answer


@FUZZ
@given(wire=st.binary(max_size=700), tcp=st.booleans())
@example(wire=b"\x00\x01\x28\x00" + b"\x00" * 8, tcp=False)  # an empty UPDATE
async def test_arbitrary_bytes_never_crash_nor_write(
    door: tuple[Service, Rfc2136Listener, str], wire: bytes, tcp: bool
) -> None:
    service, listener, _ = door
    before = await service.all_records()
    await answer_of(listener, wire, tcp)
    assert await service.all_records() == before


@st.composite
def mutations(draw: st.DrawFn) -> list[tuple[str, int, int]]:
    """Edits of a signed message: (what, where as a fraction of the length, byte)."""
    edit = st.tuples(
        st.sampled_from(["flip", "insert", "delete", "truncate"]),
        st.integers(min_value=0, max_value=10_000),
        st.integers(min_value=1, max_value=255),
    )
    return draw(st.lists(edit, min_size=1, max_size=4))


def mutated(wire: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(wire)
    for what, where, byte in edits:
        at = where % max(1, len(data))
        if what == "flip" and data:
            data[at] ^= byte
        elif what == "insert":
            data.insert(at, byte)
        elif what == "delete" and data:
            del data[at]
        elif what == "truncate":
            del data[at:]
    return bytes(data)


@FUZZ
@given(edits=mutations(), tcp=st.booleans())
async def test_a_mutated_signed_update_writes_nothing_it_did_not_say(
    door: tuple[Service, Rfc2136Listener, str], edits: list[tuple[str, int, int]], tcp: bool
) -> None:
    """A signed UPDATE (add one value), edited: only edits TSIG leaves valid (the header's
    id) may still write, and then exactly that value."""
    service, listener, secret = door
    value = digest()
    update = dns.update.UpdateMessage(
        "example.com", keyring=dns.tsigkeyring.from_text({KEY: secret}), keyname=KEY
    )
    update.add(CHALLENGE, 60, "TXT", value)
    before = await service.all_records()
    await answer_of(listener, mutated(update.to_wire(), edits), tcp)
    after = await service.all_records()
    if after != before:
        written = {name: set(values) - set(before.get(name, ())) for name, values in after.items()}
        assert {n: v for n, v in written.items() if v} == {CHALLENGE.rstrip("."): {value}}


records = st.sampled_from(
    [
        ("add", CHALLENGE, "TXT", VALUE),
        ("add", CHALLENGE, "TXT", "not a digest"),
        ("add", "www.example.com.", "A", "192.0.2.1"),
        ("add", "_acme-challenge.example.org.", "TXT", VALUE),
        ("delete", CHALLENGE, "TXT", VALUE),
        ("delete", CHALLENGE, "TXT", None),
        ("delete", CHALLENGE, None, None),
        ("delete", "example.com.", "SOA", None),
        ("present", CHALLENGE, "TXT", None),
        ("absent", CHALLENGE, None, None),
    ]
)


@FUZZ
@given(
    zone=st.sampled_from(["example.com", "example.net", "example.org", "com", "."]),
    operations=st.lists(records, max_size=6),
    signed_by=st.sampled_from([None, "stranger", "wrong-secret"]),
    tcp=st.booleans(),
)
async def test_updates_not_signed_by_a_configured_key_write_nothing(
    door: tuple[Service, Rfc2136Listener, str],
    zone: str,
    operations: list[tuple[str, str, str | None, str | None]],
    signed_by: str | None,
    tcp: bool,
) -> None:
    service, listener, secret = door
    keyring: Any = None
    if signed_by == "stranger":
        keyring = dns.tsigkeyring.from_text({"stranger": secret})
    elif signed_by == "wrong-secret":
        keyring = dns.tsigkeyring.from_text({KEY: base64.b64encode(b"x" * 32).decode()})
    update = dns.update.UpdateMessage(zone, keyring=keyring)
    for action, name, rdtype, data in operations:
        if action == "add":
            update.add(name, 60, rdtype, data)
        elif action == "delete":
            args = [a for a in (rdtype, data) if a is not None]
            update.delete(name, *args)
        elif action == "present":
            update.present(name, rdtype)
        else:
            update.absent(name)
    before = await service.all_records()
    answer = await answer_of(listener, update.to_wire(), tcp)
    assert answer is not None
    rcode = dns.message.from_wire(answer, keyring=False).rcode()
    assert rcode in (dns.rcode.REFUSED, dns.rcode.NOTAUTH, dns.rcode.FORMERR)
    assert not dns.message.from_wire(answer, keyring=False).flags & dns.flags.TC
    assert await service.all_records() == before
    journal = service.runtime.journal
    assert journal is not None
    assert await journal.entries() == []
