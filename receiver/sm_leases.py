"""What the Secrets Manager door must remember across passes, processes and restarts:
who works on a secret now (a lease), and which orders it already asked to validate.

Kept where the journal is: its SQLite file (WAL, shared by the processes on one host),
or the shared PostgreSQL database of `[state]` (every replica, host and job). So two
replicas, or the server and a cron job, take turns on a secret and never ask twice to
validate the same challenges.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from providers.sqlite import write_transaction
from receiver.sqlite import SqliteFile

if TYPE_CHECKING:
    from receiver.postgres.database import Database

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


class LeaseStore(Protocol):
    async def acquire(self, secret: str, holder: str, seconds: float) -> bool:
        """True when `holder` now holds `secret`'s lease (new, renewed, or expired)."""
        ...

    async def release(self, secret: str, holder: str) -> None: ...

    async def validated(self, secret: str, order_key: str) -> bool: ...

    async def mark_validated(self, secret: str, order_key: str) -> None: ...

    async def aclose(self) -> None: ...


class Leases:
    """SQLite, in the journal's file."""

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


class PostgresLeases:
    """The shared database of `[state]`: one atomic statement per lease."""

    def __init__(self, database: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._database = database
        self._clock = clock

    async def acquire(self, secret: str, holder: str, seconds: float) -> bool:
        now = self._clock()
        async with self._database.connection() as db:
            row = await db.fetchrow(
                "INSERT INTO secrets_manager_leases (secret, holder, until) VALUES ($1, $2, $3)"
                " ON CONFLICT (secret) DO UPDATE SET holder = excluded.holder,"
                " until = excluded.until WHERE secrets_manager_leases.holder = excluded.holder"
                " OR secrets_manager_leases.until <= $4 RETURNING holder",
                secret,
                holder,
                now + seconds,
                now,
            )
        return row is not None

    async def release(self, secret: str, holder: str) -> None:
        async with self._database.connection() as db:
            await db.execute(
                "DELETE FROM secrets_manager_leases WHERE secret = $1 AND holder = $2",
                secret,
                holder,
            )

    async def validated(self, secret: str, order_key: str) -> bool:
        async with self._database.connection() as db:
            found = await db.fetchval(
                "SELECT 1 FROM secrets_manager_validations WHERE secret = $1 AND order_key = $2",
                secret,
                order_key,
            )
        return found is not None

    async def mark_validated(self, secret: str, order_key: str) -> None:
        async with self._database.connection() as db:
            await db.execute(
                "INSERT INTO secrets_manager_validations (secret, order_key, asked)"
                " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                secret,
                order_key,
                self._clock(),
            )

    async def aclose(self) -> None:
        pass  # the database belongs to the State
