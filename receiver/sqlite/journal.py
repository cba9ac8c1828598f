"""The journal in SQLite (WAL mode): the default store, one file shared by the processes
on one host. Imported only when the journal is on and `[state]` is not set."""

from __future__ import annotations

import dataclasses
import operator
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from providers.sqlite import write_transaction
from receiver.journal import COLUMNS, Entry, Recorded, RemovalCheck, Settlement, publisher_of
from receiver.sqlite import SqliteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal_entries (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    created     REAL NOT NULL,
    settled     REAL,
    action      TEXT NOT NULL CHECK (action IN ('add', 'remove')),
    outcome     TEXT NOT NULL CHECK (outcome IN ('pending', 'done', 'failed')),
    door        TEXT NOT NULL,
    sender      TEXT,
    user        TEXT,
    certificate TEXT,
    domain      TEXT,
    fqdn        TEXT NOT NULL,
    value       TEXT NOT NULL,
    provider    TEXT NOT NULL,
    zone        TEXT NOT NULL,
    request_id  TEXT,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS journal_value ON journal_entries (zone, fqdn, value, id);
-- An index on certificate was never used (the failed-order clean-up finds values by
-- journal_value) and cost ~11 µs of every insert: files made before lose it here.
DROP INDEX IF EXISTS journal_certificate;
CREATE INDEX IF NOT EXISTS journal_created ON journal_entries (created);
"""


class SqliteJournal:
    """SQLite in WAL mode, shared by processes (`receiver.sqlite.SqliteFile`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = SqliteFile(path, _SCHEMA)

    async def write_batch(
        self,
        entries: Sequence[Entry],
        checks: Sequence[RemovalCheck | None],
        settlements: Sequence[Settlement],
    ) -> list[Recorded]:
        def write(db: sqlite3.Connection) -> list[Recorded]:
            with write_transaction(db):
                if settlements:
                    db.executemany(
                        "UPDATE journal_entries SET outcome = ?, settled = ?, error = ?"
                        " WHERE id = ?",
                        settlements,
                    )
                recorded = []
                for entry, check in zip(entries, checks, strict=True):
                    publisher = None
                    if check is not None:  # sees this batch's earlier entries: inserted
                        publisher = _publisher(db, entry.zone, entry.fqdn, entry.value)
                        if not check.admits(publisher):
                            recorded.append(Recorded(None, publisher))
                            continue
                    entry_id = db.execute(_INSERT, _row(entry)).lastrowid or 0
                    recorded.append(Recorded(entry_id, publisher))
            return recorded

        return await self._file.write_now(write)

    async def candidates(
        self,
        *,
        added_before: float | None = None,
        certificates: Sequence[str] = (),
        sender: str | None = None,
    ) -> list[Entry]:
        where = ["NOT (e.action = 'remove' AND e.outcome = 'done')"]
        params: list[Any] = []
        if added_before is not None:
            where.append("last_add.created <= ?")
            params.append(added_before)
        if certificates:
            where.append(f"last_add.certificate IN ({', '.join('?' for _ in certificates)})")
            params += list(certificates)
        if sender is not None:
            where.append("last_add.sender = ?")
            params.append(sender)
        query = f"""
            SELECT {", ".join(f"e.{c}" for c in _FIELDS)} FROM journal_entries e
            JOIN (SELECT zone, fqdn, value, MAX(id) AS id FROM journal_entries
                  GROUP BY zone, fqdn, value) latest ON e.id = latest.id
            JOIN journal_entries last_add ON last_add.id = (
                SELECT MAX(id) FROM journal_entries a WHERE a.zone = e.zone
                AND a.fqdn = e.fqdn AND a.value = e.value AND a.action = 'add')
            WHERE {" AND ".join(where)} ORDER BY e.id"""  # noqa: S608 - only our own fragments
        rows = await self._file.read(lambda db: db.execute(query, params).fetchall())
        return [_entry(row) for row in rows]

    async def publisher(self, *, zone: str, fqdn: str, value: str) -> Entry | None:
        return await self._file.read_now(lambda db: _publisher(db, zone, fqdn, value))

    async def entries(
        self, *, since: float | None = None, domain: str | None = None, limit: int = 1000
    ) -> list[Entry]:
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        if since is not None:
            where.append("created >= ?")
            params.append(since)
        if domain is not None:  # the name and the names below it: never a pattern
            below = f"%.{_like_literal(domain)}"
            where.append(
                "(domain = ? OR fqdn = ? OR domain LIKE ? ESCAPE '\\' OR fqdn LIKE ? ESCAPE '\\')"
            )
            params += [domain, domain, below, below]
        query = (
            f"SELECT {', '.join(_FIELDS)} FROM journal_entries WHERE "  # noqa: S608
            f"{' AND '.join(where)} ORDER BY id DESC LIMIT ?"
        )
        rows = await self._file.read(lambda db: db.execute(query, (*params, limit)).fetchall())
        return [_entry(row) for row in reversed(rows)]

    async def prune(self, before: float) -> int:
        """Drop settled history older than `before`, except the latest entry of a value
        that may still be published: the sweep still needs that one."""

        def delete(db: sqlite3.Connection) -> int:
            return db.execute(
                """DELETE FROM journal_entries WHERE created < ? AND outcome != 'pending'
                   AND id NOT IN (
                       SELECT e.id FROM journal_entries e
                       JOIN (SELECT MAX(id) AS id FROM journal_entries
                             GROUP BY zone, fqdn, value) latest ON e.id = latest.id
                       WHERE NOT (e.action = 'remove' AND e.outcome = 'done'))""",
                (before,),
            ).rowcount

        return await self._file.run(delete)

    async def aclose(self) -> None:
        await self._file.aclose()


def _publisher(db: sqlite3.Connection, zone: str, fqdn: str, value: str) -> Entry | None:
    key = (zone, fqdn, value)
    rows = db.execute(_LATEST, key).fetchall()
    if rows and rows[0][_ACTION] == "remove" and rows[0][_OUTCOME] != "done":
        rows += db.execute(_LATEST_ADD, key).fetchall()  # a removal not done
    return publisher_of([_entry(row) for row in rows])


def _like_literal(text: str) -> str:
    """`text` inside a LIKE pattern with ESCAPE '\\': its `%`, `_` and `\\` match themselves."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


_FIELDS = tuple(field.name for field in dataclasses.fields(Entry))  # selected in this order
# A value's latest entry; when that is a removal that did not complete, its latest add too.
_LATEST = (
    f"SELECT {', '.join(_FIELDS)} FROM journal_entries"  # noqa: S608 - column names are ours
    " WHERE zone = ? AND fqdn = ? AND value = ? ORDER BY id DESC LIMIT 1"
)
_LATEST_ADD = _LATEST.replace("value = ?", "value = ? AND action = 'add'")
_ACTION, _OUTCOME = _FIELDS.index("action"), _FIELDS.index("outcome")
_INSERTED = [c for c in COLUMNS if c != "id"]
_INSERT = (
    f"INSERT INTO journal_entries ({', '.join(_INSERTED)})"  # noqa: S608 - column names are ours
    f" VALUES ({', '.join('?' for _ in _INSERTED)})"
)


_row = operator.attrgetter(*_INSERTED)  # an entry's values for _INSERT, in order


def _entry(row: Sequence[Any]) -> Entry:
    return Entry(*row)  # selected as _FIELDS
