"""`local` records on PostgreSQL, and the mirror every process's DNS responder answers from.

Writes go to the database in one transaction each, which also bumps the zone serial (so
the SOA serial stays monotonic whichever process writes) and sends a NOTIFY. Every
responder keeps all live values in memory (challenge values are few) and reloads them
when notified, so an answer never waits on the database. If the listening connection
drops, the mirror polls the serial instead until it can listen again: answers may lag by
a poll interval, never stay stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import asyncpg
import structlog

from providers.errors import ProviderUnavailable
from providers.local import StoredValue
from receiver.errors import StateUnavailable
from receiver.postgres.database import Connection, Database

log = structlog.get_logger("receiver.postgres.records")

CHANNEL = "dcr_records"
_BUMP_SERIAL = """
    INSERT INTO store_meta (key, value) VALUES ('serial', $1)
    ON CONFLICT (key) DO UPDATE SET value = GREATEST(store_meta.value + 1, excluded.value)
    RETURNING value
"""


class PostgresRecords:
    """The `local` adapter's store (the `RecordStore` protocol) on the shared database."""

    def __init__(
        self, database: Database, *, lifetime: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._database = database
        self._lifetime = lifetime
        self._clock = clock

    async def add(self, fqdn: str, value: str, ttl: int) -> bool:
        now = self._clock()
        async with self._write() as db:
            existed = await db.fetchval(
                "SELECT 1 FROM txt_values WHERE fqdn = $1 AND value = $2 AND expires > $3",
                fqdn,
                value,
                now,
            )
            await db.execute(
                "INSERT INTO txt_values (fqdn, value, ttl, created, expires)"
                " VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (fqdn, value) DO UPDATE SET expires = excluded.expires,"
                " ttl = CASE WHEN txt_values.expires > $4 THEN txt_values.ttl"
                " ELSE excluded.ttl END,"
                " created = CASE WHEN txt_values.expires > $4 THEN txt_values.created"
                " ELSE excluded.created END",
                fqdn,
                value,
                ttl,
                now,
                now + self._lifetime,
            )
            if not existed:
                await _changed(db, now)
        return existed is None

    async def remove(self, fqdn: str, value: str) -> bool:
        async with self._write() as db:
            status = await db.execute(
                "DELETE FROM txt_values WHERE fqdn = $1 AND value = $2", fqdn, value
            )
            gone = status != "DELETE 0"
            if gone:
                await _changed(db, self._clock())
        return gone

    async def values(self, fqdn: str) -> list[StoredValue]:
        try:
            async with self._database.connection() as db:
                rows = await db.fetch(
                    "SELECT value, ttl, expires FROM txt_values WHERE fqdn = $1 AND expires > $2"
                    " ORDER BY value",
                    fqdn,
                    self._clock(),
                )
        except StateUnavailable as exc:
            raise ProviderUnavailable("local", exc.reason) from None
        return [StoredValue(r["value"], r["ttl"], r["expires"]) for r in rows]

    async def purge_expired(self) -> int:
        now = self._clock()
        async with self._write() as db:
            status = await db.execute("DELETE FROM txt_values WHERE expires <= $1", now)
            count = int(status.split()[-1])
            if count:
                await _changed(db, now)
        return count

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[Connection]:
        try:
            async with self._database.connection() as db, db.transaction():
                yield db
        except StateUnavailable as exc:
            raise ProviderUnavailable("local", exc.reason) from None

    async def aclose(self) -> None:
        return None  # the Database is closed by its owner


async def _changed(db: Connection, now: float) -> None:
    """Bump the serial (row-locked: writers in every process take turns) and notify."""
    serial = await db.fetchval(_BUMP_SERIAL, int(now))
    await db.execute("SELECT pg_notify($1, $2)", CHANNEL, str(serial))


@dataclass
class _Snapshot:
    by_name: dict[str, list[StoredValue]] = field(default_factory=dict)
    below: dict[str, float] = field(default_factory=dict)  # name -> latest expiry beneath it
    serial: int = 1


class RecordMirror:
    """The responder's view (`receiver.dnsserver.RecordView`): every live value in memory,
    reloaded on NOTIFY, or by polling the serial while it cannot listen."""

    def __init__(
        self,
        database: Database,
        *,
        poll_interval: float = 0.1,
        safety_interval: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._database = database
        self._poll_interval = poll_interval
        self._safety_interval = safety_interval
        self._clock = clock
        self._snapshot = _Snapshot()
        self._version = 0
        self._wanted = asyncio.Event()
        self._listening = False
        self._task: asyncio.Task[None] | None = None

    # --- what the responder reads (synchronous, from memory) -----------------------------

    def values(self, fqdn: str) -> list[StoredValue]:
        now = self._clock()
        return [v for v in self._snapshot.by_name.get(fqdn, ()) if v.expires > now]

    def has_descendants(self, fqdn: str) -> bool:
        return self._snapshot.below.get(fqdn, 0.0) > self._clock()

    def serial(self) -> int:
        return self._snapshot.serial

    def data_version(self) -> int:
        return self._version

    @property
    def listening(self) -> bool:
        return self._listening

    # --- keeping it current ----------------------------------------------------------------

    async def start(self) -> None:
        """Load once (if the database answers) and keep following it in the background."""
        with contextlib.suppress(StateUnavailable):
            await self.reload()
        self._task = asyncio.create_task(self._follow())

    async def reload(self) -> None:
        async with (
            self._database.connection() as db,
            db.transaction(isolation="repeatable_read", readonly=True),
        ):
            serial = await db.fetchval("SELECT value FROM store_meta WHERE key = 'serial'")
            rows = await db.fetch(
                "SELECT fqdn, value, ttl, expires FROM txt_values WHERE expires > $1"
                " ORDER BY fqdn, value",
                self._clock(),
            )
        snapshot = _Snapshot(serial=int(serial or 1))
        by_name: defaultdict[str, list[StoredValue]] = defaultdict(list)
        for row in rows:
            stored = StoredValue(row["value"], row["ttl"], row["expires"])
            by_name[row["fqdn"]].append(stored)
            labels = row["fqdn"].split(".")
            for start in range(1, len(labels)):
                ancestor = ".".join(labels[start:])
                snapshot.below[ancestor] = max(snapshot.below.get(ancestor, 0.0), stored.expires)
        snapshot.by_name = dict(by_name)
        self._snapshot = snapshot
        self._version += 1

    async def _follow(self) -> None:
        """Reload whenever told (bursts coalesce into one reload), and check the serial
        every `safety_interval` while listening, every `poll_interval` while not."""
        connection: asyncpg.Connection | None = None
        next_listen = 0.0
        try:
            while True:
                if (connection is None or connection.is_closed()) and (
                    time.monotonic() >= next_listen
                ):
                    connection = await self._listen(connection)
                    next_listen = time.monotonic() + self._safety_interval
                listening = connection is not None and not connection.is_closed()
                self._listening = listening
                interval = self._safety_interval if listening else self._poll_interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wanted.wait(), interval)
                self._wanted.clear()
                try:
                    await self._reload_if_changed()
                except StateUnavailable as exc:
                    log.debug("record_mirror_unavailable", error=exc.reason)
        finally:
            self._listening = False
            if connection is not None:
                connection.terminate()  # at once: this may run in a cancelled task

    async def _listen(self, old: asyncpg.Connection | None) -> asyncpg.Connection | None:
        """A dedicated connection with LISTEN on it, or None (then: poll)."""
        if old is not None:
            old.terminate()
        try:
            connection = await asyncpg.connect(
                self._database.url.reveal(),
                timeout=self._database.settings.connect_timeout_seconds,
                server_settings={"application_name": "dns-challenge-receiver-listen"},
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.debug("record_mirror_not_listening", error=str(exc))
            return None
        try:
            await connection.add_listener(CHANNEL, self._notified)
        except BaseException as exc:  # cancelled, or the server went away meanwhile
            connection.terminate()
            if not isinstance(exc, Exception):
                raise
            log.debug("record_mirror_not_listening", error=str(exc))
            return None
        connection.add_termination_listener(lambda _connection: self._wanted.set())
        self._wanted.set()  # catch up on whatever happened while not listening
        return connection

    def _notified(self, _connection: object, _pid: int, _channel: str, payload: object) -> None:
        if str(payload) != str(self._snapshot.serial):
            self._wanted.set()

    async def _reload_if_changed(self) -> None:
        async with self._database.connection() as db:
            serial = await db.fetchval("SELECT value FROM store_meta WHERE key = 'serial'")
        if int(serial or 1) != self._snapshot.serial or self._version == 0:
            await self.reload()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
