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
from collections.abc import Callable

import asyncpg
import structlog

from providers.errors import ProviderUnavailable
from providers.local import StoredValue
from receiver.errors import StateUnavailable
from receiver.postgres.database import Database

log = structlog.get_logger("receiver.postgres.records")

CHANNEL = "dcr_records"
# Each write is one statement: the change, the serial bump (row-locked, so writers in
# every process take turns and the serial only grows) and a NOTIFY of "<serial> <name>",
# all or nothing. Data-modifying CTEs run whether or not the outer query reads them.
_ADD = """
    WITH existed AS (
        SELECT 1 FROM txt_values WHERE fqdn = $1 AND value = $2 AND expires > $4),
    written AS (
        INSERT INTO txt_values (fqdn, value, ttl, created, expires) VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (fqdn, value) DO UPDATE SET expires = excluded.expires,
            ttl = CASE WHEN txt_values.expires > $4 THEN txt_values.ttl ELSE excluded.ttl END,
            created = CASE WHEN txt_values.expires > $4 THEN txt_values.created
                ELSE excluded.created END
        RETURNING 1),
    bumped AS (
        INSERT INTO store_meta (key, value)
        SELECT 'serial', $6 WHERE NOT EXISTS (SELECT 1 FROM existed)
        ON CONFLICT (key) DO UPDATE SET value = GREATEST(store_meta.value + 1, excluded.value)
        RETURNING value),
    notified AS (SELECT pg_notify('dcr_records', value::text || ' ' || $1) FROM bumped)
    SELECT (SELECT count(*) FROM written) AS rows, (SELECT count(*) FROM notified) AS notified
"""
_REMOVE = """
    WITH gone AS (DELETE FROM txt_values WHERE fqdn = $1 AND value = $2 RETURNING 1),
    bumped AS (
        INSERT INTO store_meta (key, value) SELECT 'serial', $3 WHERE EXISTS (SELECT 1 FROM gone)
        ON CONFLICT (key) DO UPDATE SET value = GREATEST(store_meta.value + 1, excluded.value)
        RETURNING value),
    notified AS (SELECT pg_notify('dcr_records', value::text || ' ' || $1) FROM bumped)
    SELECT (SELECT count(*) FROM gone) AS rows, (SELECT count(*) FROM notified) AS notified
"""
_PURGE = """
    WITH gone AS (DELETE FROM txt_values WHERE expires <= $1 RETURNING 1),
    bumped AS (
        INSERT INTO store_meta (key, value)
        SELECT 'serial', $1::bigint WHERE EXISTS (SELECT 1 FROM gone)
        ON CONFLICT (key) DO UPDATE SET value = GREATEST(store_meta.value + 1, excluded.value)
        RETURNING value),
    notified AS (SELECT pg_notify('dcr_records', value::text || ' ') FROM bumped)
    SELECT (SELECT count(*) FROM gone) AS rows, (SELECT count(*) FROM notified) AS notified
"""  # no name in the notice: every mirror reloads in full


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
        _, new = await self._write(_ADD, fqdn, value, ttl, now, now + self._lifetime, int(now))
        return new > 0

    async def remove(self, fqdn: str, value: str) -> bool:
        gone, _ = await self._write(_REMOVE, fqdn, value, int(self._clock()))
        return gone > 0

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
        purged, _ = await self._write(_PURGE, self._clock())
        return purged

    async def _write(self, statement: str, *args: object) -> tuple[int, int]:
        """Run one write statement: (rows it changed, notifications it sent: 0 or 1)."""
        try:
            async with self._database.connection() as db:
                row = await db.fetchrow(statement, *args)
                assert row is not None
                return int(row["rows"]), int(row["notified"])
        except StateUnavailable as exc:
            raise ProviderUnavailable("local", exc.reason) from None

    async def aclose(self) -> None:
        return None  # the Database is closed by its owner


class RecordMirror:
    """The responder's view (`receiver.dnsserver.RecordView`): every live value in memory.

    While listening, each notice names the one record that changed and only that name
    is read again; a notice without a name (a purge), (re)starting to listen, and every
    check of the serial that finds it moved (every `poll_interval` while not listening,
    every `safety_interval` while listening) read everything again."""

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
        self._by_name: dict[str, list[StoredValue]] = {}
        self._below: defaultdict[str, set[str]] = defaultdict(set)  # name -> names beneath
        self._serial = 1
        self._version = 0
        self._notices: list[tuple[int, str]] = []
        self._wanted = asyncio.Event()
        self._listening = False
        self._task: asyncio.Task[None] | None = None

    # --- what the responder reads (synchronous, from memory) -----------------------------

    def values(self, fqdn: str) -> list[StoredValue]:
        now = self._clock()
        return [v for v in self._by_name.get(fqdn, ()) if v.expires > now]

    def has_descendants(self, fqdn: str) -> bool:
        return any(self.values(name) for name in self._below.get(fqdn, ()))

    def serial(self) -> int:
        return self._serial

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
        """Read every live value (one consistent snapshot with the serial)."""
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
        by_name: defaultdict[str, list[StoredValue]] = defaultdict(list)
        for row in rows:
            by_name[row["fqdn"]].append(StoredValue(row["value"], row["ttl"], row["expires"]))
        self._by_name, self._below = {}, defaultdict(set)
        for name, stored in by_name.items():
            self._set(name, stored)
        self._serial = int(serial or 1)
        self._version += 1

    async def _refresh(self, names: set[str], serial: int) -> None:
        """Read again only the records that notices named."""
        async with self._database.connection() as db:
            rows = await db.fetch(
                "SELECT fqdn, value, ttl, expires FROM txt_values"
                " WHERE fqdn = ANY($1::text[]) AND expires > $2 ORDER BY fqdn, value",
                list(names),
                self._clock(),
            )
        found: dict[str, list[StoredValue]] = {name: [] for name in names}
        for row in rows:
            found[row["fqdn"]].append(StoredValue(row["value"], row["ttl"], row["expires"]))
        for name, stored in found.items():
            self._set(name, stored)
        self._serial = max(self._serial, serial)
        self._version += 1

    def _set(self, name: str, stored: list[StoredValue]) -> None:
        labels = name.split(".")
        ancestors = [".".join(labels[i:]) for i in range(1, len(labels))]
        if stored:
            self._by_name[name] = stored
            for ancestor in ancestors:
                self._below[ancestor].add(name)
        else:
            self._by_name.pop(name, None)
            for ancestor in ancestors:
                self._below[ancestor].discard(name)

    async def _follow(self) -> None:
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
                # asyncio.timeout, not wait_for: on 3.11, wait_for can swallow a cancel that
                # arrives as the event is set, and then aclose() would wait forever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await self._wanted.wait()
                self._wanted.clear()
                notices, self._notices = self._notices, []
                try:
                    names = {name for _, name in notices}
                    if listening and notices and "" not in names:
                        await self._refresh(names, max(serial for serial, _ in notices))
                    else:
                        await self._reload_if_changed(force=bool(notices))
                except StateUnavailable as exc:
                    log.debug("record_mirror_unavailable", error=exc.reason)
                    self._notices = notices + self._notices  # not lost: tried again
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
        # Catch up on whatever happened while not listening: one full read.
        self._notices.append((0, ""))
        self._wanted.set()
        return connection

    def _notified(self, _connection: object, _pid: int, _channel: str, payload: object) -> None:
        serial, _, name = str(payload).partition(" ")
        self._notices.append((int(serial) if serial.isdigit() else 0, name))
        self._wanted.set()

    async def _reload_if_changed(self, *, force: bool = False) -> None:
        if not force:
            async with self._database.connection() as db:
                serial = await db.fetchval("SELECT value FROM store_meta WHERE key = 'serial'")
            if int(serial or 1) == self._serial and self._version:
                return
        await self.reload()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
