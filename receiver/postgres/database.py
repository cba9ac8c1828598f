"""One process's way into the shared database: a small pool, opened lazily, migrated once.

The pool connects on first use, not at start: a database that is down when the service
starts costs 503s (nothing is written unrecorded) until it returns, never a crash loop.
A database that is reachable but unusable (wrong password, unknown database, TLS
mismatch, a schema newer than this code) is a `StateMisconfigured` naming the setting;
anything transient is `StateUnavailable`. Neither message ever holds the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import asyncpg
import asyncpg.pool
import structlog

from receiver.config import StateSettings
from receiver.errors import StateMisconfigured, StateUnavailable
from receiver.postgres.migrations import LATEST, MIGRATIONS

log = structlog.get_logger("receiver.postgres")

# pg_advisory_lock keys: one per kind of work that must run once at a time.
LOCKS = {"migrate": 0x6463_7200_0001, "sweep": 0x6463_7200_0002}
_RECONNECT_PAUSE = 1.0  # after a failed connection, callers get the error for this long


def classify(exc: BaseException) -> StateUnavailable:
    """An asyncpg or socket failure as one of ours, with a message fit for users and logs."""
    if isinstance(exc, StateUnavailable):
        return exc
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return StateMisconfigured(f"state.url: the database refused the password ({exc})")
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return StateMisconfigured(f"state.url: the database refused the connection ({exc})")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return StateMisconfigured(f"state.url: {exc}")
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return StateMisconfigured(f"state.url: the role lacks a privilege ({exc})")
    if isinstance(exc, ConnectionError) and "SSL" in str(exc):
        return StateMisconfigured(
            f"state.url: TLS does not match what the server offers ({exc}); set sslmode"
        )
    if isinstance(exc, asyncpg.QueryCanceledError):
        return StateUnavailable(f"the database did not answer in time ({exc})")
    detail = str(exc) or type(exc).__name__
    return StateUnavailable(f"the database is unavailable ({detail})")


# What a pooled connection is; queries are the same as on a plain connection.
Connection: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
# What says "the database cannot be used now" (a constraint violation is a bug, not this).
TRANSIENT = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection caught mid-operation by a shutdown
    asyncpg.PostgresConnectionError,  # connection lost
    asyncpg.OperatorInterventionError,  # shutting down, starting up, statement timeout
    asyncpg.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.TransactionRollbackError,  # serialization failure, deadlock
    asyncpg.ReadOnlySQLTransactionError,  # a replica, right after a failover
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InsufficientPrivilegeError,
)


class Database:
    def __init__(self, settings: StateSettings, *, clock: Callable[[], float] = time.monotonic):
        assert settings.url is not None
        self.settings = settings
        self.url = settings.url
        self._clock = clock
        self._pool: asyncpg.Pool | None = None
        self._schema_checked = False
        self._schema_lock = asyncio.Lock()
        self._failed_until = 0.0
        self._last_error: StateUnavailable | None = None

    def _connect_options(self) -> dict[str, Any]:
        return {
            "timeout": self.settings.connect_timeout_seconds,
            "command_timeout": self.settings.statement_timeout_seconds + 1,
            "server_settings": {
                "statement_timeout": str(int(self.settings.statement_timeout_seconds * 1000)),
                "jit": "off",  # small queries: compiling them only adds latency
                "application_name": "dns-challenge-receiver",
            },
        }

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:  # with min_size 0, creating the pool connects nothing
            pool = await asyncpg.create_pool(
                self.url.reveal(),
                min_size=0,
                max_size=self.settings.max_connections,
                **self._connect_options(),
            )
            if self._pool is None:
                self._pool = pool
            else:  # another caller won the race
                await pool.close()
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection to a database whose schema this code understands."""
        if self._clock() < self._failed_until and self._last_error is not None:
            raise self._last_error  # do not hammer a database that just refused
        try:
            pool = await self._get_pool()
            async with pool.acquire(timeout=self.settings.connect_timeout_seconds) as connection:
                if not self._schema_checked:
                    await self._check_schema()
                yield connection
        except TRANSIENT as exc:
            error = classify(exc)
            if isinstance(exc, OSError | asyncio.TimeoutError) or isinstance(
                error, StateMisconfigured
            ):
                self._failed_until = self._clock() + _RECONNECT_PAUSE
                self._last_error = error
            raise error from exc

    async def _check_schema(self) -> None:
        async with self._schema_lock:
            if not self._schema_checked:
                await self.migrate()

    async def migrate(self) -> list[int]:
        """Apply the migrations this database lacks (under an advisory lock, so replicas
        starting together migrate once); return the versions applied."""
        try:
            connection = await asyncpg.connect(self.url.reveal(), **self._connect_options())
        except TRANSIENT as exc:
            raise classify(exc) from exc
        try:
            await connection.execute("SET statement_timeout = 0")  # DDL may take its time
            await connection.execute("SELECT pg_advisory_lock($1)", LOCKS["migrate"])
            applied = await _apply(connection)
        except TRANSIENT as exc:
            raise classify(exc) from exc
        finally:
            await connection.close()
        if applied:
            log.info("database_migrated", applied=applied, schema_version=LATEST)
        self._schema_checked = True
        return applied

    async def schema_version(self) -> int:
        async with self.connection() as connection:
            return await _current_version(connection)

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        """Yield True while holding the cluster-wide lock `name`, False if another holds it.

        The lock lives in a transaction on a connection of its own: the work it guards
        (a sweep) needs the pool's connections, even a pool of one, and a transaction
        keeps the lock on one server connection behind a transaction-pooling proxy."""
        try:
            connection = await asyncpg.connect(self.url.reveal(), **self._connect_options())
        except TRANSIENT as exc:
            raise classify(exc) from exc
        try:
            try:
                await connection.execute("BEGIN; SET LOCAL statement_timeout = 0")
                held = await connection.fetchval(
                    "SELECT pg_try_advisory_xact_lock($1)", LOCKS[name]
                )
            except TRANSIENT as exc:
                raise classify(exc) from exc
            yield bool(held)
        finally:  # ending the transaction releases the lock; a dead connection, too
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.settings.connect_timeout_seconds):
                    await connection.execute("ROLLBACK")
                    await connection.close()
            connection.terminate()

    async def aclose(self) -> None:
        """Close gracefully, but never wait on a stuck query for longer than one may run."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self.settings.statement_timeout_seconds + 1)
            except TimeoutError:
                pool.terminate()


async def _current_version(connection: Connection | asyncpg.Connection) -> int:
    exists = await connection.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    version = await connection.fetchval("SELECT max(version) FROM schema_migrations")
    return int(version or 0)


async def _apply(connection: asyncpg.Connection) -> list[int]:
    await connection.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " applied DOUBLE PRECISION NOT NULL)"
    )
    current = await _current_version(connection)
    if current > LATEST:
        raise StateMisconfigured(
            f"state.url: the database schema is version {current}, newer than this "
            f"dns-challenge-receiver understands ({LATEST}); upgrade the receiver"
        )
    applied = []
    for migration in MIGRATIONS:
        if migration.version <= current:
            continue
        async with connection.transaction():
            await connection.execute(migration.sql)
            await connection.execute(
                "INSERT INTO schema_migrations VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                time.time(),
            )
        applied.append(migration.version)
    return applied
