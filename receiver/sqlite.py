"""One SQLite file used from asyncio: opened on first use, every call in a worker thread.

Writes go one at a time per process through one connection (several processes are
serialised by SQLite's own lock). Reads go through a second connection of their own:
in WAL mode a reader never waits for a writer, so a lookup on the request path does not
queue behind a batch of journal writes."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class SqliteFile:
    def __init__(self, path: Path, schema: str, *, synchronous: str = "NORMAL") -> None:
        self.path = path
        self._schema = schema
        self._synchronous = synchronous  # NORMAL: durable across crashes; FULL: power loss
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._connect()
            _set_wal(db)
            db.execute(f"PRAGMA synchronous = {self._synchronous}")
            db.executescript(self._schema)
            self._db = db
        return self._db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=5, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 5000")
        return db

    def _read_connection(self) -> sqlite3.Connection:
        if self._reader is None:
            with self._lock:
                self._connection()  # the file exists, in WAL mode, with its schema
            self._reader = self._connect()
        return self._reader

    async def run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """A write (or any call that must see the writes before it, in order)."""

        def locked() -> T:
            with self._lock:
                return operation(self._connection())

        return await asyncio.to_thread(locked)

    async def read(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """A read, alongside writes: it sees every transaction committed before it."""

        def locked() -> T:
            with self._read_lock:
                return operation(self._read_connection())

        return await asyncio.to_thread(locked)

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock, self._read_lock:
                for db in (self._db, self._reader):
                    if db is not None:
                        db.close()
                self._db = self._reader = None

        await asyncio.to_thread(close)


def _set_wal(db: sqlite3.Connection, *, within: float = 5.0) -> None:
    """Switch to WAL, waiting out another connection that is setting up the same file.

    Changing the journal mode escalates a shared lock, and SQLite answers "database is
    locked" at once, without its busy handler, while another connection holds a write
    lock (two stores opening one new file together: the journal and the account store).
    """
    deadline = time.monotonic() + within
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
