"""An in-process provider: records live in this process only.

It behaves like a remote read-modify-write API (read the set, wait, write the whole set
back), so it exercises the core's per-name serialisation honestly; `latency_ms` sets the
wait and serves simulations and benchmarks.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar, Self

from providers.base import Capabilities, ChangeContext, ZoneRef, setting
from providers.rate_budget import RateBudget


@dataclass(frozen=True)
class MemorySettings:
    """Options of the in-process provider (tests, demos, benchmarks)."""

    latency_ms: int = setting(default=0, help="Simulated API latency per call, in milliseconds.")


@dataclass(frozen=True, slots=True)
class _RecordSet:
    """A tuple and slots: a name with one value costs ~170 bytes, not ~380 (a frozenset
    and an instance dict), which is what a burst of 10,000 values keeps in memory."""

    ttl: int
    values: tuple[str, ...]


class MemoryStore:
    """The record sets; separate from the adapter so two adapters can share one store."""

    def __init__(self) -> None:
        self.sets: dict[str, _RecordSet] = {}


class MemoryProvider:
    name: ClassVar[str] = "memory"
    Settings: ClassVar[type[MemorySettings]] = MemorySettings
    capabilities: ClassVar[Capabilities] = Capabilities(publishes_to_dns=False)
    wants_user_token: ClassVar[bool] = False
    default_rate_per_second: ClassVar[float | None] = None

    def __init__(self, settings: MemorySettings, store: MemoryStore | None = None) -> None:
        self._latency = settings.latency_ms / 1000
        self._sets = (store or MemoryStore()).sets

    @classmethod
    async def open(cls, settings: MemorySettings, budget: RateBudget) -> Self:
        return cls(settings)

    async def zone_handle(self, zone_name: str, *, ctx: ChangeContext | None = None) -> str:
        return zone_name

    async def list_txt(self, zone: ZoneRef, fqdn: str) -> frozenset[str]:
        await self._api_call()
        found = self._sets.get(fqdn)
        return frozenset(found.values) if found else frozenset()

    async def add_txt(
        self, zone: ZoneRef, fqdn: str, value: str, ttl: int, *, ctx: ChangeContext
    ) -> None:
        current = self._sets.get(fqdn)
        await self._api_call()
        if current is None:
            self._sets[fqdn] = _RecordSet(ttl, (value,))
        elif value not in current.values:
            self._sets[fqdn] = _RecordSet(current.ttl, (*current.values, value))

    async def remove_txt(self, zone: ZoneRef, fqdn: str, value: str, *, ctx: ChangeContext) -> None:
        current = self._sets.get(fqdn)
        await self._api_call()
        if current is None or value not in current.values:
            return
        remaining = tuple(v for v in current.values if v != value)
        if remaining:
            self._sets[fqdn] = _RecordSet(current.ttl, remaining)
        else:
            del self._sets[fqdn]

    async def aclose(self) -> None:
        return None

    def ttl_of(self, fqdn: str) -> int | None:
        """The TTL of the record set at `fqdn` (for observers in tests)."""
        found = self._sets.get(fqdn)
        return found.ttl if found else None

    async def _api_call(self) -> None:
        # Always yield, as a network call would, so interleavings are real even at 0 ms.
        await asyncio.sleep(self._latency)
