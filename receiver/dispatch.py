"""Carry a checked Challenge out through its zone's adapter.

Owns what adapters must not: the zone-handle cache, one-at-a-time changes per record
name (so read-modify-write adapters cannot lose an update inside this process), and
every retry. Transient provider errors are retried with exponential backoff and full
jitter until the deadline; what is still failing then becomes a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Hashable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import structlog

from providers.base import ChangeContext, Provider, Secret, ZoneRef
from providers.errors import (
    ProviderAuthError,
    ProviderConflict,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    ZoneNotFound,
)
from receiver.challenge import Action, Challenge
from receiver.config import DispatchSettings, ZoneSettings
from receiver.errors import Unavailable, UpstreamFailed

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
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._providers = providers
        self._settings = settings
        self._jitter = jitter
        self._zone_refs: dict[tuple[str, str], ZoneRef] = {}
        self._locks = KeyedLocks()

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
        ctx = ChangeContext(
            request_id=request_id, user_token=user_token if provider.wants_user_token else None
        )
        deadline = self._settings.deadline_seconds
        try:
            async with asyncio.timeout(deadline):
                async with self._locks.hold((zone.provider, challenge.fqdn)):
                    await self._with_retries(provider, zone, challenge, ctx, deadline)
        except TimeoutError:
            raise Unavailable(
                f"{zone.provider} did not complete the change within {deadline:g}s",
                code="provider_timeout",
            ) from None

    async def _with_retries(
        self,
        provider: Provider,
        zone: ZoneSettings,
        challenge: Challenge,
        ctx: ChangeContext,
        deadline: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + deadline
        attempt = 0
        while True:
            attempt += 1
            try:
                ref = await self._zone_ref(provider, zone)
                if challenge.action is Action.ADD:
                    await provider.add_txt(ref, challenge.fqdn, challenge.value, zone.ttl, ctx=ctx)
                else:
                    await provider.remove_txt(ref, challenge.fqdn, challenge.value, ctx=ctx)
                return
            except ProviderError as exc:
                if isinstance(exc, ZoneNotFound):
                    self._zone_refs.pop((zone.provider, zone.name), None)
                if not exc.retryable:
                    raise UpstreamFailed(
                        f"the DNS provider ({zone.provider}) refused the change",
                        code=_code(exc),
                        internal=str(exc),
                    ) from exc
                delay = self._delay(exc, attempt)
                if loop.time() + delay >= give_up_at:
                    raise Unavailable(
                        f"the DNS provider ({zone.provider}) is unavailable; try again later",
                        code=_code(exc),
                        internal=f"{exc} (gave up after {attempt} attempts)",
                        retry_after=max(delay, 1.0),
                    ) from exc
                log.warning(
                    "provider_retry",
                    provider=zone.provider,
                    fqdn=challenge.fqdn,
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

    async def _zone_ref(self, provider: Provider, zone: ZoneSettings) -> ZoneRef:
        key = (zone.provider, zone.name)
        ref = self._zone_refs.get(key)
        if ref is None:
            ref = ZoneRef(name=zone.name, handle=await provider.zone_handle(zone.name))
            self._zone_refs[key] = ref
        return ref


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
