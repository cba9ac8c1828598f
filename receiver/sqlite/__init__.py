"""One SQLite file used from asyncio: opened on first use (in a worker thread).

Writes go one at a time per process through one connection (several processes are
serialised by SQLite's own lock). Reads in worker threads go through a second connection
of their own: in WAL mode a reader never waits for a writer. A short lookup on the event
loop uses the writer's connection when no thread holds it, because in WAL mode SQLite
drops a connection's page cache at its first read after another connection committed:
the writer's cache survives its own commits, the reader's did not (~3x the lookup's cost
under load); when a thread holds the writer, the lookup takes the reader's.

Short calls on the request path (`write_now`, `read_now`) run on the event loop itself.
In WAL mode with `synchronous=NORMAL` a commit is a write to the WAL file, no fsync: about
20 µs here, where the hop to a worker thread and back cost ~150 µs of CPU per request and
made the loop's own work wait for the GIL. Such a call never blocks the loop: if this
process's connection is busy in a thread, it runs in a worker thread, where waiting is
fine; if another process holds the write lock (its busy timeout is 0 on this path), a
write tries again on the loop for a few milliseconds, yielding between tries, and then
goes to a worker thread.
The fsync moves to checkpoints, which the writer never runs itself
(`wal_autocheckpoint = 0`): one runs in a worker thread every CHECKPOINT_EVERY writes.
It copies beside the writer; a WAL that has grown to RESTART_FRAMES is then finished off
on the event loop between two writes (what is left is a few batches' frames), so that
the next write starts it over: copies beside a writer that kept committing never caught
up, and the WAL grew without bound under steady load (1.4 GB in a minute).
Everything long (scans, prunes, the sweep's reads) stays in worker threads.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog

from providers.sqlite import set_wal

T = TypeVar("T")
log = structlog.get_logger("receiver.sqlite")

BUSY_TIMEOUT_MS = 5000  # in worker threads; on the event loop, 0
BUSY_RETRY_SECONDS = 0.00025  # a write on the loop that found the file busy tries again
BUSY_ON_LOOP_SECONDS = 0.005  # for this long, then waits in a worker thread
CHECKPOINT_EVERY = 500  # writes; with SQLite's default 4 KiB pages, a WAL of a few MB
RESTART_FRAMES = 32768  # a WAL this long (128 MiB of 4 KiB pages) is made to start over
WAL_SIZE_LIMIT = 256 * 1024 * 1024  # bytes a WAL keeps when it starts over (SQLite: all)


class SqliteFile:
    def __init__(self, path: Path, schema: str, *, synchronous: str = "NORMAL") -> None:
        self.path = path
        self._schema = schema
        self._synchronous = synchronous  # NORMAL: durable across crashes; FULL: power loss
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._writes_since_checkpoint = 0
        self._checkpointing: asyncio.Task[None] | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._connect()
            set_wal(db)
            db.execute(f"PRAGMA synchronous = {self._synchronous}")
            db.execute("PRAGMA wal_autocheckpoint = 0")  # checkpoints: `_checkpoint`
            db.executescript(self._schema)
            db.execute("PRAGMA busy_timeout = 0")  # see `_waiting`
            self._db = db
        return self._db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        return db

    def _read_connection(self) -> sqlite3.Connection:
        if self._reader is None:
            with self._lock:
                self._connection()  # the file exists, in WAL mode, with its schema
            self._reader = self._connect()
            self._reader.execute("PRAGMA busy_timeout = 0")
        return self._reader

    async def run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """A write (or any call that must see the writes before it, in order)."""

        def locked() -> T:
            with self._lock:
                return _waiting(self._connection(), operation)

        result = await asyncio.to_thread(locked)
        self._wrote()
        return result

    async def write_now(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """A short write, on the event loop when it need not wait (else as `run`).

        `operation` must start its transaction with `BEGIN IMMEDIATE` and roll back what
        it began when it fails: a busy file fails it at `BEGIN`, before any change. It is
        then tried again on the loop every BUSY_RETRY_SECONDS, the loop serving others
        meanwhile, for BUSY_ON_LOOP_SECONDS (another `serve --workers` process's batch
        holds the lock well under a millisecond), and only then run in a worker thread:
        with two workers, sending every collision to a thread cost 14 % more CPU per
        request than one worker's; retried on the loop, 5-9 %."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + BUSY_ON_LOOP_SECONDS
        while (db := self._db) is not None and self._lock.acquire(blocking=False):
            try:
                result = _at_once(db, operation)
            finally:
                self._lock.release()
            if result is not _BUSY:
                self._wrote()
                return result
            if loop.time() >= give_up:
                break
            await asyncio.sleep(BUSY_RETRY_SECONDS)  # another process's commit: brief
        return await self.run(operation)

    async def read(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """A read, alongside writes: it sees every transaction committed before it."""

        def locked() -> T:
            with self._read_lock:
                return _waiting(self._read_connection(), operation)

        return await asyncio.to_thread(locked)

    async def read_now(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """A short read (an indexed lookup), on the event loop when it need not wait.

        It goes through the writer's connection when no thread is using it: that
        connection's page cache survives this process's own commits, while the reader's
        is dropped at every read after a commit (~3x the cost of the lookup here)."""
        for db, lock in ((self._db, self._lock), (self._reader, self._read_lock)):
            if db is not None and lock.acquire(blocking=False):
                try:
                    result = _at_once(db, operation)
                finally:
                    lock.release()
                if result is not _BUSY:
                    return result
        return await self.read(operation)

    def _wrote(self) -> None:
        self._writes_since_checkpoint += 1
        if self._writes_since_checkpoint >= CHECKPOINT_EVERY and (
            self._checkpointing is None or self._checkpointing.done()
        ):
            self._writes_since_checkpoint = 0
            self._checkpointing = asyncio.create_task(self._checkpoint_soon())

    async def _checkpoint_soon(self) -> None:
        if await asyncio.to_thread(self._checkpoint) >= RESTART_FRAMES:
            self._finish_wal()

    def _checkpoint(self) -> int:
        """Copy the WAL into the database and sync it, beside the writer (PASSIVE), in a
        worker thread; the frames left in the WAL (0 when it could not run)."""
        try:
            with self._read_lock:
                return _waiting(self._read_connection(), _copy_wal)
        except sqlite3.Error as exc:  # the next one tries again; writes go on meanwhile
            log.warning("sqlite_checkpoint_failed", path=str(self.path), error=str(exc))
            return 0

    def _finish_wal(self) -> None:
        """The next write starts the WAL over only if a copy found no write beside it,
        which under steady load never happens: a WAL of RESTART_FRAMES is finished off on
        the event loop, between two writes of this process (what the copy beside them
        left: a few batches' frames, and its fsyncs, 6-16 ms here: rare, so that few
        requests wait for it). Not waiting for anybody: when a thread holds the writer,
        or another process writes meanwhile, the next copy tries again."""
        db = self._db
        if db is not None and self._lock.acquire(blocking=False):
            try:
                _copy_wal(db)
            except sqlite3.Error as exc:
                log.warning("sqlite_checkpoint_failed", path=str(self.path), error=str(exc))
            finally:
                self._lock.release()

    async def aclose(self) -> None:
        if self._checkpointing is not None:
            await asyncio.gather(self._checkpointing, return_exceptions=True)

        def close() -> None:
            with self._lock, self._read_lock:
                for db in (self._db, self._reader):
                    if db is not None:
                        db.close()
                self._db = self._reader = None

        await asyncio.to_thread(close)


_BUSY: Any = object()


def _at_once(db: sqlite3.Connection, operation: Callable[[sqlite3.Connection], T]) -> T:
    """`operation` on `db` without waiting for a lock held by another process: its
    result, or _BUSY (nothing was changed) when it would have had to wait. The
    connections' busy timeout is 0 but in `_waiting`: two statements fewer per call."""
    try:
        return operation(db)
    except sqlite3.OperationalError as exc:
        if db.in_transaction or not _is_busy(exc):
            raise
        return _BUSY  # type: ignore[no-any-return]


def _waiting(db: sqlite3.Connection, operation: Callable[[sqlite3.Connection], T]) -> T:
    """`operation` on `db` in a worker thread, where waiting out another process's lock
    (up to BUSY_TIMEOUT_MS) is fine."""
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    try:
        return operation(db)
    finally:
        db.execute("PRAGMA busy_timeout = 0")


def _copy_wal(db: sqlite3.Connection) -> int:
    """The frames in the WAL, once what it could copy is copied."""
    _, frames, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(frames)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return (exc.sqlite_errorcode & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
