"""acme-dns accounts in SQLite: the journal's file, shared by the processes on one host.
Imported only when the acme-dns door is on and `[state]` is not set."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from providers.sqlite import write_transaction
from receiver.accounts import VALUES_KEPT, Account, StoredAccount
from receiver.sqlite import SqliteFile

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
