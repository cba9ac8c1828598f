"""A provider that fails on cue, for dispatcher tests: the first `failures` write calls
raise the configured contract error (or hang), then it behaves like `memory`."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import ClassVar, Self

from providers import errors
from providers.base import Capabilities, ChangeContext, RateBudget, ZoneRef, setting
from providers.memory import MemoryProvider, MemorySettings

ERRORS = {
    "unavailable": lambda s: errors.ProviderUnavailable("scripted", "HTTP 503 from upstream"),
    "rate_limited": lambda s: errors.ProviderRateLimited(
        "scripted", "HTTP 429", retry_after=s.retry_after
    ),
    "conflict": lambda s: errors.ProviderConflict("scripted", "record set changed"),
    "auth": lambda s: errors.ProviderAuthError(
        "scripted", "AccessDenied for arn:aws:iam::123456789012:user/secret-name"
    ),
    "zone": lambda s: errors.ZoneNotFound("scripted", "no hosted zone example.com"),
    "rejected": lambda s: errors.ProviderRejected("scripted", "invalid TXT"),
    "bug": lambda s: RuntimeError("adapter bug: SDK exception escaped"),
}


@dataclass(frozen=True)
class ScriptedSettings:
    failures: int = setting(default=0, help="how many write calls fail first")
    error: str = setting(default="unavailable", help="which failure: " + ", ".join(ERRORS))
    retry_after: float = setting(default=0.0, help="retry_after for rate_limited")
    hang_seconds: float = setting(default=0.0, help="instead of failing, hang this long")
    failure_rate: float = setting(default=0.0, help="after `failures`, fail at this rate")
    seed: int = setting(default=0, help="random seed for failure_rate")
    fail_value: str = setting(default="", help="every write of this value fails with `error`")


class ScriptedProvider:
    name: ClassVar[str] = "scripted"
    Settings: ClassVar[type[ScriptedSettings]] = ScriptedSettings
    capabilities: ClassVar[Capabilities] = Capabilities()
    wants_user_token: ClassVar[bool] = True
    default_rate_per_second: ClassVar[float | None] = None

    def __init__(self, settings: ScriptedSettings) -> None:
        self.settings = settings
        self.inner = MemoryProvider(MemorySettings())
        self.calls = 0
        self.contexts: list[ChangeContext] = []
        self._random = random.Random(settings.seed)

    @classmethod
    async def open(cls, settings: ScriptedSettings, budget: RateBudget) -> Self:
        return cls(settings)

    async def zone_handle(self, zone_name: str, *, ctx: ChangeContext | None = None) -> str:
        return zone_name

    async def list_txt(self, zone: ZoneRef, fqdn: str) -> frozenset[str]:
        return await self.inner.list_txt(zone, fqdn)

    async def _maybe_fail(self, ctx: ChangeContext, value: str) -> None:
        self.calls += 1
        self.contexts.append(ctx)
        if value == self.settings.fail_value:
            raise ERRORS[self.settings.error](self.settings)
        if self.calls <= self.settings.failures:
            if self.settings.hang_seconds:
                await asyncio.sleep(self.settings.hang_seconds)
            else:
                raise ERRORS[self.settings.error](self.settings)
        elif self._random.random() < self.settings.failure_rate:
            kind = self._random.choice(["unavailable", "rate_limited", "hang"])
            if kind == "hang":
                await asyncio.sleep(60)  # beyond any deadline: the core gives up
            raise ERRORS[kind](self.settings)

    async def add_txt(
        self, zone: ZoneRef, fqdn: str, value: str, ttl: int, *, ctx: ChangeContext
    ) -> None:
        await self._maybe_fail(ctx, value)
        await self.inner.add_txt(zone, fqdn, value, ttl, ctx=ctx)

    async def remove_txt(self, zone: ZoneRef, fqdn: str, value: str, *, ctx: ChangeContext) -> None:
        await self._maybe_fail(ctx, value)
        await self.inner.remove_txt(zone, fqdn, value, ctx=ctx)

    async def aclose(self) -> None:
        return None
