"""acme-dns registrations: credentials (scrypt-hashed), bound subdomain, source networks.

They live in the receiver's SQLite file (the `local` store's, or the journal's), so every
process serving the same file sees the same accounts. Like acme-dns, a subdomain keeps its
two most recent values; the table of current values is what decides which one goes.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import json
import secrets
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from receiver.sqlite import SqliteFile

VALUES_KEPT = 2
# scrypt cost: 16 MiB and ~40 ms per check; parameters are stored with every hash.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
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
class Registration:
    account: Account
    password: str  # shown once, never stored


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


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT, dklen=32)
    n, r, p = _SCRYPT["n"], _SCRYPT["r"], _SCRYPT["p"]
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def password_matches(password: str, stored: str) -> bool:
    _, n, r, p, salt, digest = stored.split("$")
    candidate = hashlib.scrypt(
        password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
    )
    return hmac.compare_digest(candidate, bytes.fromhex(digest))


@functools.cache
def _decoy() -> str:
    """Checked when the user is unknown, so a miss costs as long as a wrong password.

    Made on first use, not at import: one scrypt is ~40 ms of cold start for every door.
    """
    return hash_password(secrets.token_urlsafe(16))


class AccountStore:
    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._file = SqliteFile(path, _SCHEMA, synchronous="FULL")  # credentials

    async def register(self, allow_from: tuple[str, ...]) -> Registration:
        account = Account(str(uuid.uuid4()), str(uuid.uuid4()), allow_from)
        password = secrets.token_urlsafe(30)  # 40 characters, as acme-dns issues
        hashed = await asyncio.to_thread(hash_password, password)
        now = self._clock()
        await self._file.run(
            lambda db: db.execute(
                "INSERT INTO acme_dns_accounts VALUES (?, ?, ?, ?, ?)",
                (account.username, hashed, account.subdomain, json.dumps(allow_from), now),
            )
        )
        return Registration(account, password)

    async def authenticate(self, username: str, password: str) -> Account | None:
        """The account when the password matches; None otherwise (same cost either way)."""
        row = await self._file.run(
            lambda db: db.execute(
                "SELECT password_hash, subdomain, allow_from FROM acme_dns_accounts"
                " WHERE username = ?",
                (username,),
            ).fetchone()
        )
        stored = row[0] if row else _decoy()
        matches = await asyncio.to_thread(password_matches, password, stored)
        if row is None or not matches:
            return None
        return Account(username, row[1], tuple(json.loads(row[2])))

    async def keep_latest(self, subdomain: str, value: str) -> list[str]:
        """Record `value` as the newest at `subdomain`; return the values that fall out."""
        now = self._clock()

        def update(db: sqlite3.Connection) -> list[str]:
            db.execute("BEGIN IMMEDIATE")
            try:
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
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return evicted

        return await self._file.run(update)

    async def aclose(self) -> None:
        await self._file.aclose()
