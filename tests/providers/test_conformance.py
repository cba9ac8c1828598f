"""The provider conformance suite: the executable definition of a correct adapter.

Every registered provider runs every test here, with one tier and no opt-outs. Results
are checked through the harness's independent observer, never through the adapter alone.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from providers.base import Capabilities, ChangeContext, Provider, ZoneRef
from providers.errors import ProviderConflict, ProviderError
from providers.registry import provider_names
from receiver import signing
from receiver.challenge import Action, Challenge, challenge_record_name
from receiver.config import DispatchSettings, ZoneSettings
from receiver.dispatch import Dispatcher

from .harnesses import HARNESSES, Harness

CTX = ChangeContext(request_id="conformance")
FOREIGN = "v=spf1 -all (not ours)"
_names = itertools.count()


def test_every_provider_has_a_harness() -> None:
    assert set(provider_names()) == {key.split("+")[0] for key in HARNESSES}


@pytest.fixture(params=sorted(HARNESSES))
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    async with HARNESSES[request.param](request, tmp_path).running() as running:
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


async def test_backend_failures_surface_as_contract_errors(harness: Harness, fqdn: str) -> None:
    fault = harness.fault()
    if fault is None:
        pytest.skip(f"{harness.name} has no backend that can fail")
    async with fault as expected:
        provider = await harness.provider()
        try:
            for operation in (
                lambda zone: provider.add_txt(zone, fqdn, value(), 60, ctx=CTX),
                lambda zone: provider.remove_txt(zone, fqdn, value(), ctx=CTX),
            ):
                with pytest.raises(ProviderError) as caught:
                    await operation(ZoneRef(harness.zone, harness.zone))
                assert isinstance(caught.value, expected)
                assert caught.value.provider == harness.name
        finally:
            await provider.aclose()


def test_settings_are_declared(harness: Harness) -> None:
    from providers.registry import load_provider_class

    cls: Any = load_provider_class(harness.name)
    assert cls.name == harness.name
    assert isinstance(cls.wants_user_token, bool)
    assert isinstance(cls.capabilities, Capabilities)
    import dataclasses

    for fld in dataclasses.fields(cls.Settings):
        assert fld.metadata.get("help"), f"{harness.name}.{fld.name} has no help text"
