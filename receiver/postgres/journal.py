"""The journal on PostgreSQL: the same entries and queries as `SqliteJournal`, shared by
every replica, so a failed order reaching one replica cleans up what another wrote."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import asyncpg

from receiver.journal import COLUMNS, Entry, Recorded, RemovalCheck, Settlement, publisher_of
from receiver.postgres.database import Connection, Database

_SELECTED = ", ".join(f'e."{c}"' for c in COLUMNS)
_INSERTED = [c for c in COLUMNS if c != "id"]
_NAMES = ", ".join(f'"{c}"' for c in ["id", *_INSERTED])  # "user" is a reserved word here
_MARKS = ", ".join(f"${i}" for i in range(1, len(_INSERTED) + 2))
_INSERT = f"INSERT INTO journal_entries ({_NAMES}) VALUES ({_MARKS})"  # noqa: S608
_NEXT_IDS = (
    "SELECT nextval(pg_get_serial_sequence('journal_entries', 'id'))"
    " FROM generate_series(1, $1) ORDER BY 1"
)
# The latest entry of every value, and the latest add of each (what the sweep reads).
_LATEST = """
    SELECT DISTINCT ON (zone, fqdn, value) id FROM journal_entries
    ORDER BY zone, fqdn, value, id DESC
"""

# A value's latest entry and its latest add, newest first (`publisher_of`).
_PUBLISHER = f"""
    SELECT {_SELECTED} FROM journal_entries e
    WHERE e.zone = $1 AND e.fqdn = $2 AND e.value = $3 AND (e.action = 'add' OR e.id = (
        SELECT max(id) FROM journal_entries WHERE zone = $1 AND fqdn = $2 AND value = $3))
    ORDER BY e.id DESC LIMIT 2"""  # noqa: S608 - column names are ours


class PostgresJournal:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def write_batch(
        self,
        entries: Sequence[Entry],
        checks: Sequence[RemovalCheck | None],
        settlements: Sequence[Settlement],
    ) -> list[Recorded]:
        """One transaction; ids are drawn first so that each entry knows its own (one a
        check refuses leaves a gap)."""
        async with self._database.connection() as db, db.transaction():
            if settlements:
                await db.executemany(
                    "UPDATE journal_entries SET outcome = $1, settled = $2, error = $3"
                    " WHERE id = $4",
                    settlements,
                )
            if not entries:
                return []
            ids = [int(row[0]) for row in await db.fetch(_NEXT_IDS, len(entries))]
            if any(check is not None for check in checks):
                recorded = await _judged(db, entries, checks, ids)
            else:
                recorded = [Recorded(entry_id) for entry_id in ids]
            admitted = zip(recorded, entries, strict=True)
            rows = [(r.entry_id, *_values(e)) for r, e in admitted if r.entry_id is not None]
            await db.executemany(_INSERT, rows)
        return recorded

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
            params.append(added_before)
            where.append(f"last_add.created <= ${len(params)}")
        if certificates:
            params.append(list(certificates))
            where.append(f"last_add.certificate = ANY(${len(params)}::text[])")
        if sender is not None:
            params.append(sender)
            where.append(f"last_add.sender = ${len(params)}")
        query = f"""
            SELECT {_SELECTED} FROM journal_entries e
            JOIN ({_LATEST}) latest ON e.id = latest.id
            JOIN LATERAL (
                SELECT a.created, a.certificate, a.sender FROM journal_entries a
                WHERE a.zone = e.zone AND a.fqdn = e.fqdn AND a.value = e.value
                AND a.action = 'add' ORDER BY a.id DESC LIMIT 1) last_add ON TRUE
            WHERE {" AND ".join(where)} ORDER BY e.id"""  # noqa: S608 - only our own fragments
        async with self._database.connection() as db:
            rows = await db.fetch(query, *params)
        return [_entry(row) for row in rows]

    async def publisher(self, *, zone: str, fqdn: str, value: str) -> Entry | None:
        """The latest add of a value that may still be published (see `Journal`)."""
        async with self._database.connection() as db:
            rows = await db.fetch(_PUBLISHER, zone, fqdn, value)
        return publisher_of([_entry(row) for row in rows])

    async def entries(
        self, *, since: float | None = None, domain: str | None = None, limit: int = 1000
    ) -> list[Entry]:
        where: list[str] = ["TRUE"]
        params: list[Any] = []
        if since is not None:
            params.append(since)
            where.append(f"e.created >= ${len(params)}")
        if domain is not None:  # the name and the names below it: never a pattern
            params.append(domain)
            n = len(params)
            where.append(
                f"(e.domain = ${n} OR e.fqdn = ${n}"
                f" OR right(e.domain, char_length(${n}) + 1) = '.' || ${n}"
                f" OR right(e.fqdn, char_length(${n}) + 1) = '.' || ${n})"
            )
        params.append(limit)
        query = (
            f"SELECT {_SELECTED} FROM journal_entries e WHERE "  # noqa: S608
            f"{' AND '.join(where)} ORDER BY e.id DESC LIMIT ${len(params)}"
        )
        async with self._database.connection() as db:
            rows = await db.fetch(query, *params)
        return [_entry(row) for row in reversed(rows)]

    async def prune(self, before: float) -> int:
        """Drop settled history older than `before`, except the latest entry of a value
        that may still be published: the sweep still needs that one."""
        async with self._database.connection() as db:
            status = await db.execute(
                f"""DELETE FROM journal_entries WHERE created < $1 AND outcome != 'pending'
                    AND id NOT IN (
                        SELECT e.id FROM journal_entries e JOIN ({_LATEST}) latest
                        ON e.id = latest.id
                        WHERE NOT (e.action = 'remove' AND e.outcome = 'done'))""",  # noqa: S608
                before,
            )
        return int(status.split()[-1])

    async def aclose(self) -> None:
        return None  # the Database is closed by its owner


async def _judged(
    db: Connection,
    entries: Sequence[Entry],
    checks: Sequence[RemovalCheck | None],
    ids: Sequence[int],
) -> list[Recorded]:
    """What each check makes of its entry against the committed journal and this
    batch's earlier admitted entries (not inserted yet: they go in together)."""
    latest: dict[tuple[str, str, str], list[Entry]] = {}  # checked values, newest first
    for entry, check in zip(entries, checks, strict=True):
        key = (entry.zone, entry.fqdn, entry.value)
        if check is not None and key not in latest:
            latest[key] = [_entry(row) for row in await db.fetch(_PUBLISHER, *key)]
    recorded = []
    for entry, check, entry_id in zip(entries, checks, ids, strict=True):
        history = latest.get((entry.zone, entry.fqdn, entry.value))
        publisher = None
        if check is not None:
            assert history is not None
            publisher = publisher_of(history)
            if not check.admits(publisher):
                recorded.append(Recorded(None, publisher))
                continue
        if history is not None:
            history.insert(0, dataclasses.replace(entry, id=entry_id))
        recorded.append(Recorded(entry_id, publisher))
    return recorded


def _values(entry: Entry) -> list[object]:
    return [getattr(entry, c) for c in _INSERTED]


def _entry(row: asyncpg.Record) -> Entry:
    return Entry(**{c: row[c] for c in COLUMNS})
