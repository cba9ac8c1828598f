"""The one SQLite write transaction every shared store uses."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.sqlite import write_transaction


@pytest.fixture
def closing() -> Iterator[contextlib.ExitStack]:
    """Connections (as separate processes would have) to one WAL file, closed after."""
    with contextlib.ExitStack() as stack:
        yield stack


def open_db(stack: contextlib.ExitStack, path: Path, busy_ms: int = 50) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=busy_ms / 1000)
    stack.callback(db.close)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, n INTEGER)")
    return db


def test_commits_on_success(closing: contextlib.ExitStack, tmp_path: Path) -> None:
    db = open_db(closing, tmp_path / "t.db")
    with write_transaction(db):
        db.execute("INSERT INTO t VALUES ('a', 1)")
        assert db.in_transaction
    assert not db.in_transaction
    assert open_db(closing, tmp_path / "t.db").execute("SELECT n FROM t").fetchall() == [(1,)]


def test_rolls_back_on_any_exception(closing: contextlib.ExitStack, tmp_path: Path) -> None:
    db = open_db(closing, tmp_path / "t.db")

    def fail_half_way() -> None:
        with write_transaction(db):
            db.execute("INSERT INTO t VALUES ('a', 1)")
            raise KeyError("a")

    with pytest.raises(KeyError):
        fail_half_way()
    assert not db.in_transaction
    with write_transaction(db):  # the connection is usable again
        db.execute("INSERT INTO t VALUES ('b', 2)")
    other = open_db(closing, tmp_path / "t.db")
    assert other.execute("SELECT k FROM t").fetchall() == [("b",)]


def test_the_write_lock_is_taken_before_the_body_runs(
    closing: contextlib.ExitStack, tmp_path: Path
) -> None:
    """With another process writing, the transaction waits (then fails) at its start,
    never after a read it would act on: a read-then-write cannot fail half-way."""
    other = open_db(closing, tmp_path / "t.db")
    db = open_db(closing, tmp_path / "t.db")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t VALUES ('theirs', 1)")
    ran = []

    def read_then_write() -> None:
        with write_transaction(db):
            ran.append(db.execute("SELECT count(*) FROM t").fetchone())
            db.execute("INSERT INTO t VALUES ('ours', 1)")

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        read_then_write()
    assert ran == []
    assert not db.in_transaction
    other.execute("COMMIT")


def test_a_read_then_write_builds_on_every_commit_before_it(
    closing: contextlib.ExitStack, tmp_path: Path
) -> None:
    first = open_db(closing, tmp_path / "t.db")
    second = open_db(closing, tmp_path / "t.db", busy_ms=2000)
    with write_transaction(first):
        first.execute("INSERT INTO t VALUES ('k', 1)")
    for db in (first, second, first):
        with write_transaction(db):
            (n,) = db.execute("SELECT n FROM t WHERE k = 'k'").fetchone()
            db.execute("UPDATE t SET n = ? WHERE k = 'k'", (n + 1,))
    assert second.execute("SELECT n FROM t").fetchone() == (4,)
