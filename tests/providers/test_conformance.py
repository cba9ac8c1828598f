"""The provider conformance suite: the executable definition of a correct adapter.

Every registered provider runs every test here, with one tier and no opt-outs. Results
are checked through the harness's independent observer, never through the adapter alone.
Each harness declares the faults its backend can inject (`harnesses.Fault`); every
declared fault runs against the adapter directly (the contract error it must surface
as) and through the core (retried to the right end, or final and never retried).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from providers.base import Capabilities, ChangeContext, Provider, ZoneRef
from providers.errors import ProviderConflict, ProviderError
from providers.rate_budget import RateBudget
from providers.registry import provider_names
from providers.secret import Secret
from receiver import signing
from receiver.challenge import Action, Challenge, challenge_record_name
from receiver.config import DispatchSettings, ZoneSettings
from receiver.dispatch import Dispatcher
from receiver.errors import Unavailable, UpstreamFailed
from receiver.metrics import Uncounted

from .harnesses import HARNESSES, Fault, Harness

CTX = ChangeContext(request_id="conformance")
FOREIGN = "v=spf1 -all (not ours)"
_names = itertools.count()
# Faults the core retries; AUTH is final; MIXED has a test of its own.
TRANSIENT = [f for f in Fault if f not in (Fault.AUTH, Fault.MIXED)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test runs for every harness; a test taking `fault` for every fault its
    harness declares (of those it names in a `faults` mark); `api` tests only where the
    adapter makes API calls, `spellings` tests where TXT data has presentation form."""
    if "harness" not in metafunc.fixturenames:
        return
    keys = sorted(HARNESSES)
    if metafunc.definition.get_closest_marker("api"):
        keys = [k for k in keys if HARNESSES[k].cls.has_api]
    if metafunc.definition.get_closest_marker("spellings"):
        keys = [k for k in keys if HARNESSES[k].cls.keeps_spellings]
    if "fault" not in metafunc.fixturenames:
        metafunc.parametrize("harness", keys, indirect=True)
        return
    marker = metafunc.definition.get_closest_marker("faults")
    wanted = marker.args[0] if marker else list(Fault)
    pairs = [(k, f) for k in keys for f in wanted if f in HARNESSES[k].cls.faults]
    metafunc.parametrize(
        ("harness", "fault"),
        pairs,
        indirect=["harness"],
        ids=[f"{k}-{f.name.lower()}" for k, f in pairs],
    )


def test_every_provider_has_a_harness() -> None:
    assert set(provider_names()) == {key.split("+")[0] for key in HARNESSES}


@pytest.fixture
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    async with HARNESSES[request.param].build(request, tmp_path).running() as running:
        yield running


@pytest.fixture
async def adapter(harness: Harness) -> AsyncIterator[Provider]:
    provider = await harness.provider()
    yield provider
    await provider.aclose()


@pytest.fixture
def fqdn(harness: Harness) -> str:
    """A fresh name per test, a few labels below the apex."""
    return f"_acme-challenge.n{next(_names)}.deep.{harness.zone}"


async def zone_ref(adapter: Provider, harness: Harness) -> ZoneRef:
    return ZoneRef(harness.zone, await adapter.zone_handle(harness.zone))


def value() -> str:
    return signing.challenge_value()


async def _conflicts_retried(operation: Callable[[], Awaitable[None]]) -> None:
    """`ProviderConflict` means "re-read and retry"; the core does that, so the suite does."""
    for _ in range(10):
        try:
            await operation()
            return
        except ProviderConflict:
            await asyncio.sleep(0)
    raise AssertionError("still conflicting after 10 attempts")


async def add(adapter: Provider, zone: ZoneRef, fqdn: str, v: str, ttl: int = 60) -> None:
    await _conflicts_retried(lambda: adapter.add_txt(zone, fqdn, v, ttl, ctx=CTX))


async def remove(adapter: Provider, zone: ZoneRef, fqdn: str, v: str) -> None:
    await _conflicts_retried(lambda: adapter.remove_txt(zone, fqdn, v, ctx=CTX))


async def test_add_is_visible(harness: Harness, adapter: Provider, fqdn: str) -> None:
    v = value()
    await add(adapter, await zone_ref(adapter, harness), fqdn, v, 60)
    assert await harness.observe(fqdn) == [v]
    assert await adapter.list_txt(await zone_ref(adapter, harness), fqdn) == {v}


async def test_two_values_share_a_name(harness: Harness, adapter: Provider, fqdn: str) -> None:
    zone = await zone_ref(adapter, harness)
    one, two = value(), value()
    await add(adapter, zone, fqdn, one, 60)
    await add(adapter, zone, fqdn, two, 60)
    assert await harness.observe(fqdn) == sorted([one, two])


async def test_adding_twice_keeps_one_copy(harness: Harness, adapter: Provider, fqdn: str) -> None:
    zone = await zone_ref(adapter, harness)
    v = value()
    await add(adapter, zone, fqdn, v, 60)
    await add(adapter, zone, fqdn, v, 60)
    assert await harness.observe(fqdn) == [v]


async def test_removing_one_keeps_the_other(harness: Harness, adapter: Provider, fqdn: str) -> None:
    zone = await zone_ref(adapter, harness)
    one, two = value(), value()
    await add(adapter, zone, fqdn, one, 60)
    await add(adapter, zone, fqdn, two, 60)
    await remove(adapter, zone, fqdn, two)
    assert await harness.observe(fqdn) == [one]


async def test_removing_the_absent_is_a_no_op(
    harness: Harness, adapter: Provider, fqdn: str
) -> None:
    zone = await zone_ref(adapter, harness)
    await remove(adapter, zone, fqdn, value())  # no such name
    v = value()
    await add(adapter, zone, fqdn, v, 60)
    await remove(adapter, zone, fqdn, value())  # no such value
    assert await harness.observe(fqdn) == [v]


async def test_removing_the_last_value_removes_the_name(
    harness: Harness, adapter: Provider, fqdn: str
) -> None:
    zone = await zone_ref(adapter, harness)
    v = value()
    await add(adapter, zone, fqdn, v, 60)
    await remove(adapter, zone, fqdn, v)
    assert await harness.observe(fqdn) == []
    assert await harness.observed_ttl(fqdn) is None
    assert await adapter.list_txt(zone, fqdn) == frozenset()


async def test_ttl_is_honoured(harness: Harness, adapter: Provider, fqdn: str) -> None:
    await add(adapter, await zone_ref(adapter, harness), fqdn, value(), 123)
    assert await harness.observed_ttl(fqdn) == 123


async def test_foreign_values_are_never_touched(
    harness: Harness, adapter: Provider, fqdn: str
) -> None:
    zone = await zone_ref(adapter, harness)
    await harness.seed_foreign(fqdn, FOREIGN)
    v = value()
    await add(adapter, zone, fqdn, v, 60)
    assert await harness.observe(fqdn) == sorted([FOREIGN, v])
    await remove(adapter, zone, fqdn, v)
    assert await harness.observe(fqdn) == [FOREIGN]


async def test_a_fresh_instance_removes_what_another_added(harness: Harness, fqdn: str) -> None:
    first = await harness.provider()
    v, w = value(), value()
    await add(first, await zone_ref(first, harness), fqdn, v, 60)
    await add(first, await zone_ref(first, harness), fqdn, w, 60)
    await first.aclose()
    second = await harness.provider()
    try:
        await remove(second, await zone_ref(second, harness), fqdn, v)
        assert await harness.observe(fqdn) == [w]
    finally:
        await second.aclose()


async def test_value_characters_round_trip(harness: Harness, adapter: Provider, fqdn: str) -> None:
    v = "-_" + "aZ09" * 9 + "_-xyz"
    assert len(v) == 43
    await add(adapter, await zone_ref(adapter, harness), fqdn, v, 60)
    assert await harness.observe(fqdn) == [v]


async def test_aclose_twice_is_fine(harness: Harness) -> None:
    provider = await harness.provider()
    await provider.aclose()
    await provider.aclose()


# --- through the core: canonical names and concurrency --------------------------------


def dispatcher_for(harness: Harness, adapter: Provider) -> tuple[Dispatcher, ZoneSettings]:
    zone = ZoneSettings(name=harness.zone, provider=harness.name, ttl=60, options=harness.settings)
    return Dispatcher({zone.provider_key: adapter}, DispatchSettings()), zone


@pytest.mark.parametrize("spelling", ["upper", "trailing_dot", "unicode", "punycode"])
async def test_the_adapter_sees_canonical_names(
    harness: Harness, adapter: Provider, spelling: str
) -> None:
    label = f"bücher{next(_names)}"
    domain = {
        "upper": f"WWW.{label.upper()}.{harness.zone.upper()}",
        "trailing_dot": f"www.{label}.{harness.zone}.",
        "unicode": f"www.{label}.{harness.zone}",
        "punycode": f"www.{label.encode('idna').decode()}.{harness.zone}",
    }[spelling]
    _, fqdn = challenge_record_name(domain, "_acme-challenge")
    expected = f"_acme-challenge.www.{label.encode('idna').decode()}.{harness.zone}"
    assert fqdn == expected
    dispatcher, zone = dispatcher_for(harness, adapter)
    v = value()
    await dispatcher.apply(Challenge(Action.ADD, domain, fqdn, v), zone, request_id="c")
    assert await harness.observe(expected) == [v]


async def test_twenty_concurrent_adds_and_removes(
    harness: Harness, adapter: Provider, fqdn: str
) -> None:
    dispatcher, zone = dispatcher_for(harness, adapter)
    values = [value() for _ in range(20)]

    async def apply(action: Action, v: str) -> None:
        await dispatcher.apply(Challenge(action, "d", fqdn, v), zone, request_id="c")

    await asyncio.gather(*(apply(Action.ADD, v) for v in values))
    assert await harness.observe(fqdn) == sorted(values)
    await asyncio.gather(*(apply(Action.REMOVE, v) for v in values))
    assert await harness.observe(fqdn) == []


async def test_concurrent_writers_in_separate_adapters(harness: Harness, fqdn: str) -> None:
    """Two adapters (as two processes would have) write the same name at once."""
    if not harness.shared_backend:
        pytest.skip(f"{harness.name} lives in one process: only the core's lock applies")
    adapters = [await harness.provider() for _ in range(2)]
    try:
        values = [value() for _ in range(10)]
        zone_refs = [await zone_ref(a, harness) for a in adapters]
        await asyncio.gather(
            *(add(adapters[i % 2], zone_refs[i % 2], fqdn, v) for i, v in enumerate(values))
        )
        assert await harness.observe(fqdn) == sorted(values)
    finally:
        for a in adapters:
            await a.aclose()


def test_settings_are_declared(harness: Harness) -> None:
    from providers.registry import load_provider_class

    cls: Any = load_provider_class(harness.name)
    assert cls.name == harness.name
    assert isinstance(cls.wants_user_token, bool)
    assert isinstance(cls.capabilities, Capabilities)
    for fld in dataclasses.fields(cls.Settings):
        assert fld.metadata.get("help"), f"{harness.name}.{fld.name} has no help text"


async def test_a_change_behind_the_adapters_back_is_never_lost(
    harness: Harness, adapter: Provider, fqdn: str
) -> None:
    """Someone else writes the name between two of the adapter's writes: whatever the
    adapter remembers is stale now, and it must conflict or re-read, never overwrite."""
    zone = await zone_ref(adapter, harness)
    ours, later = value(), value()
    await add(adapter, zone, fqdn, ours)
    await harness.seed_foreign(fqdn, FOREIGN)
    await add(adapter, zone, fqdn, later)
    await remove(adapter, zone, fqdn, ours)
    assert await harness.observe(fqdn) == sorted([FOREIGN, later])


@pytest.mark.spellings
async def test_a_value_in_another_spelling_is_still_ours(
    harness: Harness, adapter: Provider, fqdn: str
) -> None:
    """Another tool may split a value into several strings or escape a character: it is
    the same value, listed as such and removed by its removal."""
    zone = await zone_ref(adapter, harness)
    ours = value()
    await harness.seed_spelled(fqdn, ours)
    await harness.seed_foreign(fqdn, FOREIGN)
    assert await adapter.list_txt(zone, fqdn) == {ours, FOREIGN}
    await remove(adapter, zone, fqdn, ours)
    assert await harness.observe(fqdn) == [FOREIGN]


# --- faults: what each backend can do wrong, against every adapter ---------------------


def _secrets(settings: Any) -> list[str]:
    return [
        getattr(settings, f.name).reveal()
        for f in dataclasses.fields(settings)
        if isinstance(getattr(settings, f.name), Secret)
    ]


@pytest.mark.faults([f for f in Fault if f is not Fault.MIXED])
async def test_a_fault_surfaces_as_its_contract_error(
    harness: Harness, fqdn: str, fault: Fault
) -> None:
    healthy = await harness.provider()
    zone = await zone_ref(healthy, harness)
    present = value()
    await add(healthy, zone, fqdn, present)  # so that a removal has something to write
    await healthy.aclose()
    async with harness.inject(fault) as injected:
        provider = await harness.provider()
        try:
            for operation in (
                lambda: provider.add_txt(zone, fqdn, value(), 60, ctx=CTX),
                lambda: provider.remove_txt(zone, fqdn, present, ctx=CTX),
            ):
                error = await _first_error(operation, retry_conflicts=fault is not Fault.CONFLICT)
                assert isinstance(error, injected.error), repr(error)
                assert error.provider == harness.name
                assert not any(s in f"{error} {error!r}" for s in _secrets(harness.settings))
                if fault is Fault.THROTTLED:
                    assert getattr(error, "retry_after", None) == injected.retry_after
                elif fault is Fault.THROTTLED_UNTIL:
                    assert injected.retry_after is not None
                    assert getattr(error, "retry_after", None) == pytest.approx(
                        injected.retry_after, abs=1.5
                    )
        finally:
            await provider.aclose()


async def _first_error(
    operation: Callable[[], Awaitable[None]], *, retry_conflicts: bool
) -> ProviderError:
    """The error `operation` fails with, after the re-reads a conflict asks for (an
    adapter on a fresh process guesses, and a wrong guess is a conflict first)."""
    for _ in range(5):
        with pytest.raises(ProviderError) as caught:
            await operation()
        if not (retry_conflicts and isinstance(caught.value, ProviderConflict)):
            return caught.value
    raise AssertionError("still conflicting after 5 attempts")


class Attempts(Uncounted):
    """The dispatcher's attempts at a change, each with when it ended."""

    def __init__(self) -> None:
        self.results: list[tuple[str, float]] = []

    def provider_call(self, provider: str, result: str, seconds: float) -> None:
        self.results.append((result, time.monotonic()))

    def failed(self) -> list[float]:
        return [at for result, at in self.results if result != "ok"]

    async def until_failed(self) -> None:
        async with asyncio.timeout(10):
            while not self.failed():  # noqa: ASYNC110
                await asyncio.sleep(0.01)


def _core(adapter: Provider, harness: Harness, metrics: Attempts, **options: Any) -> Any:
    zone = ZoneSettings(name=harness.zone, provider=harness.name, ttl=60, options=harness.settings)
    settings = DispatchSettings(
        **{
            "deadline_seconds": 20,
            "retry_initial_seconds": 0.05,
            "retry_max_seconds": 0.2,
            "batch_window_seconds": 0,
            **options,
        }
    )
    return Dispatcher({zone.provider_key: adapter}, settings, metrics=metrics), zone


@pytest.mark.faults(TRANSIENT)
async def test_the_core_rides_out_a_transient_fault(
    harness: Harness, fqdn: str, fault: Fault
) -> None:
    """The fault lasts until the core has seen it fail; the core's retries end with
    exactly the right values, a foreign one untouched, and a throttled change waits as
    long as the provider said."""
    await harness.seed_foreign(fqdn, FOREIGN)
    wait = {Fault.THROTTLED: 1.0, Fault.THROTTLED_UNTIL: 2.0}.get(fault, 0.0)
    ours = value()
    for action, expected in ((Action.ADD, [FOREIGN, ours]), (Action.REMOVE, [FOREIGN])):
        metrics = Attempts()
        async with harness.inject(fault, wait=wait) as injected:
            adapter = await harness.provider()
            dispatcher, zone = _core(adapter, harness, metrics)
            change = Challenge(action, harness.zone, fqdn, ours)
            task = asyncio.create_task(dispatcher.apply(change, zone, request_id="fault"))
            await metrics.until_failed()
        try:
            await task
        finally:
            await adapter.aclose()
        assert await harness.observe(fqdn) == sorted(expected)
        assert metrics.results[-1][0] == "ok"
        if injected.retry_after is not None:  # honoured, not the 50-200 ms backoff
            first_failure, success = metrics.failed()[0], metrics.results[-1][1]
            assert success - first_failure >= injected.retry_after - 1.05


@pytest.mark.faults([Fault.AUTH])
async def test_a_final_fault_is_never_retried(harness: Harness, fqdn: str, fault: Fault) -> None:
    metrics = Attempts()
    async with harness.inject(fault):
        adapter = await harness.provider()
        try:
            dispatcher, zone = _core(adapter, harness, metrics)
            with pytest.raises(UpstreamFailed) as caught:
                await dispatcher.apply(
                    Challenge(Action.ADD, harness.zone, fqdn, value()), zone, request_id="auth"
                )
        finally:
            await adapter.aclose()
    assert caught.value.code == "provider_auth_failed"
    assert harness.name in str(caught.value)
    assert len(metrics.results) == 1  # one attempt: final errors are not retried
    assert await harness.observe(fqdn) == []


@pytest.mark.faults([Fault.MIXED])
async def test_mixed_transient_failures_still_end_right(
    harness: Harness, fqdn: str, fault: Fault
) -> None:
    """A share of all calls fail (throttling, 5xx, some after taking effect), for many
    changes at once, batched where the adapter batches. A sender that retries what it
    is answered 503 ends with exactly the right values, then with only the foreign one."""
    names = [f"_acme-challenge.h{i}.{next(_names)}.{harness.zone}" for i in range(8)]
    shared = fqdn  # three values and a foreign one at one name
    await harness.seed_foreign(shared, FOREIGN)
    changes = [(name, value()) for name in names] + [(shared, value()) for _ in range(3)]
    metrics = Attempts()
    async with harness.inject(fault):
        adapter = await harness.provider()
        dispatcher, zone = _core(adapter, harness, metrics, batch_window_seconds=0.02)

        async def send(action: Action, name: str, v: str) -> None:
            for _ in range(5):  # Certificate Manager retries what we answer 503
                try:
                    await dispatcher.apply(Challenge(action, "d", name, v), zone, request_id="m")
                    return
                except Unavailable:
                    continue
            raise AssertionError(f"{action} {name} still failing")

        try:
            await asyncio.gather(*(send(Action.ADD, n, v) for n, v in changes))
            for name in names:
                assert await harness.observe(name) == [v for n, v in changes if n == name]
            assert await harness.observe(shared) == sorted(
                [FOREIGN, *(v for n, v in changes if n == shared)]
            )
            await asyncio.gather(*(send(Action.REMOVE, n, v) for n, v in changes))
        finally:
            await adapter.aclose()
    assert [await harness.observe(name) for name in names] == [[] for _ in names]
    assert await harness.observe(shared) == [FOREIGN]
    assert len(metrics.failed()) >= 3  # the faults really happened


class CountingBudget(RateBudget):
    def __init__(self) -> None:
        super().__init__(None)
        self.taken = 0

    def reserve(self) -> float:
        self.taken += 1
        return 0.0


@pytest.mark.api
async def test_every_api_call_draws_from_the_budget(harness: Harness, fqdn: str) -> None:
    budget = CountingBudget()
    provider = await harness.provider(budget)
    before = harness.api_calls()
    try:
        zone = await zone_ref(provider, harness)
        one, two = value(), value()
        await provider.add_txt(zone, fqdn, one, 60, ctx=CTX)
        await provider.add_txt(zone, fqdn, two, 60, ctx=CTX)
        assert await provider.list_txt(zone, fqdn) == {one, two}
        await provider.remove_txt(zone, fqdn, one, ctx=CTX)
        await provider.remove_txt(zone, fqdn, two, ctx=CTX)
    finally:
        await provider.aclose()
    assert budget.taken == harness.api_calls() - before > 0
