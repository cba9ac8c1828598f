"""Retries, deadlines and error mapping in the dispatcher, through the HTTP service."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest

from providers.base import ChangeContext, TxtChange, ZoneRef
from providers.memory import MemoryProvider, MemorySettings
from providers.secret import Secret
from receiver import signing
from receiver.dispatch import KeyedLocks

from .conftest import Sender, ServiceFactory
from .scripted_provider import ScriptedProvider

REQUIRED = "cert_domain_validation_required"
FQDN = "_acme-challenge.www.example.com"


pytestmark = pytest.mark.usefixtures("scripted_registered")


def zones(**options: Any) -> list[dict[str, Any]]:
    return [{"name": "example.com", "provider": "scripted", "options": options}]


def scripted(service: Any) -> ScriptedProvider:
    (provider,) = service.runtime.providers.values()
    assert isinstance(provider, ScriptedProvider)
    return provider


async def records(provider: ScriptedProvider) -> frozenset[str]:
    return await provider.list_txt(ZoneRef("example.com", "example.com"), FQDN)


@pytest.mark.parametrize("error", ["unavailable", "rate_limited", "conflict"])
async def test_transient_errors_are_retried_until_success(
    start_service: ServiceFactory, sender: Sender, error: str
) -> None:
    service = await start_service(zones=zones(failures=3, error=error, retry_after=0.01))
    value = signing.challenge_value()
    resp = await service.post(sender.body(sender.claims(REQUIRED, "www.example.com", value)))
    assert resp.status == 200, await resp.text()
    provider = scripted(service)
    assert provider.calls == 4
    assert await records(provider) == {value}


async def test_retry_after_is_honoured(start_service: ServiceFactory, sender: Sender) -> None:
    service = await start_service(zones=zones(failures=2, error="rate_limited", retry_after=0.3))
    started = time.monotonic()
    resp = await service.post(sender.body())
    assert resp.status == 200
    assert time.monotonic() - started >= 0.6


async def test_persistent_outage_is_503_with_retry_after(
    start_service: ServiceFactory, sender: Sender
) -> None:
    # Short delays well inside a longer deadline: the retry loop gives up (knowing the
    # next wait would pass the deadline) long before the deadline's own timeout could
    # fire, however loaded the machine (CI once saw the timeout win at 0.5 s).
    service = await start_service(
        zones=zones(failures=10_000, error="unavailable"),
        dispatch={"deadline_seconds": 3, "retry_initial_seconds": 0.05, "retry_max_seconds": 0.5},
    )
    resp = await service.post(sender.body())
    assert resp.status == 503
    body = await resp.json()
    assert body["error"] == "provider_unavailable"
    assert int(resp.headers["Retry-After"]) >= 1
    provider = scripted(service)
    assert provider.calls > 2
    assert await records(provider) == frozenset()


async def test_throttling_beyond_the_deadline_answers_with_the_providers_wait(
    start_service: ServiceFactory, sender: Sender
) -> None:
    service = await start_service(
        zones=zones(failures=1, error="rate_limited", retry_after=30),
        dispatch={"deadline_seconds": 1},
    )
    resp = await service.post(sender.body())
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "30"
    assert scripted(service).calls == 1


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ("auth", "provider_auth_failed"),
        ("zone", "provider_zone_not_found"),
        ("rejected", "provider_rejected"),
    ],
)
async def test_final_errors_are_502_without_leaking_details(
    start_service: ServiceFactory, sender: Sender, error: str, code: str
) -> None:
    service = await start_service(zones=zones(failures=5, error=error))
    resp = await service.post(sender.body())
    assert resp.status == 502
    body = await resp.json()
    assert body["error"] == code
    assert "arn:aws" not in body["detail"] and "hosted zone" not in body["detail"]
    assert scripted(service).calls == 1  # never retried


async def test_hanging_provider_hits_the_deadline(
    start_service: ServiceFactory, sender: Sender
) -> None:
    service = await start_service(
        zones=zones(failures=1, hang_seconds=5), dispatch={"deadline_seconds": 0.3}
    )
    started = time.monotonic()
    resp = await service.post(sender.body())
    assert resp.status == 503
    assert (await resp.json())["error"] == "provider_timeout"
    assert time.monotonic() - started < 2


async def test_adapter_bug_is_a_500_json(start_service: ServiceFactory, sender: Sender) -> None:
    service = await start_service(zones=zones(failures=1, error="bug"))
    resp = await service.post(sender.body())
    assert resp.status == 500
    assert await resp.json() == {"error": "internal_error", "detail": "unexpected error; see logs"}


async def test_user_token_reaches_only_adapters_that_ask(
    start_service: ServiceFactory, sender: Sender
) -> None:
    service = await start_service(
        zones=[
            *zones(),
            {"name": "example.net", "provider": "memory"},
        ]
    )
    token = sender.user_token()
    resp = await service.post(
        sender.body(sender.claims(REQUIRED, "www.example.com", user_token=token))
    )
    assert resp.status == 200
    provider = next(
        p for p in service.runtime.providers.values() if isinstance(p, ScriptedProvider)
    )
    (ctx,) = provider.contexts
    assert ctx.user_token is not None and ctx.user_token.reveal() == token
    assert token not in repr(ctx)
    assert ctx.request_id == resp.headers["X-Request-Id"]


async def test_locks_do_not_accumulate(start_service: ServiceFactory, sender: Sender) -> None:
    service = await start_service()
    for index in range(20):
        await service.post(sender.body(sender.claims(REQUIRED, f"h{index}.example.com")))
    assert len(service.runtime.dispatcher._locks) == 0


async def test_keyed_locks_serialise_per_key() -> None:
    import asyncio

    locks = KeyedLocks()
    order: list[str] = []

    async def worker(key: str, tag: str) -> None:
        async with locks.hold(key):
            order.append(f"{tag}+")
            await asyncio.sleep(0.01)
            order.append(f"{tag}-")

    await asyncio.gather(worker("a", "1"), worker("a", "2"), worker("b", "3"))
    a_events = [e for e in order if e[0] in "12"]
    assert a_events in (["1+", "1-", "2+", "2-"], ["2+", "2-", "1+", "1-"])
    assert order.index("3+") < order.index("1-") or order.index("3+") < order.index("2-")
    assert len(locks) == 0


async def test_coalescer_batches_and_reports_per_batch() -> None:
    import asyncio

    from providers.base import TxtChange
    from receiver.coalescer import Coalescer

    batches: list[list[str]] = []
    fail_next = [True]

    async def run(changes: list[TxtChange], request_ids: list[str], token: object) -> None:
        batches.append([c.value for c in changes])
        await asyncio.sleep(0.05)
        if fail_next[0]:
            fail_next[0] = False
            raise RuntimeError("batch failed")

    coalescer = Coalescer(run, window=0.02)

    def change(v: str) -> TxtChange:
        return TxtChange("add", "n", v, 60)

    first = await asyncio.gather(
        *(coalescer.submit(change(v), v) for v in "abc"), return_exceptions=True
    )
    assert batches == [["a", "b", "c"]]
    assert all(isinstance(r, RuntimeError) for r in first)  # everyone in it learns
    await asyncio.gather(coalescer.submit(change("d"), "d"), coalescer.submit(change("e"), "e"))
    assert batches[1] == ["d", "e"]  # the next batch is unaffected

    waiter = asyncio.create_task(coalescer.submit(change("f"), "f"))
    await asyncio.sleep(0.03)  # the batch with "f" is running now
    waiter.cancel()  # the caller gives up (deadline) ...
    await asyncio.sleep(0.1)
    assert batches[2] == ["f"]  # ... but the change still went out
    assert len(coalescer) == 0


async def test_retries_and_failures_are_counted(
    start_service: ServiceFactory, sender: Sender
) -> None:
    service = await start_service(zones=zones(failures=2, error="unavailable"))
    assert (await service.post(sender.body())).status == 200
    text = await (await service.client.get("/metrics")).text()
    assert (
        'dcr_provider_retries_total{error="provider_unavailable",provider="scripted"} 2.0' in text
    )
    failing = await start_service(zones=zones(failures=5, error="auth"))
    assert (await failing.post(sender.body())).status == 502
    text = await (await failing.client.get("/metrics")).text()
    assert (
        'dcr_provider_failures_total{error="provider_auth_failed",provider="scripted"} 1.0' in text
    )


async def test_faults_at_a_rate_never_lose_a_challenge(
    start_service: ServiceFactory, sender: Sender
) -> None:
    """30% of provider calls fail (5xx, throttling, hangs past the deadline). Every
    accepted challenge ends published or answered 503; a sender that retries its 503s
    ends with every value published, and after the completions with every value gone."""
    import asyncio

    service = await start_service(
        zones=zones(failure_rate=0.3, seed=7, retry_after=0.01),
        dispatch={
            "deadline_seconds": 0.4,
            "retry_initial_seconds": 0.01,
            "retry_max_seconds": 0.02,
        },
    )
    (provider,) = service.runtime.providers.values()
    assert isinstance(provider, ScriptedProvider)
    domains = {f"h{i}.example.com": signing.challenge_value() for i in range(40)}

    async def until_ok(event: str, domain: str, value: str) -> list[int]:
        statuses = []
        for _ in range(30):
            resp = await service.post(sender.body(sender.claims(event, domain, value)))
            statuses.append(resp.status)
            if resp.status == 200:
                return statuses
            assert resp.status == 503 and "Retry-After" in resp.headers
        raise AssertionError(f"never accepted: {statuses}")

    first = await asyncio.gather(*(until_ok(REQUIRED, d, v) for d, v in domains.items()))
    assert any(len(s) > 1 for s in first)  # faults really happened
    for domain, value in domains.items():  # every 200 means published
        assert value in await provider.list_txt(ZoneRef("", ""), f"_acme-challenge.{domain}")
    await asyncio.gather(
        *(until_ok("cert_domain_validation_completed", d, v) for d, v in domains.items())
    )
    for domain in domains:
        assert await provider.list_txt(ZoneRef("", ""), f"_acme-challenge.{domain}") == set()


class BatchingRecorder(MemoryProvider):
    """A batching adapter that acts as the ordering user, as a batching CIS would."""

    wants_user_token: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__(MemorySettings())
        self.batches: list[tuple[str | None, list[str]]] = []
        self.lookups: list[str | None] = []

    async def zone_handle(self, zone_name: str, *, ctx: ChangeContext | None = None) -> str:
        self.lookups.append(ctx.user_token.reveal() if ctx and ctx.user_token else None)
        return zone_name

    async def apply(
        self, zone: ZoneRef, changes: Sequence[TxtChange], *, ctx: ChangeContext
    ) -> None:
        token = ctx.user_token.reveal() if ctx.user_token else None
        self.batches.append((token, [c.value for c in changes]))
        for change in changes:
            await self.add_txt(zone, change.fqdn, change.value, change.ttl, ctx=ctx)


async def test_batches_carry_the_user_token_and_never_mix_users() -> None:
    import asyncio

    from receiver.challenge import Action, Challenge
    from receiver.config import DispatchSettings, ZoneSettings
    from receiver.dispatch import Dispatcher

    provider = BatchingRecorder()
    zone = ZoneSettings(name="example.com", provider="batching", options=MemorySettings())
    dispatcher = Dispatcher(
        {zone.provider_key: provider}, DispatchSettings(batch_window_seconds=0.05)
    )
    sent = [("a1", "alice"), ("b1", "bob"), ("a2", "alice"), ("n1", None)]
    await asyncio.gather(
        *(
            dispatcher.apply(
                Challenge(Action.ADD, "example.com", FQDN, value),
                zone,
                request_id=value,
                user_token=Secret(token) if token else None,
            )
            for value, token in sent
        )
    )
    assert provider.batches == [("alice", ["a1", "a2"]), ("bob", ["b1"]), (None, ["n1"])]
    assert provider.lookups == ["alice"]  # the zone is looked up once, as the first user
