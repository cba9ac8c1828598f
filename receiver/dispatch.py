"""Carry a checked Challenge out through its zone's adapter.

Owns what adapters must not: the zone-handle cache, one-at-a-time changes per record
name (so read-modify-write adapters cannot lose an update inside this process), the
coalescing of changes into batches for adapters that can apply many at once, and every
retry. Transient provider errors are retried with exponential backoff and full jitter
until the deadline; what is still failing then becomes a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import structlog

from providers.base import BatchingProvider, ChangeContext, Provider, TxtChange, ZoneRef
from providers.errors import (
    ProviderAuthError,
    ProviderConflict,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    ZoneNotFound,
)
from providers.secret import Secret
from receiver.challenge import Action, Challenge
from receiver.config import DispatchSettings, ZoneSettings
from receiver.errors import Unavailable, UpstreamFailed
from receiver.metrics import Metrics, Uncounted

if TYPE_CHECKING:
    from receiver.coalescer import Coalescer

log = structlog.get_logger("receiver.dispatch")


class KeyedLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it (no growth)."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class Dispatcher:
    def __init__(
        self,
        providers: Mapping[tuple[str, Any], Provider],
        settings: DispatchSettings,
        *,
        metrics: Metrics | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._providers = providers
        self._metrics: Metrics = metrics or Uncounted()
        self._settings = settings
        self._jitter = jitter
        self._zone_refs: dict[tuple[str, str], ZoneRef] = {}
        self._locks = KeyedLocks()
        self._coalescers: dict[tuple[str, str], Coalescer] = {}  # batching adapters only
        # isinstance() on a runtime-checkable Protocol is slow: decide once per adapter.
        self._batching = {key: isinstance(p, BatchingProvider) for key, p in providers.items()}

    def provider_for(self, zone: ZoneSettings) -> Provider:
        return self._providers[zone.provider_key]

    async def apply(
        self,
        challenge: Challenge,
        zone: ZoneSettings,
        *,
        request_id: str,
        user_token: Secret | None = None,
    ) -> None:
        """Make the provider match the challenge, or raise `UpstreamFailed`/`Unavailable`."""
        provider = self.provider_for(zone)
        change = TxtChange(
            "add" if challenge.action is Action.ADD else "remove",
            challenge.fqdn,
            challenge.value,
            zone.ttl,
        )
        deadline = self._settings.deadline_seconds
        batching = self._batching[zone.provider_key] and self._settings.batch_window_seconds
        if not provider.wants_user_token:
            user_token = None  # no other adapter ever sees it
        try:
            if batching:
                # The batch has its own deadline; waiting also covers the collection window.
                async with asyncio.timeout(deadline + self._settings.batch_window_seconds):
                    await self._coalescer(provider, zone).submit(change, request_id, user_token)
                return
            ctx = ChangeContext(request_id=request_id, user_token=user_token)
            async with asyncio.timeout(deadline):
                async with self._locks.hold((zone.provider, challenge.fqdn)):
                    await self._retrying(
                        provider, zone, ctx, lambda ref: _single(provider, ref, change, ctx)
                    )
        except TimeoutError:
            raise Unavailable(
                f"the DNS provider ({zone.provider}) did not complete the change within"
                f" {deadline:g}s",
                code="provider_timeout",
            ) from None

    async def read(self, zone: ZoneSettings, fqdn: str, *, request_id: str) -> frozenset[str]:
        """Every TXT value at `fqdn`, read like a write is made: through the zone-handle
        cache, retried within the deadline, with the same error translation
        (`UpstreamFailed`/`Unavailable`). The sweep, the probe and DigiCert's commands
        read this way, never from the adapter directly."""
        provider = self.provider_for(zone)
        ctx = ChangeContext(request_id=request_id)
        values: frozenset[str] = frozenset()

        async def list_values(ref: ZoneRef) -> None:
            nonlocal values
            values = await provider.list_txt(ref, fqdn)

        deadline = self._settings.deadline_seconds
        try:
            async with asyncio.timeout(deadline):
                await self._retrying(provider, zone, ctx, list_values)
        except TimeoutError:
            raise Unavailable(
                f"the DNS provider ({zone.provider}) did not answer within {deadline:g}s",
                code="provider_timeout",
            ) from None
        return values

    async def zone_ref(self, zone: ZoneSettings, *, request_id: str) -> ZoneRef:
        """The provider's reference for `zone`, from the cache the writes use."""
        provider = self.provider_for(zone)
        ctx = ChangeContext(request_id=request_id)
        try:
            return await self._zone_ref(provider, zone, ctx)
        except ProviderError as exc:
            raise UpstreamFailed(
                f"the DNS provider ({zone.provider}) cannot find the zone",
                code=_code(exc),
                internal=str(exc),
            ) from exc

    def _coalescer(self, provider: Provider, zone: ZoneSettings) -> Coalescer:
        key = (zone.provider, zone.name)
        coalescer = self._coalescers.get(key)
        if coalescer is None:
            from receiver.coalescer import Coalescer  # only for adapters that batch

            assert isinstance(provider, BatchingProvider)
            batching: BatchingProvider = provider

            async def run(
                changes: list[TxtChange], request_ids: list[str], user_token: Secret | None
            ) -> None:
                ctx = ChangeContext(request_id=",".join(request_ids[:10]), user_token=user_token)
                log.debug("batch", zone=zone.name, changes=len(changes))
                async with asyncio.timeout(self._settings.deadline_seconds):
                    await self._retrying(
                        provider, zone, ctx, lambda ref: batching.apply(ref, changes, ctx=ctx)
                    )

            coalescer = Coalescer(run, self._settings.batch_window_seconds)
            self._coalescers[key] = coalescer
        return coalescer

    async def _retrying(
        self,
        provider: Provider,
        zone: ZoneSettings,
        ctx: ChangeContext,
        operation: Callable[[ZoneRef], Awaitable[None]],
    ) -> None:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._settings.deadline_seconds
        attempt = 0
        while True:
            attempt += 1
            started = loop.time()
            try:
                await operation(await self._zone_ref(provider, zone, ctx))
                self._metrics.provider_call(zone.provider, "ok", loop.time() - started)
                return
            except ProviderError as exc:
                self._metrics.provider_call(zone.provider, _code(exc), loop.time() - started)
                if isinstance(exc, ZoneNotFound):
                    self._zone_refs.pop((zone.provider, zone.name), None)
                if not exc.retryable:
                    self._metrics.provider_error("failure", zone.provider, _code(exc))
                    raise UpstreamFailed(
                        f"the DNS provider ({zone.provider}) refused the change",
                        code=_code(exc),
                        internal=str(exc),
                    ) from exc
                delay = self._delay(exc, attempt)
                if loop.time() + delay >= give_up_at:
                    self._metrics.provider_error("failure", zone.provider, _code(exc))
                    raise Unavailable(
                        f"the DNS provider ({zone.provider}) is unavailable; try again later",
                        code=_code(exc),
                        internal=f"{exc} (gave up after {attempt} attempts)",
                        retry_after=max(delay, 1.0),
                    ) from exc
                self._metrics.provider_error("retry", zone.provider, _code(exc))
                log.warning(
                    "provider_retry",
                    provider=zone.provider,
                    zone=zone.name,
                    attempt=attempt,
                    delay_s=round(delay, 3),
                    error=str(exc),
                )
                await asyncio.sleep(delay)

    def _delay(self, exc: ProviderError, attempt: int) -> float:
        if isinstance(exc, ProviderRateLimited) and exc.retry_after is not None:
            return max(0.0, exc.retry_after)
        ceiling: float = min(
            self._settings.retry_max_seconds,
            self._settings.retry_initial_seconds * 2 ** (attempt - 1),
        )
        return ceiling * self._jitter()

    async def _zone_ref(
        self, provider: Provider, zone: ZoneSettings, ctx: ChangeContext
    ) -> ZoneRef:
        """Cached; single-flight, so a burst of first requests costs one lookup. The
        lookup runs in the change's context (CIS looks zones up as the ordering user)."""
        key = (zone.provider, zone.name)
        ref = self._zone_refs.get(key)
        if ref is None:
            async with self._locks.hold(("zone", *key)):
                ref = self._zone_refs.get(key)
                if ref is None:
                    handle = await provider.zone_handle(zone.name, ctx=ctx)
                    ref = ZoneRef(name=zone.name, handle=handle)
                    self._zone_refs[key] = ref
        return ref


async def _single(provider: Provider, zone: ZoneRef, change: TxtChange, ctx: ChangeContext) -> None:
    if change.action == "add":
        await provider.add_txt(zone, change.fqdn, change.value, change.ttl, ctx=ctx)
    else:
        await provider.remove_txt(zone, change.fqdn, change.value, ctx=ctx)


ERROR_CODES: dict[type[ProviderError], str] = {
    ProviderAuthError: "provider_auth_failed",
    ZoneNotFound: "provider_zone_not_found",
    ProviderRejected: "provider_rejected",
    ProviderConflict: "provider_conflict",
    ProviderRateLimited: "provider_rate_limited",
    ProviderUnavailable: "provider_unavailable",
}


def _code(exc: ProviderError) -> str:
    for kind in type(exc).__mro__:
        if kind in ERROR_CODES:
            return ERROR_CODES[kind]
    return "provider_failed"
