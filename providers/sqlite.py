"""SQLite write transactions and the switch to WAL, written once for every store that
shares a file between processes (the `local` records, the journal, the acme-dns accounts).

It lives with the providers because the `local` store is one; the receiver's stores
import it from here (providers never import the receiver).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """`BEGIN IMMEDIATE ... COMMIT`, or `ROLLBACK` on any exception.

    IMMEDIATE takes the write lock before the first statement, waiting up to the busy
    timeout for it. A deferred transaction would read first and upgrade its lock at the
    first write, and SQLite fails such an upgrade at once ("database is locked", no busy
    wait) when another connection wrote meanwhile: a read-then-write would fail half-way.
    The connection must be in autocommit mode (`isolation_level=None`).
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def set_wal(db: sqlite3.Connection, *, within: float = 5.0) -> None:
    """Switch to WAL, waiting out another connection that is setting up the same file.

    Changing the journal mode escalates a shared lock, and SQLite answers "database is
    locked" at once, without its busy handler, while another connection holds a write
    lock (two stores, or two `serve --workers` processes, opening one new file together).
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
