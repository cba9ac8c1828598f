"""Two stores opening one new SQLite file at once (the journal and the account store)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

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
