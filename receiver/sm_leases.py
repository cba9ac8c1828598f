"""What the Secrets Manager door must remember across passes, processes and restarts:
who works on a secret now (a lease), and which orders it already asked to validate.

Kept in the journal's SQLite file (WAL, shared by the processes on one host), so two
replicas on one host, or the server and a cron job, take turns on a secret and never
ask twice to validate the same challenges.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from providers.sqlite import write_transaction
from receiver.sqlite import SqliteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS secrets_manager_leases (
    secret      TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    until       REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets_manager_validations (
    secret      TEXT NOT NULL,
    order_key   TEXT NOT NULL,
    asked       REAL NOT NULL,
    PRIMARY KEY (secret, order_key)
);
"""


class Leases:
    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._file = SqliteFile(path, _SCHEMA)
        self._clock = clock

    async def acquire(self, secret: str, holder: str, seconds: float) -> bool:
        """True when `holder` now holds `secret`'s lease (new, renewed, or expired)."""
        now = self._clock()

        def take(db: sqlite3.Connection) -> bool:
            with write_transaction(db):
                row = db.execute(
                    "SELECT holder, until FROM secrets_manager_leases WHERE secret = ?", (secret,)
                ).fetchone()
                if row is not None and row[0] != holder and row[1] > now:
                    return False
                db.execute(
                    "INSERT INTO secrets_manager_leases (secret, holder, until) VALUES (?, ?, ?)"
                    " ON CONFLICT (secret) DO UPDATE SET holder = excluded.holder,"
                    " until = excluded.until",
                    (secret, holder, now + seconds),
                )
                return True

        return await self._file.write_now(take)

    async def release(self, secret: str, holder: str) -> None:
        def drop(db: sqlite3.Connection) -> None:
            with write_transaction(db):
                db.execute(
                    "DELETE FROM secrets_manager_leases WHERE secret = ? AND holder = ?",
                    (secret, holder),
                )

        await self._file.write_now(drop)

    async def validated(self, secret: str, order_key: str) -> bool:
        def read(db: sqlite3.Connection) -> bool:
            return (
                db.execute(
                    "SELECT 1 FROM secrets_manager_validations WHERE secret = ? AND order_key = ?",
                    (secret, order_key),
                ).fetchone()
                is not None
            )

        return await self._file.read_now(read)

    async def mark_validated(self, secret: str, order_key: str) -> None:
        now = self._clock()

        def write(db: sqlite3.Connection) -> None:
            with write_transaction(db):
                db.execute(
                    "INSERT OR IGNORE INTO secrets_manager_validations (secret, order_key, asked)"
                    " VALUES (?, ?, ?)",
                    (secret, order_key, now),
                )

        await self._file.write_now(write)

    async def aclose(self) -> None:
        await self._file.aclose()
