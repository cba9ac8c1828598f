"""SQLite files from asyncio: two stores opening one new file at once (the journal and
the account store); short writes and reads on the event loop that never wait there."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from receiver import sqlite
from receiver.sqlite import SqliteFile


async def test_opening_waits_for_another_connection_setting_up_the_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE first (x)")
    holder.execute("BEGIN IMMEDIATE")  # a write lock, as a schema being created holds
    holder.execute("INSERT INTO first VALUES (1)")
    threading.Timer(0.3, lambda: holder.execute("COMMIT")).start()

    second = SqliteFile(path, "CREATE TABLE IF NOT EXISTS second (y);")
    mode = await second.run(lambda db: db.execute("PRAGMA journal_mode").fetchone()[0])
    assert mode == "wal"
    await second.aclose()
    holder.close()


def _insert(value: int) -> Callable[[sqlite3.Connection], int]:
    def write(db: sqlite3.Connection) -> int:
        db.execute("BEGIN IMMEDIATE")
        try:
            row_id = db.execute("INSERT INTO t (v) VALUES (?)", (value,)).lastrowid or 0
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return row_id

    return write


async def test_a_write_on_the_loop_never_waits_there_for_another_processs_lock(
    tmp_path: Path,
) -> None:
    """`write_now` runs on the event loop; when another connection holds the write lock it
    must not wait there (its busy timeout would freeze every request), but in a thread."""
    file = SqliteFile(tmp_path / "f.sqlite3", "CREATE TABLE IF NOT EXISTS t (v);")
    await file.run(_insert(0))  # opened
    holder = sqlite3.connect(tmp_path / "f.sqlite3", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process's write lock, for 0.5 s
    threading.Timer(0.5, lambda: holder.execute("COMMIT")).start()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    started = time.monotonic()
    row_id = await file.write_now(_insert(1))
    waited = time.monotonic() - started
    ticking.cancel()
    assert row_id == 2 and waited >= 0.4  # it did wait for the lock, and then wrote
    assert ticks >= 20, ticks  # ... while the loop went on (blocked, it ticks ~once)
    assert await file.read_now(lambda db: db.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 2
    await file.aclose()
    holder.close()


async def test_a_write_on_the_loop_waits_out_a_brief_lock_there_not_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's commit holds the lock for well under a millisecond (two `serve
    --workers` processes collide all the time): `write_now` tries again on the loop
    rather than paying a worker thread's hop for each collision."""
    file = SqliteFile(tmp_path / "f.sqlite3", "CREATE TABLE IF NOT EXISTS t (v);")
    await file.run(_insert(0))  # opened
    holder = sqlite3.connect(tmp_path / "f.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's write lock, released on the loop
    asyncio.get_running_loop().call_later(0.001, holder.execute, "COMMIT")
    threads: list[object] = []

    async def in_a_thread(operation: object) -> None:
        threads.append(operation)
        raise AssertionError("went to a worker thread")

    monkeypatch.setattr(file, "run", in_a_thread)
    assert await file.write_now(_insert(1)) == 2
    assert threads == []
    monkeypatch.undo()
    await file.aclose()
    holder.close()


async def test_writes_on_the_loop_are_checkpointed_off_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer never checkpoints itself (that is where WAL mode syncs to disk): a
    checkpoint runs in a thread every CHECKPOINT_EVERY writes, so the WAL stays small."""
    monkeypatch.setattr(sqlite, "CHECKPOINT_EVERY", 50)
    path = tmp_path / "f.sqlite3"
    file = SqliteFile(path, "CREATE TABLE IF NOT EXISTS t (v);")
    await file.run(_insert(0))
    assert file._db is not None
    assert file._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    wal = path.with_name("f.sqlite3-wal")
    largest = 0
    for i in range(2000):
        await file.write_now(_insert(i))
        if i % 100 == 0:
            await asyncio.sleep(0.01)  # let a checkpoint thread run now and then
            largest = max(largest, wal.stat().st_size)
    await file.aclose()
    # Without checkpoints the WAL holds every commit: 2,000 x (header + 4 KiB page), 8 MB.
    assert 0 < largest < 1_000_000, largest
    check = sqlite3.connect(path)
    assert check.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 2001
    check.close()


async def test_the_wal_stays_bounded_under_writes_that_never_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under steady load the writer commits while a checkpoint runs. A PASSIVE
    checkpoint copies only the frames that were there when it started, so it never
    caught up, the WAL was never restarted, and it grew without bound (1.4 GB after a
    minute of bench/throughput.py's load): a long WAL is now finished off holding the
    writer, and starts over."""
    monkeypatch.setattr(sqlite, "CHECKPOINT_EVERY", 50)
    monkeypatch.setattr(sqlite, "RESTART_FRAMES", 200)
    path = tmp_path / "f.sqlite3"
    file = SqliteFile(path, "CREATE TABLE IF NOT EXISTS t (v);")
    await file.run(_insert(0))
    wal = path.with_name("f.sqlite3-wal")
    sizes = []
    for i in range(4000):
        await file.write_now(_insert(i))
        await asyncio.sleep(0)  # the loop goes on; the checkpoint thread runs meanwhile
        if i % 500 == 499:
            sizes.append(wal.stat().st_size)
    await file.aclose()
    # Never restarted, the WAL holds every commit: 4,000 x (header + 4 KiB page), 16 MB,
    # growing 2 MB every 500 writes. Restarted, it levels off (2-4.5 MB, CI under load).
    assert max(sizes) < 8_000_000, sizes
    check = sqlite3.connect(path)
    assert check.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 4001
    check.close()


def test_a_grown_wal_is_cut_back_when_it_starts_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WAL that grew before (a long burst, or the bug above) shrinks to
    WAL_SIZE_LIMIT once a checkpoint lets it start over: SQLite otherwise keeps the
    file at its largest and reuses it."""
    monkeypatch.setattr(sqlite, "WAL_SIZE_LIMIT", 100_000)
    path = tmp_path / "f.sqlite3"
    grower = sqlite3.connect(path, isolation_level=None)
    grower.execute("PRAGMA journal_mode = WAL")
    grower.execute("PRAGMA wal_autocheckpoint = 0")
    grower.execute("CREATE TABLE t (v)")
    for _ in range(300):
        grower.execute("INSERT INTO t VALUES (?)", (b"x" * 8000,))
    wal = path.with_name("f.sqlite3-wal")
    assert wal.stat().st_size > 2_000_000
    file = SqliteFile(path, "CREATE TABLE IF NOT EXISTS t (v);")
    file._checkpoint()  # what the writes' checkpoint thread runs, then on the loop:
    file._finish_wal()
    grower.close()
    file._connection().execute("INSERT INTO t VALUES (1)")  # the WAL starts over
    assert wal.stat().st_size <= 100_000
    assert file._connection().execute("SELECT COUNT(*) FROM t").fetchone()[0] == 301


def test_the_local_store_opening_waits_for_another_process_setting_up_its_file(
    tmp_path: Path,
) -> None:
    """Two `serve --workers` processes open the `local` store's new file together: the
    switch to WAL must wait out the other's lock, not fail ("database is locked" at once,
    SQLite's busy handler does not cover it; CI saw a worker die of it)."""
    from providers.local import ChallengeStore

    path = tmp_path / "local.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE first (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO first VALUES (1)")
    threading.Timer(0.3, lambda: holder.execute("COMMIT")).start()
    store = ChallengeStore(path, lifetime=60)
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    holder.close()
