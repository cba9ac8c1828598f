"""Where everything the receiver remembers lives, chosen by one setting.

Without `[state]`: SQLite files on this host (the journal and the acme-dns accounts in
one file, each `local` zone's records in its `database`), right for one process or a few
on one host. With `[state] url_env`/`url_file`: one PostgreSQL database for the journal,
the accounts and the `local` records, shared by every replica, host and serverless
invocation; asyncpg is imported only then.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from receiver.config import Settings
from receiver.errors import ConfigError, StateMisconfigured, StateUnavailable

log = structlog.get_logger("receiver.state")

if TYPE_CHECKING:
    from providers.local import LocalSettings, RecordStore
    from receiver.accounts import AccountStore
    from receiver.journal import Journal
    from receiver.postgres.database import Database
    from receiver.postgres.records import RecordMirror


@dataclass(eq=False)  # open stores, equal only to themselves
class State:
    """Everything the receiver remembers, on one host's SQLite files or one database."""

    journal: Journal | None  # None when `[journal] enabled = false`
    accounts: AccountStore | None  # None when the acme-dns door is off
    database: Database | None = None  # the PostgreSQL pool, when `[state]` is set

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[State]:
        async with AsyncExitStack() as stack:
            if settings.state.url is None:
                yield _sqlite(settings, stack)
            else:
                yield await _postgres(settings, stack)

    @property
    def shared(self) -> bool:
        return self.database is not None

    def local_records(self, options: LocalSettings) -> RecordStore | None:
        """The store for `local` zones with these options: shared, or None for their
        own SQLite file (`options.database`)."""
        if self.database is None:
            return None
        from receiver.postgres.records import PostgresRecords

        return PostgresRecords(self.database, lifetime=options.value_lifetime_seconds)

    async def prepare(self) -> None:
        """A server's start: migrate now if the database answers. A database that cannot
        be used is a configuration error (refuse to start); one that does not answer is
        waited for (503s until it does, then it migrates by itself)."""
        if self.database is None:
            return
        try:
            await self.database.migrate()
        except StateMisconfigured as exc:
            raise ConfigError([exc.reason]) from None
        except StateUnavailable as exc:
            log.warning("database_unavailable", error=exc.reason)

    async def readiness(self) -> dict[str, str]:
        """The database's check for /readyz: reachable, and its schema version."""
        if self.database is None:
            return {}
        try:
            version = await self.database.schema_version()
        except StateUnavailable as exc:
            return {"database": exc.reason}
        return {"database": f"ok (schema version {version})"}

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        """True while this process alone runs `name` (a sweep) across all that share the
        state; on SQLite, always True (concurrent sweeps are safe there, only wasteful)."""
        if self.database is None:
            yield True
            return
        async with self.database.exclusive(name) as held:
            yield held

    async def mirror(self, stack: AsyncExitStack) -> RecordMirror:
        """The responder's in-memory view of shared `local` records, kept current."""
        assert self.database is not None
        from receiver.postgres.records import RecordMirror

        mirror = RecordMirror(self.database)
        await mirror.start()
        stack.push_async_callback(mirror.aclose)
        return mirror


def _sqlite(settings: Settings, stack: AsyncExitStack) -> State:
    database = settings.journal.database
    assert database is not None  # set by config whenever [state] is not
    journal = None
    if settings.journal.enabled:
        from receiver.journal import GroupCommit
        from receiver.sqlite.journal import SqliteJournal

        journal = GroupCommit(SqliteJournal(database))
        stack.push_async_callback(journal.aclose)
    accounts = None
    if settings.acme_dns is not None and settings.acme_dns.enabled:
        from receiver.sqlite.accounts import SqliteAccountStore

        accounts = SqliteAccountStore(database)
        stack.push_async_callback(accounts.aclose)
    return State(journal=journal, accounts=accounts)


async def _postgres(settings: Settings, stack: AsyncExitStack) -> State:
    from receiver.postgres.accounts import PostgresAccountStore
    from receiver.postgres.database import Database
    from receiver.postgres.journal import PostgresJournal

    database = Database(settings.state)
    stack.push_async_callback(database.aclose)
    journal = None
    if settings.journal.enabled:  # closed before the database: its last batch goes out
        from receiver.journal import GroupCommit

        journal = GroupCommit(PostgresJournal(database))
        stack.push_async_callback(journal.aclose)
    acme_dns = settings.acme_dns is not None and settings.acme_dns.enabled
    return State(
        journal=journal,
        accounts=PostgresAccountStore(database) if acme_dns else None,
        database=database,
    )
