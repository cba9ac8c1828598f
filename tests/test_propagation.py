"""Propagation checks against real BIND servers (a primary and a secondary fed by NOTIFY
and zone transfers), plus a lagging nameserver that only catches up after a rewrite."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
import dns.rcode
import dns.tsig
import dns.update
import pytest

from receiver import signing
from receiver.config import PropagationSettings, ZoneSettings
from receiver.propagation import Checker, Nameserver

from .backends.bind import KEY_NAME, Bind, free_port
from .conftest import Sender, ServiceFactory
from .scripted_provider import ScriptedProvider

ZONE = "prop.test"
REQUIRED = "cert_domain_validation_required"
COMPLETED = "cert_domain_validation_completed"


@pytest.fixture
def bind_pair(tmp_path: Path) -> Iterator[tuple[Bind, Bind]]:
    secondary_port = free_port()
    primary = Bind(tmp_path / "primary", [ZONE], notify=[("127.0.0.1", secondary_port)])
    primary.start()
    secondary = Bind(
        tmp_path / "secondary", [ZONE], port=secondary_port, primary=("127.0.0.1", primary.port)
    )
    try:
        secondary.start()
        yield primary, secondary
    finally:
        secondary.stop()
        primary.stop()


async def nsupdate(bind: Bind, fqdn: str, value: str) -> None:
    key = dns.tsig.Key(KEY_NAME, base64.b64decode(bind.secret), "hmac-sha256")
    update = dns.update.UpdateMessage(ZONE + ".", keyring=key)
    update.add(fqdn + ".", 60, "TXT", f'"{value}"')
    response = await dns.asyncquery.tcp(update, "127.0.0.1", port=bind.port, timeout=3)
    assert response.rcode() == dns.rcode.NOERROR


def rfc2136_zone(primary: Bind, secondary: Bind) -> dict[str, Any]:
    return {
        "name": ZONE,
        "provider": "rfc2136",
        "options": {
            "server": primary.address,
            "tsig_key_name": KEY_NAME,
            "tsig_secret_env": "PROP_TSIG",
        },
        "nameservers": {f"ns1.{ZONE}": primary.address, f"ns2.{ZONE}": secondary.address},
    }


async def test_live_only_once_bind_answers(bind_pair: tuple[Bind, Bind]) -> None:
    primary, _ = bind_pair
    checker = Checker(PropagationSettings(interval_seconds=0.1, timeout_seconds=10))
    fqdn, value = f"_acme-challenge.{ZONE}", signing.challenge_value()
    ns = [Nameserver(f"ns1.{ZONE}", "127.0.0.1", primary.port)]
    waiting = asyncio.create_task(checker.wait(ns, fqdn, value, within=10))
    await asyncio.sleep(0.5)
    assert not waiting.done()  # not there yet: not live
    await nsupdate(primary, fqdn, value)
    result = await waiting
    assert result.live and result.seconds >= 0.5 and result.missing == ()


async def test_waiting_mode_needs_every_nameserver(
    bind_pair: tuple[Bind, Bind],
    start_service: ServiceFactory,
    sender: Sender,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    primary, secondary = bind_pair
    monkeypatch.setenv("PROP_TSIG", primary.secret)
    service = await start_service(
        zones=[rfc2136_zone(primary, secondary)],
        certificate_manager={"wait_for_propagation": True},
        propagation={"check": False, "interval_seconds": 0.1, "timeout_seconds": 4},
    )
    value = signing.challenge_value()
    resp = await service.post(sender.body(sender.claims(REQUIRED, ZONE, value)))
    assert resp.status == 200, await resp.text()
    query = dns.message.make_query(f"_acme-challenge.{ZONE}", "TXT")
    answer = await dns.asyncquery.udp(query, "127.0.0.1", port=secondary.port, timeout=3)
    assert [b"".join(r.strings).decode() for r in answer.answer[0]] == [value]  # via IXFR

    secondary.stop()
    started = asyncio.get_running_loop().time()
    resp = await service.post(sender.body(sender.claims(REQUIRED, f"www.{ZONE}")))
    assert resp.status == 504
    body = await resp.json()
    assert body["error"] == "propagation_timeout"
    assert f"ns2.{ZONE}" in body["detail"] and f"ns1.{ZONE}" not in body["detail"]
    assert asyncio.get_running_loop().time() - started < 15


def events(stream: io.StringIO, name: str) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    return [e for e in found if e["event"] == name]


async def test_background_check_is_logged_and_counted(
    bind_pair: tuple[Bind, Bind],
    start_service: ServiceFactory,
    sender: Sender,
    monkeypatch: pytest.MonkeyPatch,
    captured: io.StringIO,
) -> None:
    primary, secondary = bind_pair
    monkeypatch.setenv("PROP_TSIG", primary.secret)
    service = await start_service(
        zones=[rfc2136_zone(primary, secondary)],
        propagation={"check": True, "interval_seconds": 0.1, "timeout_seconds": 10},
    )
    value = signing.challenge_value()
    resp = await service.post(sender.body(sender.claims(REQUIRED, ZONE, value)))
    assert resp.status == 200  # answered at once
    for _ in range(100):
        if events(captured, "propagation"):
            break
        await asyncio.sleep(0.1)
    (event,) = events(captured, "propagation")
    assert event["outcome"] == "live" and event["value"] == value
    assert event["nameservers"] == [f"ns1.{ZONE}", f"ns2.{ZONE}"] and event["missing"] == []
    text = await (await service.client.get("/metrics")).text()
    assert 'dcr_propagation_checks_total{outcome="live"} 1.0' in text


class LaggingNameserver:
    """Answers TXT from the scripted provider's store, but only from its second write on:
    a nameserver that missed the first write."""

    def __init__(self, provider: ScriptedProvider) -> None:
        self.provider = provider
        self.port = 0
        self.transport: Any = None

    async def answer(self, data: bytes, addr: Any) -> None:
        from providers.base import ZoneRef

        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        name = query.question[0].name.to_text(omit_final_dot=True)
        if self.provider.calls >= 2:
            for value in await self.provider.inner.list_txt(ZoneRef("", ""), name):
                response.answer.append(
                    dns.rrset.from_text(name + ".", 60, "IN", "TXT", f'"{value}"')
                )
        self.transport.sendto(response.to_wire(), addr)


async def test_a_lagging_value_is_written_once_more(
    scripted_registered: None,
    start_service: ServiceFactory,
    sender: Sender,
    captured: io.StringIO,
) -> None:
    nameserver_port = free_port()
    service = await start_service(
        zones=[
            {
                "name": "example.com",
                "provider": "scripted",
                "nameservers": {"ns1.example.com": f"127.0.0.1:{nameserver_port}"},
            }
        ],
        propagation={"check": True, "interval_seconds": 0.1, "timeout_seconds": 0.5},
    )
    (provider,) = service.runtime.providers.values()
    assert isinstance(provider, ScriptedProvider)
    lagging = LaggingNameserver(provider)
    lagging.port = nameserver_port
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Bridge(lagging), local_addr=("127.0.0.1", nameserver_port)
    )
    lagging.transport = transport
    try:
        resp = await service.post(sender.body(sender.claims(REQUIRED, "example.com")))
        assert resp.status == 200
        for _ in range(50):
            if [e for e in events(captured, "propagation") if e["outcome"] == "live"]:
                break
            await asyncio.sleep(0.1)
        outcomes = [e["outcome"] for e in events(captured, "propagation")]
        assert outcomes == ["timeout", "live"]
        assert provider.calls == 2  # written once more, not again and again
        assert len(events(captured, "propagation_lagging")) == 1
    finally:
        transport.close()


class _Bridge(asyncio.DatagramProtocol):
    def __init__(self, server: LaggingNameserver) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: Any) -> None:
        asyncio.get_running_loop().create_task(self.server.answer(data, addr))


async def test_removal_cancels_the_pending_check(
    scripted_registered: None,
    start_service: ServiceFactory,
    sender: Sender,
    unused_udp_port: int,
) -> None:
    service = await start_service(
        zones=[
            {
                "name": "example.com",
                "provider": "scripted",
                "nameservers": {"ns1.example.com": f"127.0.0.1:{unused_udp_port}"},
            }
        ],
        propagation={"check": True, "interval_seconds": 0.1, "timeout_seconds": 0.6},
    )
    (provider,) = service.runtime.providers.values()
    assert isinstance(provider, ScriptedProvider)
    value = signing.challenge_value()
    await service.post(sender.body(sender.claims(REQUIRED, "example.com", value)))
    assert len(service.runtime.propagation) == 1
    await service.post(sender.body(sender.claims(COMPLETED, "example.com", value)))
    assert len(service.runtime.propagation) == 0
    await asyncio.sleep(1.0)  # past the timeout: a live check would have rewritten it
    assert provider.calls == 2  # the add and the remove, no rewrite


async def test_nameservers_found_through_a_resolver(bind_primary: Bind) -> None:
    checker = Checker(
        PropagationSettings(resolvers=(bind_primary.address,), nameserver_port=bind_primary.port)
    )
    zone = ZoneSettings(name="example.test", provider="rfc2136")
    assert await checker.nameservers(zone) == [
        Nameserver("ns1.example.test", "127.0.0.1", bind_primary.port)
    ]
