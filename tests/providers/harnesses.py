"""One harness per registered provider: how to build it, and how to see what it did.

A harness builds adapters the way production does where it can, and observes the backend
through a path that does not use the adapter under test (for `local`, real DNS queries to
the built-in responder). Adding a provider means adding a harness here and nothing else;
`test_conformance.test_every_provider_has_a_harness` fails until you do.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import dns.asyncquery
import dns.message
import dns.rcode

from providers.base import UNLIMITED, Provider
from providers.local import ChallengeStore, LocalSettings
from providers.memory import MemoryProvider, MemorySettings, MemoryStore, _RecordSet
from providers.registry import load_provider_class
from receiver import dnsserver

ZONE = "conformance.test"


class Harness(Protocol):
    name: str
    zone: str
    settings: Any
    shared_backend: bool  # several processes can write one backend

    async def provider(self) -> Provider:
        """A new adapter instance on the same backend."""
        ...

    async def observe(self, fqdn: str) -> list[str]:
        """Every TXT value at `fqdn`, duplicates included, seen without the adapter."""
        ...

    async def observed_ttl(self, fqdn: str) -> int | None: ...

    async def seed_foreign(self, fqdn: str, value: str) -> None:
        """A value someone else put at the name, behind the adapter's back."""
        ...

    def fault(self) -> contextlib.AbstractAsyncContextManager[type[Exception]] | None:
        """Make the backend fail; yields the contract error expected. None: cannot fail."""
        ...


@dataclass
class MemoryHarness:
    """No backend to observe independently: the shared store is the only view there is."""

    tmp_path: Path
    shared_backend: bool = False
    name: str = "memory"
    zone: str = ZONE
    settings: Any = field(default_factory=MemorySettings)
    store: MemoryStore = field(default_factory=MemoryStore)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[MemoryHarness]:
        yield self

    async def provider(self) -> Provider:
        assert load_provider_class(self.name) is MemoryProvider
        return MemoryProvider(self.settings, store=self.store)

    async def observe(self, fqdn: str) -> list[str]:
        found = self.store.sets.get(fqdn)
        return sorted(found.values) if found else []

    async def observed_ttl(self, fqdn: str) -> int | None:
        found = self.store.sets.get(fqdn)
        return found.ttl if found else None

    async def seed_foreign(self, fqdn: str, value: str) -> None:
        current = self.store.sets.get(fqdn)
        values = (current.values if current else frozenset()) | {value}
        self.store.sets[fqdn] = _RecordSet(current.ttl if current else 300, values)

    def fault(self) -> None:
        return None


@dataclass
class LocalHarness:
    """Observed through the built-in responder over UDP, as a CA's resolver sees it."""

    tmp_path: Path
    shared_backend: bool = True
    name: str = "local"
    zone: str = ZONE
    settings: Any = None
    port: int = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LocalHarness]:
        self.settings = LocalSettings(
            database=self.tmp_path / "conformance.sqlite3", dns_listen="127.0.0.1:0"
        )
        async with dnsserver.running([self.zone], self.settings) as responder:
            self.port = responder.address[1]
            yield self

    async def provider(self) -> Provider:
        return await load_provider_class(self.name).open(self.settings, UNLIMITED)

    async def _query(self, fqdn: str) -> dns.message.Message:
        query = dns.message.make_query(fqdn, "TXT")
        return await dns.asyncquery.tcp(query, "127.0.0.1", port=self.port, timeout=3)

    async def observe(self, fqdn: str) -> list[str]:
        response = await self._query(fqdn)
        assert response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
        return sorted(b"".join(r.strings).decode() for rrset in response.answer for r in rrset)

    async def observed_ttl(self, fqdn: str) -> int | None:
        response = await self._query(fqdn)
        return response.answer[0].ttl if response.answer else None

    async def seed_foreign(self, fqdn: str, value: str) -> None:
        store = ChallengeStore(self.settings.database, lifetime=3600)
        store.add(fqdn, value, 300)
        store.close()

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[type[Exception]]:
        """Another process holds the write lock past the busy timeout."""
        from providers import errors, local

        blocker = sqlite3.connect(self.settings.database, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        saved, local.BUSY_TIMEOUT_MS = local.BUSY_TIMEOUT_MS, 100
        try:
            yield errors.ProviderUnavailable
        finally:
            local.BUSY_TIMEOUT_MS = saved
            blocker.execute("ROLLBACK")
            blocker.close()

    def fault(self) -> contextlib.AbstractAsyncContextManager[type[Exception]]:
        return self._locked()


HARNESSES: dict[str, Callable[[Path], Any]] = {
    "memory": MemoryHarness,
    "local": LocalHarness,
}
