"""Propagation checks against real BIND servers (a primary and a secondary fed by NOTIFY
and zone transfers), plus a lagging nameserver that only catches up after a rewrite."""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import json
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rrset
import dns.tsig
import dns.update
import pytest

from receiver import propagation as propagation_module
from receiver import signing
from receiver.challenge import Action, Challenge
from receiver.config import PropagationSettings, ZoneSettings
from receiver.errors import PropagationTimeout
from receiver.metrics import Uncounted
from receiver.prometheus import PrometheusMetrics
from receiver.propagation import QUERIES_AT_ONCE, Checker, Nameserver, Propagation

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
    # Was `Checker.wait(nameservers, fqdn, value)`: values are now checked by their zone's
    # rounds, so the same is asked through `Propagation.wait`.
    primary, _ = bind_pair
    propagation = Propagation(
        PropagationSettings(interval_seconds=0.1, timeout_seconds=10), Uncounted()
    )
    zone = ZoneSettings(ZONE, "rfc2136", nameservers=((f"ns1.{ZONE}", primary.address),))
    fqdn, value = f"_acme-challenge.{ZONE}", signing.challenge_value()
    waiting = asyncio.create_task(propagation.wait(zone, add(fqdn, value)))
    await asyncio.sleep(0.5)
    assert not waiting.done()  # not there yet: not live
    await nsupdate(primary, fqdn, value)
    result = await waiting
    assert result.live and result.seconds >= 0.5 and result.missing == ()
    await propagation.aclose()


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


# --- One checker per zone: rounds, bounds, the cap, and no checks where none can help ---


def add(fqdn: str, value: str) -> Challenge:
    return Challenge(Action.ADD, fqdn.removeprefix("_acme-challenge."), fqdn, value)


class FakeNameserver(asyncio.DatagramProtocol):
    """A nameserver in the test's own event loop: serves `records`, counts each question
    by name, answers after `delay` seconds (in flight meanwhile), or never if `silent`."""

    def __init__(self, *, delay: float = 0.0, silent: bool = False) -> None:
        self.records: dict[str, set[str]] = {}
        self.asked: Counter[str] = Counter()
        self.delay, self.silent = delay, silent
        self.in_flight = self.most_in_flight = 0
        self.transport: Any = None
        self.port = 0
        self._answers: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        query = dns.message.from_wire(data)
        name = query.question[0].name.to_text(omit_final_dot=True)
        self.asked[name] += 1
        if not self.silent:
            task = asyncio.get_running_loop().create_task(self._answer(query, name, addr))
            self._answers.add(task)
            task.add_done_callback(self._answers.discard)

    async def _answer(self, query: dns.message.Message, name: str, addr: Any) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        response = dns.message.make_response(query)
        values = self.records.get(name)
        if values:
            texts = [f'"{v}"' for v in sorted(values)]
            response.answer.append(dns.rrset.from_text_list(name + ".", 60, "IN", "TXT", texts))
        self.transport.sendto(response.to_wire(), addr)

    def serve(self, fqdn: str, value: str) -> None:
        self.records.setdefault(fqdn, set()).add(value)


@pytest.fixture
async def fake_nameservers() -> AsyncIterator[Callable[..., Awaitable[FakeNameserver]]]:
    started: list[FakeNameserver] = []

    async def start(**options: Any) -> FakeNameserver:
        loop = asyncio.get_running_loop()
        _, server = await loop.create_datagram_endpoint(
            lambda: FakeNameserver(**options), local_addr=("127.0.0.1", 0)
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.transport.close()
        for task in list(server._answers):
            task.cancel()


def zone_on(*servers: FakeNameserver, provider: str = "route53") -> ZoneSettings:
    """`example.com` with a `nameservers` table naming these servers ns1, ns2, ..."""
    table = tuple(
        (f"ns{index}.example.com", f"127.0.0.1:{server.port}")
        for index, server in enumerate(servers, 1)
    )
    return ZoneSettings("example.com", provider, nameservers=table)


def counted(metrics: PrometheusMetrics, sample: str) -> float:
    """The value of one sample line of /metrics, e.g. `dcr_propagation_checks_pending`."""
    for line in metrics.render().decode().splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


def rounds_running() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if "_ZoneChecker" in t.get_coro().__qualname__]  # type: ignore[union-attr]


async def no_rewrite() -> None:
    raise AssertionError("not expected to be written again")


async def test_one_round_asks_each_nameserver_once_per_pending_name(
    fake_nameservers: Callable[..., Awaitable[FakeNameserver]],
) -> None:
    ns1, ns2 = await fake_nameservers(), await fake_nameservers()
    settings = PropagationSettings(interval_seconds=30, timeout_seconds=60)
    propagation = Propagation(settings, Uncounted())
    # A `nameservers` table is always asked, even for `memory` (the table says who serves).
    zone = zone_on(ns1, ns2, provider="memory")
    names = [f"_acme-challenge.h{i}.example.com" for i in range(8)]
    for name in names:
        for _ in range(5):  # five pending values of one name: one question
            propagation.watch(zone, add(name, signing.challenge_value()), no_rewrite)
    assert len(propagation) == 40
    await until(lambda: len(ns1.asked) == len(ns2.asked) == 8)
    await asyncio.sleep(0.3)  # anything more would have been asked by now
    assert ns1.asked == ns2.asked == dict.fromkeys(names, 1)
    assert len(rounds_running()) == 1  # one checker for the zone, not one task per value
    await propagation.aclose()
    assert rounds_running() == [] and len(propagation) == 0


async def test_questions_in_a_round_are_bounded(
    fake_nameservers: Callable[..., Awaitable[FakeNameserver]],
) -> None:
    slow = await fake_nameservers(delay=0.1)
    propagation = Propagation(PropagationSettings(interval_seconds=30), Uncounted())
    zone = zone_on(slow)
    for i in range(100):
        propagation.watch(zone, add(f"h{i}.example.com", "v"), no_rewrite)
    await until(lambda: len(slow.asked) == 100)
    assert slow.most_in_flight == QUERIES_AT_ONCE
    await propagation.aclose()


async def test_a_silent_nameserver_costs_one_question_per_round(
    fake_nameservers: Callable[..., Awaitable[FakeNameserver]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(propagation_module, "QUERY_TIMEOUT_SECONDS", 0.2)
    silent = await fake_nameservers(silent=True)
    settings = PropagationSettings(interval_seconds=0.3, timeout_seconds=60)
    propagation = Propagation(settings, Uncounted())
    zone = zone_on(silent)
    for i in range(50):
        propagation.watch(zone, add(f"h{i}.example.com", "v"), no_rewrite)
    await asyncio.sleep(1.6)  # three rounds (0.2 s without an answer, then 0.3 s apart)
    assert 2 <= sum(silent.asked.values()) <= 4  # not 50 per round
    assert len(propagation) == 50
    await propagation.aclose()


async def test_the_cap_drops_the_oldest_and_counts_it(
    fake_nameservers: Callable[..., Awaitable[FakeNameserver]], captured: io.StringIO
) -> None:
    ns = await fake_nameservers()
    metrics = PrometheusMetrics.create()
    settings = PropagationSettings(interval_seconds=0.1, timeout_seconds=60, max_pending=3)
    propagation = Propagation(settings, metrics)
    zone = zone_on(ns)
    values = [f"value-{i}" for i in range(50)]
    for value in values:
        propagation.watch(zone, add("_acme-challenge.example.com", value), no_rewrite)
    assert len(propagation) == 3
    assert counted(metrics, 'dcr_propagation_checks_total{outcome="dropped"}') == 47
    assert counted(metrics, "dcr_propagation_checks_pending") == 3
    (first,) = events(captured, "propagation_dropped")  # rate-limited: not one per drop
    assert first["dropped"] == 1 and first["max_pending"] == 3
    for value in values:
        ns.serve("_acme-challenge.example.com", value)
    await until(lambda: len(propagation) == 0)
    live = [e["value"] for e in events(captured, "propagation") if e["outcome"] == "live"]
    assert sorted(live) == values[-3:]  # the newest three were kept
    await propagation.aclose()
    drops = events(captured, "propagation_dropped")
    assert len(drops) == 2 and sum(e["dropped"] for e in drops) == 47  # the rest, at close


async def test_memory_and_local_zones_start_no_network_check(captured: io.StringIO) -> None:
    metrics = PrometheusMetrics.create()
    propagation = Propagation(PropagationSettings(interval_seconds=0.1), metrics)

    async def no_network(*args: Any) -> Any:
        raise AssertionError("asked the network")

    propagation.checker.nameservers = no_network  # type: ignore[method-assign]
    propagation.checker.values = no_network  # type: ignore[method-assign]
    memory, local = ZoneSettings("example.com", "memory"), ZoneSettings("example.net", "local")
    propagation.watch(memory, add("_acme-challenge.example.com", "m"), no_rewrite)
    propagation.watch(local, add("_acme-challenge.example.net", "l"), no_rewrite)
    assert (await propagation.wait(local, add("_acme-challenge.example.net", "w"))).live
    assert (await propagation.wait(memory, add("_acme-challenge.example.com", "w"))).live
    assert len(propagation) == 0 and rounds_running() == []
    await asyncio.sleep(0.3)
    assert counted(metrics, 'dcr_propagation_checks_total{outcome="skipped"}') == 2
    assert counted(metrics, 'dcr_propagation_checks_total{outcome="live"}') == 2
    assert counted(metrics, 'dcr_propagation_checks_total{outcome="error"}') == 0
    local_events = events(captured, "propagation")  # `local`: live, said so; `memory`: quiet
    assert [(e["value"], e["outcome"], e["seconds"]) for e in local_events] == [
        ("l", "live", 0.0),
        ("w", "live", 0.0),
    ]
    assert local_events[0]["nameservers"] == ["built-in responder"]
    await propagation.aclose()


async def test_the_pending_gauge_goes_up_and_back_to_zero(
    fake_nameservers: Callable[..., Awaitable[FakeNameserver]],
) -> None:
    ns = await fake_nameservers()
    metrics = PrometheusMetrics.create()
    settings = PropagationSettings(interval_seconds=0.1, timeout_seconds=60)
    propagation = Propagation(settings, metrics)
    zone = zone_on(ns)
    challenges = [add(f"_acme-challenge.h{i}.example.com", f"v{i}") for i in range(5)]
    for challenge in challenges:
        propagation.watch(zone, challenge, no_rewrite)
    assert counted(metrics, "dcr_propagation_checks_pending") == 5
    await until(lambda: len(ns.asked) == 5)
    assert counted(metrics, "dcr_propagation_checks_pending") == 5  # asked, not yet served
    for challenge in challenges:
        ns.serve(challenge.fqdn, challenge.value)
    await until(lambda: counted(metrics, "dcr_propagation_checks_pending") == 0)
    assert counted(metrics, 'dcr_propagation_checks_total{outcome="live"}') == 5
    await until(lambda: rounds_running() == [])  # idle: the zone's checker has ended
    await propagation.aclose()


async def test_forget_during_a_round_means_no_outcome_and_no_rewrite(
    fake_nameservers: Callable[..., Awaitable[FakeNameserver]], captured: io.StringIO
) -> None:
    slow = await fake_nameservers(delay=0.5)
    settings = PropagationSettings(interval_seconds=0.1, timeout_seconds=0.3)
    propagation = Propagation(settings, Uncounted())
    zone = zone_on(slow)
    rewritten: list[str] = []

    def rewrite(value: str) -> Callable[[], Awaitable[None]]:
        async def write() -> None:
            rewritten.append(value)

        return write

    kept, removed = add("kept.example.com", "kept"), add("removed.example.com", "removed")
    propagation.watch(zone, kept, rewrite("kept"))
    propagation.watch(zone, removed, rewrite("removed"))
    await until(lambda: len(slow.asked) == 2)  # the round is waiting for the answers
    propagation.forget(removed)
    assert len(propagation) == 1
    await until(lambda: rewritten == ["kept"])  # past its timeout: the other one is written
    await asyncio.sleep(0.2)
    assert rewritten == ["kept"]
    assert [e["value"] for e in events(captured, "propagation")] == ["kept"]
    await propagation.aclose()


async def test_wait_names_the_missing_nameserver(
    fake_nameservers: Callable[..., Awaitable[FakeNameserver]],
) -> None:
    ns1, ns2 = await fake_nameservers(), await fake_nameservers()
    settings = PropagationSettings(interval_seconds=0.1, timeout_seconds=0.5)
    propagation = Propagation(settings, Uncounted())
    challenge = add("_acme-challenge.example.com", "v")
    ns1.serve(challenge.fqdn, challenge.value)
    with pytest.raises(PropagationTimeout) as caught:
        await propagation.wait(zone_on(ns1, ns2), challenge)
    assert caught.value.missing == ("ns2.example.com",)
    assert "ns2.example.com" in caught.value.detail and "ns1" not in caught.value.detail
    assert len(propagation) == 0
    await propagation.aclose()


async def test_a_pending_check_keeps_little_memory(
    fake_nameservers: Callable[..., Awaitable[FakeNameserver]],
    start_service: ServiceFactory,
    sender: Sender,
) -> None:
    """Up to `max_pending` checks wait on a silent nameserver: each keeps what its rewrite
    needs (names, value, origin, one small write object), not the request, not closures
    and not a set of nameservers of its own. Measured against the same notifications with
    checks off, so the provider's own records are not counted. Was ~1,700 bytes here."""
    silent = await fake_nameservers(silent=True)
    zone = {
        "name": "example.com",
        "provider": "memory",
        "nameservers": {"ns1.example.com": f"127.0.0.1:{silent.port}"},
    }
    count = 300

    async def retained(check: bool) -> float:
        service = await start_service(
            zones=[zone], propagation={"check": check, "timeout_seconds": 600}
        )
        bodies = [
            sender.body(sender.claims(REQUIRED, f"h{i}-{check}.example.com")) for i in range(count)
        ]
        await service.post(sender.body(sender.claims(REQUIRED, f"warm-{check}.example.com")))
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for body in bodies:
                assert (await service.post(body)).status == 200
            await asyncio.sleep(0.2)  # a first round asked
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        if check:
            assert len(service.runtime.propagation) == count + 1
        return kept / count

    without, with_checks = await retained(False), await retained(True)
    assert with_checks - without < 1_300, (with_checks, without)
