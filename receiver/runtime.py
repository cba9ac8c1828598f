"""The services every door and command shares, built and owned in one place.

`async with Runtime.open(settings) as runtime:` opens the outbound HTTP session, the
state (journal, accounts, records) and one adapter per distinct (provider, options), and
closes them in reverse order. Every host (aiohttp, Lambda, Cloud Functions, CLI) enters
the same Runtime. Serverless hosts pass `http=StdlibGet()` so that aiohttp is never
imported there. The doors are opened on top of it by `receiver.doors.open_doors`: the
Runtime holds them (`doors`) without importing any.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from providers.base import Provider, StoreBackedProvider
from providers.errors import ProviderError
from providers.rate_budget import RateBudget
from providers.registry import load_provider_class
from receiver.config import Settings
from receiver.dispatch import Dispatcher
from receiver.door import Doors
from receiver.errors import ConfigError
from receiver.fetch import USER_AGENT, AiohttpGet, HttpGet
from receiver.metrics import Metrics, Uncounted
from receiver.policy import Policy
from receiver.state import State

if TYPE_CHECKING:
    from receiver.challenge import Challenge
    from receiver.journal import Journal
    from receiver.propagation import Propagation


@dataclass(eq=False)  # a service, equal only to itself
class Runtime:
    """What every door and host works with, built once per process (or warm function)."""

    settings: Settings
    http: HttpGet  # key documents and JWKS, fetched by the doors that verify
    policy: Policy
    dispatcher: Dispatcher
    providers: dict[tuple[str, Any], Provider]
    metrics: Metrics
    long_running: bool  # may work on after answering (never on serverless platforms)
    journal: Journal | None
    state: State
    doors: Doors = field(default_factory=Doors)  # set by `receiver.doors.open_doors`
    _propagation: Propagation | None = field(default=None, init=False, repr=False)

    @property
    def propagation(self) -> Propagation:
        """Started on first use: a function whose doors never check never loads it."""
        if self._propagation is None:
            from receiver.propagation import Propagation

            self._propagation = Propagation(self.settings.propagation, self.metrics)
        return self._propagation

    def forget_check(self, challenge: Challenge) -> None:
        """A value being removed is never checked or written again (`Propagation.forget`);
        nothing to do when no check was ever started."""
        if self._propagation is not None:
            self._propagation.forget(challenge)

    async def _close_propagation(self) -> None:
        if self._propagation is not None:
            await self._propagation.aclose()

    @classmethod
    @asynccontextmanager
    async def open(
        cls, settings: Settings, *, long_running: bool = False, http: HttpGet | None = None
    ) -> AsyncIterator[Runtime]:
        """`http`: how key documents are fetched (default: a pooled aiohttp session)."""
        async with AsyncExitStack() as stack:
            if http is None:
                import aiohttp

                session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
                stack.push_async_callback(session.close)
                http = AiohttpGet(session)
            state = await stack.enter_async_context(State.open(settings))
            providers: dict[tuple[str, Any], Provider] = {}
            for zone in settings.zones:
                if zone.cname_to is None and zone.provider_key not in providers:
                    adapter_class = load_provider_class(zone.provider)
                    rate = settings.dispatch.rate_limits.get(
                        zone.provider, adapter_class.default_rate_per_second
                    )
                    shared_records = (
                        state.local_records(zone.options)
                        if adapter_class.capabilities.local_store
                        else None
                    )
                    # One budget per account: zones with equal options share the adapter.
                    adapter: Provider
                    try:
                        if shared_records is not None:
                            store_backed = cast(type[StoreBackedProvider], adapter_class)
                            adapter = store_backed.on_store(zone.options, shared_records)
                        else:
                            adapter = await adapter_class.open(zone.options, RateBudget(rate))
                    except ProviderError as exc:  # unusable options found on opening
                        index = settings.zones.index(zone)
                        raise ConfigError([f"zones[{index}].options: {exc}"]) from None
                    stack.push_async_callback(adapter.aclose)
                    providers[zone.provider_key] = adapter
            metrics = _metrics(long_running)
            runtime = cls(
                settings=settings,
                http=http,
                policy=Policy(settings.zones),
                dispatcher=Dispatcher(providers, settings.dispatch, metrics=metrics),
                providers=providers,
                metrics=metrics,
                long_running=long_running,
                journal=state.journal,
                state=state,
            )
            stack.push_async_callback(runtime._close_propagation)
            yield runtime

    async def readiness(self) -> dict[str, str]:
        """Per-check status; the service is ready when every check passed (`passed`)."""
        checks: dict[str, str] = {"config": "ok", **await self.state.readiness()}
        for door in self.doors.all:
            checks.update(await door.readiness())
        return checks


def passed(check: str) -> bool:
    """A readiness value that says "ok", with or without detail ("ok (schema version 1)")."""
    return check == "ok" or check.startswith("ok (")


def _metrics(long_running: bool) -> Metrics:
    """Prometheus only where `/metrics` is served: the long-running server."""
    if not long_running:
        return Uncounted()
    from receiver.prometheus import PrometheusMetrics

    return PrometheusMetrics.create()
