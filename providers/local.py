"""The embedded default: challenge values in a SQLite file, served by the built-in responder.

The store is the backend (as Route 53 is for `route53`); the adapter below is the thin
translation of the contract onto it. Several processes may share one file: SQLite in WAL
mode serialises writers, readers never wait, and every value expires on its own after
`value_lifetime_seconds`, so a lost "completed" notification leaves no junk behind.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, ParamSpec, Protocol, Self, TypeVar

from providers.base import Capabilities, ChangeContext, ZoneRef, setting
from providers.errors import ProviderUnavailable
from providers.rate_budget import RateBudget
from providers.sqlite import set_wal, write_transaction

T = TypeVar("T")
P = ParamSpec("P")
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS txt_values (
    fqdn    TEXT NOT NULL,
    value   TEXT NOT NULL,
    rname   TEXT NOT NULL,   -- labels reversed ("test.example._acme-challenge"): subtree scans
    ttl     INTEGER NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (fqdn, value)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS txt_values_rname ON txt_values (rname);
CREATE INDEX IF NOT EXISTS txt_values_expires ON txt_values (expires);
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class LocalSettings:
    database: Path = setting(
        default=Path("dns-challenge-receiver.sqlite3"),
        help="SQLite file holding the challenge values (relative to the config file).",
    )
    dns_listen: str = setting(
        default="127.0.0.1:8053",
        help="host:port where the built-in authoritative DNS responder listens (UDP and TCP).",
    )
    value_lifetime_seconds: float = setting(
        default=3600.0, help="A value expires this long after it was last added."
    )
    nameservers: tuple[str, ...] = setting(
        default=(), help="NS names of the served zones (default: ns.<zone>)."
    )
    nameserver_addresses: tuple[str, ...] = setting(
        default=(),
        help="A/AAAA answers for in-zone nameserver names (default: the dns_listen address).",
    )
    negative_ttl: int = setting(
        default=5, help="SOA minimum: how long resolvers may cache 'no such record'."
    )


@dataclass(frozen=True)
class StoredValue:
    value: str
    ttl: int
    expires: float


def reversed_name(fqdn: str) -> str:
    return ".".join(reversed(fqdn.split(".")))


def _serialised(method: Callable[P, T]) -> Callable[P, T]:
    """One call at a time per connection: a store may be used from the event loop and a
    worker thread, and `close` must wait for a call still running in a thread."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        store = args[0]
        assert isinstance(store, ChallengeStore)
        with store._lock:
            if store._closed:
                raise sqlite3.ProgrammingError(f"challenge store {store.path} is closed")
            return method(*args, **kwargs)

    return wrapper


class ChallengeStore:
    """Synchronous SQLite access; one instance per connection (writer or reader)."""

    def __init__(self, path: Path, *, lifetime: float, clock: Callable[[], float] = time.time):
        self.path = path
        self._lifetime = lifetime
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        set_wal(self._db)  # two workers may open a new file at once
        self._db.execute("PRAGMA synchronous = NORMAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{path} was written by a newer version (schema {version})")
        self._db.executescript(_SCHEMA)  # idempotent, safe when processes race
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return write_transaction(self._db)

    @_serialised
    def add(self, fqdn: str, value: str, ttl: int) -> bool:
        """Add or refresh `value`; True when it was not there before."""
        now = self._clock()
        with self._transaction() as db:
            existed = db.execute(
                "SELECT 1 FROM txt_values WHERE fqdn = ? AND value = ? AND expires > ?",
                (fqdn, value, now),
            ).fetchone()
            db.execute(
                "INSERT INTO txt_values (fqdn, value, rname, ttl, created, expires)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (fqdn, value) DO UPDATE SET expires = excluded.expires,"
                " ttl = CASE WHEN txt_values.expires > ? THEN txt_values.ttl ELSE excluded.ttl END,"
                " created = CASE WHEN txt_values.expires > ? THEN txt_values.created"
                " ELSE excluded.created END",
                (fqdn, value, reversed_name(fqdn), ttl, now, now + self._lifetime, now, now),
            )
            if not existed:
                self._bump_serial(db, now)
        return not existed

    @_serialised
    def remove(self, fqdn: str, value: str) -> bool:
        """Remove `value`; True when it was there."""
        now = self._clock()
        with self._transaction() as db:
            gone = db.execute(
                "DELETE FROM txt_values WHERE fqdn = ? AND value = ?", (fqdn, value)
            ).rowcount
            if gone:
                self._bump_serial(db, now)
        return bool(gone)

    @_serialised
    def values(self, fqdn: str) -> list[StoredValue]:
        rows = self._db.execute(
            "SELECT value, ttl, expires FROM txt_values WHERE fqdn = ? AND expires > ?"
            " ORDER BY value",
            (fqdn, self._clock()),
        ).fetchall()
        return [StoredValue(value, ttl, expires) for value, ttl, expires in rows]

    @_serialised
    def has_descendants(self, fqdn: str) -> bool:
        """Whether a live value sits strictly below `fqdn` (an empty non-terminal)."""
        prefix = reversed_name(fqdn) + "."
        row = self._db.execute(
            "SELECT 1 FROM txt_values WHERE rname >= ? AND rname < ? AND expires > ? LIMIT 1",
            (prefix, prefix[:-1] + "/", self._clock()),
        ).fetchone()
        return row is not None

    @_serialised
    def serial(self) -> int:
        row = self._db.execute("SELECT value FROM store_meta WHERE key = 'serial'").fetchone()
        return int(row[0]) if row else 1

    @_serialised
    def data_version(self) -> int:
        """Changes whenever any connection (any process) commits: a cheap cache key."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    @_serialised
    def purge_expired(self) -> int:
        now = self._clock()
        with self._transaction() as db:
            count = db.execute("DELETE FROM txt_values WHERE expires <= ?", (now,)).rowcount
            if count:
                self._bump_serial(db, now)
        return count

    @_serialised
    def names(self, zone: str) -> Iterable[str]:
        """Every live name at or under `zone` (for tests and audits)."""
        rname = reversed_name(zone)
        rows = self._db.execute(
            "SELECT DISTINCT fqdn FROM txt_values WHERE (rname = ? OR (rname >= ? AND rname < ?))"
            " AND expires > ? ORDER BY rname",
            (rname, rname + ".", rname + "/", self._clock()),
        ).fetchall()
        return [row[0] for row in rows]

    @_serialised
    def close(self) -> None:
        self._closed = True
        self._db.close()

    @staticmethod
    def _bump_serial(db: sqlite3.Connection, now: float) -> None:
        db.execute(
            "INSERT INTO store_meta (key, value) VALUES ('serial', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = max(store_meta.value + 1, excluded.value)",
            (int(now),),
        )


class RecordStore(Protocol):
    """Where `local` values live: a SQLite file (`SqliteRecords`, one host) or the shared
    PostgreSQL database (`[state]`, every process), chosen by the composition root."""

    async def add(self, fqdn: str, value: str, ttl: int) -> bool: ...

    async def remove(self, fqdn: str, value: str) -> bool: ...

    async def values(self, fqdn: str) -> list[StoredValue]: ...

    async def purge_expired(self) -> int:
        """Delete expired values (they are not served anyway); return how many."""
        ...

    async def aclose(self) -> None: ...


class SqliteRecords:
    """The SQLite store from asyncio: calls run in a thread (SQLite may wait for another
    process's write lock), one at a time per process, on a connection opened on first use."""

    def __init__(self, settings: LocalSettings) -> None:
        self.settings = settings
        self._store: ChallengeStore | None = None
        self._lock = threading.Lock()

    def _run(self, operation: Callable[[ChallengeStore], T]) -> T:
        with self._lock:
            if self._store is None:
                self._store = ChallengeStore(
                    self.settings.database, lifetime=self.settings.value_lifetime_seconds
                )
            return operation(self._store)

    async def _call(self, operation: Callable[[ChallengeStore], T]) -> T:
        try:
            return await asyncio.to_thread(self._run, operation)
        except sqlite3.OperationalError as exc:  # locked past the busy timeout, disk full
            raise ProviderUnavailable("local", f"challenge store: {exc}") from None

    async def add(self, fqdn: str, value: str, ttl: int) -> bool:
        return await self._call(lambda store: store.add(fqdn, value, ttl))

    async def remove(self, fqdn: str, value: str) -> bool:
        return await self._call(lambda store: store.remove(fqdn, value))

    async def values(self, fqdn: str) -> list[StoredValue]:
        return await self._call(lambda store: store.values(fqdn))

    async def purge_expired(self) -> int:
        return await self._call(lambda store: store.purge_expired())

    async def aclose(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


class LocalProvider:
    """Adapter: the contract onto a record store."""

    name: ClassVar[str] = "local"
    Settings: ClassVar[type[LocalSettings]] = LocalSettings
    capabilities: ClassVar[Capabilities] = Capabilities(serves_dns=True, local_store=True)
    wants_user_token: ClassVar[bool] = False
    default_rate_per_second: ClassVar[float | None] = None

    def __init__(self, settings: LocalSettings, store: RecordStore | None = None) -> None:
        self.settings = settings
        self.store = store if store is not None else SqliteRecords(settings)

    @classmethod
    async def open(cls, settings: LocalSettings, budget: RateBudget) -> Self:
        return cls(settings)

    @classmethod
    def on_store(cls, settings: LocalSettings, store: RecordStore) -> Self:
        """On the shared database's store (`[state]`) instead of the SQLite file."""
        return cls(settings, store=store)

    async def zone_handle(self, zone_name: str, *, ctx: ChangeContext | None = None) -> str:
        return zone_name

    async def list_txt(self, zone: ZoneRef, fqdn: str) -> frozenset[str]:
        return frozenset(item.value for item in await self.store.values(fqdn))

    async def add_txt(
        self, zone: ZoneRef, fqdn: str, value: str, ttl: int, *, ctx: ChangeContext
    ) -> None:
        await self.store.add(fqdn, value, ttl)

    async def remove_txt(self, zone: ZoneRef, fqdn: str, value: str, *, ctx: ChangeContext) -> None:
        await self.store.remove(fqdn, value)

    async def aclose(self) -> None:
        await self.store.aclose()
