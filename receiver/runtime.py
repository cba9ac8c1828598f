"""The composition root: builds and owns everything a request needs.

`async with Runtime.open(settings) as runtime:` opens the outbound HTTP session, the key
sources and one adapter per distinct (provider, options), and closes them in reverse
order. Every door (aiohttp, Lambda, Cloud Functions, CLI) enters the same Runtime.
Serverless doors pass `http=StdlibGet()` so that aiohttp is never imported there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

from providers.base import Provider, StoreBackedProvider
from providers.errors import ProviderError
from providers.rate_budget import RateBudget
from providers.registry import load_provider_class
from receiver.config import Settings
from receiver.crn import InstanceCrn
from receiver.dispatch import Dispatcher
from receiver.doors.acme_dns import AcmeDns
from receiver.doors.certificate_manager import Verifier
from receiver.errors import ConfigError, Unavailable
from receiver.fetch import USER_AGENT, AiohttpGet, HttpGet
from receiver.journal import Journal
from receiver.keys import FetchedSenderKeys, FileSenderKeys, Jwks, KeyMaterialError, SenderKeys
from receiver.metrics import Metrics, Uncounted
from receiver.policy import Policy
from receiver.propagation import Propagation
from receiver.state import State


@dataclass
class Runtime:
    settings: Settings
    verifier: Verifier
    policy: Policy
    dispatcher: Dispatcher
    providers: dict[tuple[str, Any], Provider]
    metrics: Metrics
    propagation: Propagation
    long_running: bool  # may work on after answering (never on serverless platforms)
    journal: Journal | None
    state: State
    acme_dns: AcmeDns | None = None  # the acme-dns door, when enabled

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
            propagation = Propagation(settings.propagation, metrics)
            stack.push_async_callback(propagation.aclose)
            acme_dns = None
            if state.accounts is not None:
                acme_dns = AcmeDns(settings.acme_dns, state.accounts, metrics)
                stack.callback(acme_dns.close)
            yield cls(
                settings=settings,
                verifier=build_verifier(settings, http),
                policy=Policy(settings.zones),
                dispatcher=Dispatcher(providers, settings.dispatch, metrics=metrics),
                providers=providers,
                metrics=metrics,
                propagation=propagation,
                long_running=long_running,
                journal=state.journal,
                state=state,
                acme_dns=acme_dns,
            )

    async def readiness(self) -> dict[str, str]:
        """Per-check status; the service is ready when every check passed (`passed`)."""
        checks: dict[str, str] = {"config": "ok", **await self.state.readiness()}
        if not self.settings.certificate_manager.enabled:
            return checks
        for crn in self.settings.certificate_manager.allowed_instances:
            checks[f"sender_key:{crn}"] = await _status(
                self.verifier.sender_keys.check(InstanceCrn.parse(crn))
            )
        if self.verifier.jwks is not None:
            checks["user_token_keys"] = await _status(self.verifier.jwks.check())
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


async def _status(check: Any) -> str:
    try:
        await check
    except Unavailable as exc:
        return exc.detail
    return "ok"


def build_verifier(settings: Settings, http: HttpGet) -> Verifier:
    cm = settings.certificate_manager
    sender_keys: SenderKeys
    if cm.public_key_file is not None:
        try:
            sender_keys = FileSenderKeys(
                cm.public_key_file, refetch_interval=cm.key_refetch_interval_seconds
            )
        except (OSError, KeyMaterialError) as exc:
            raise ConfigError([f"certificate_manager.public_key_file: {exc}"]) from None
    else:
        sender_keys = FetchedSenderKeys(
            http,
            cm.public_key_url,
            timeout=cm.key_fetch_timeout_seconds,
            refetch_interval=cm.key_refetch_interval_seconds,
        )
    ut = settings.user_token
    jwks = None
    if ut.verify:
        jwks = Jwks(
            http,
            ut.jwks_url,
            timeout=ut.jwks_fetch_timeout_seconds,
            cache_seconds=ut.jwks_cache_seconds,
            refetch_interval=ut.jwks_refetch_interval_seconds,
        )
    return Verifier(settings=cm, user_token_settings=ut, sender_keys=sender_keys, jwks=jwks)
