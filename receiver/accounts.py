"""acme-dns registrations: hashed credentials, bound subdomain, source networks.

They live in the receiver's SQLite file (the `local` store's, or the journal's), so every
process serving the same file sees the same accounts. Like acme-dns, a subdomain keeps its
two most recent values; the table of current values is what decides which one goes.
The store only keeps what it is given: hashing is receiver/passwords.py's job.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

VALUES_KEPT = 2


class InvalidNetwork(ValueError):
    """An allow-from entry that is not an IP network in CIDR notation."""


@dataclass(frozen=True)
class Account:
    username: str
    subdomain: str
    allow_from: tuple[str, ...]

    def allows(self, remote: str | None) -> bool:
        if not self.allow_from:
            return True
        if remote is None:
            return False
        try:
            address = ipaddress.ip_address(remote)
        except ValueError:
            return False
        # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; Go's IPNet.Contains
        # matches those against IPv4 networks, and so do we.
        mapped = getattr(address, "ipv4_mapped", None)
        candidates = (address,) if mapped is None else (address, mapped)
        return any(
            candidate in ipaddress.ip_network(net)
            for net in self.allow_from
            for candidate in candidates
        )


@dataclass(frozen=True)
class StoredAccount:
    account: Account
    password_hash: str


def networks(entries: Sequence[str]) -> tuple[str, ...]:
    """Normalised networks; brackets around IPv6 addresses are dropped, as acme-dns does."""
    found = []
    for entry in entries:
        try:
            found.append(
                str(ipaddress.ip_network(entry.replace("[", "").replace("]", ""), strict=False))
            )
        except ValueError:
            raise InvalidNetwork(f"{entry!r} is not a network in CIDR notation") from None
    return tuple(found)


class AccountStore(Protocol):
    """Where accounts live: `SqliteAccountStore` (one host) or PostgreSQL (shared)."""

    async def add(self, account: Account, password_hash: str) -> None: ...

    async def find(self, username: str) -> StoredAccount | None: ...

    async def count(self) -> int: ...

    async def keep_latest(self, subdomain: str, value: str) -> list[str]:
        """Record `value` as the newest at `subdomain`; return the values that fall out."""
        ...

    async def aclose(self) -> None: ...
