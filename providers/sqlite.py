"""SQLite write transactions, written once for every store that shares a file between
processes (the `local` records, the journal, the acme-dns accounts).

It lives with the providers because the `local` store is one; the receiver's stores
import it from here (providers never import the receiver).
"""

from __future__ import annotations

import sqlite3
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
