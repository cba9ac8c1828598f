"""acme-dns registrations: hashed credentials, bound subdomain, source networks.

They live in the receiver's SQLite file (the `local` store's, or the journal's), so every
process serving the same file sees the same accounts. Like acme-dns, a subdomain keeps its
two most recent values; the table of current values is what decides which one goes.
The store only keeps what it is given: hashing is receiver/passwords.py's job.
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from providers.sqlite import write_transaction
from receiver.sqlite import SqliteFile

VALUES_KEPT = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS acme_dns_accounts (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    subdomain TEXT NOT NULL UNIQUE,
    allow_from TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS acme_dns_values (
    subdomain TEXT NOT NULL,
    value TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (subdomain, value)
);
"""


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


class SqliteAccountStore:
    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._file = SqliteFile(path, _SCHEMA, synchronous="FULL")  # credentials

    async def add(self, account: Account, password_hash: str) -> None:
        allow_from = json.dumps(account.allow_from)
        now = self._clock()
        await self._file.run(
            lambda db: db.execute(
                "INSERT INTO acme_dns_accounts VALUES (?, ?, ?, ?, ?)",
                (account.username, password_hash, account.subdomain, allow_from, now),
            )
        )

    async def find(self, username: str) -> StoredAccount | None:
        row = await self._file.read(
            lambda db: db.execute(
                "SELECT password_hash, subdomain, allow_from FROM acme_dns_accounts"
                " WHERE username = ?",
                (username,),
            ).fetchone()
        )
        if row is None:
            return None
        return StoredAccount(Account(username, row[1], tuple(json.loads(row[2]))), row[0])

    async def count(self) -> int:
        row = await self._file.read(
            lambda db: db.execute("SELECT count(*) FROM acme_dns_accounts").fetchone()
        )
        return int(row[0])

    async def keep_latest(self, subdomain: str, value: str) -> list[str]:
        """Record `value` as the newest at `subdomain`; return the values that fall out."""
        now = self._clock()

        def update(db: sqlite3.Connection) -> list[str]:
            with write_transaction(db):
                db.execute(
                    "INSERT INTO acme_dns_values VALUES (?, ?, ?)"
                    " ON CONFLICT (subdomain, value) DO UPDATE SET updated = excluded.updated",
                    (subdomain, value, now),
                )
                rows = db.execute(
                    "SELECT value FROM acme_dns_values WHERE subdomain = ?"
                    " ORDER BY updated DESC, rowid DESC",
                    (subdomain,),
                ).fetchall()
                evicted = [row[0] for row in rows[VALUES_KEPT:]]
                db.executemany(
                    "DELETE FROM acme_dns_values WHERE subdomain = ? AND value = ?",
                    [(subdomain, v) for v in evicted],
                )
            return evicted

        return await self._file.run(update)

    async def aclose(self) -> None:
        await self._file.aclose()
