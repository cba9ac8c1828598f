"""acme-dns accounts on PostgreSQL: registered through one replica, usable through all."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from receiver.accounts import VALUES_KEPT, Account, StoredAccount
from receiver.postgres.database import Database


class PostgresAccountStore:
    def __init__(self, database: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._database = database
        self._clock = clock

    async def add(self, account: Account, password_hash: str) -> None:
        async with self._database.connection() as db:
            await db.execute(
                "INSERT INTO acme_dns_accounts VALUES ($1, $2, $3, $4, $5)",
                account.username,
                password_hash,
                account.subdomain,
                json.dumps(account.allow_from),
                self._clock(),
            )

    async def find(self, username: str) -> StoredAccount | None:
        async with self._database.connection() as db:
            row = await db.fetchrow(
                "SELECT password_hash, subdomain, allow_from FROM acme_dns_accounts"
                " WHERE username = $1",
                username,
            )
        if row is None:
            return None
        account = Account(username, row["subdomain"], tuple(json.loads(row["allow_from"])))
        return StoredAccount(account, row["password_hash"])

    async def count(self) -> int:
        async with self._database.connection() as db:
            return int(await db.fetchval("SELECT count(*) FROM acme_dns_accounts"))

    async def keep_latest(self, subdomain: str, value: str) -> list[str]:
        """Record `value` as the newest at `subdomain`; return the values that fall out.

        Replicas updating one subdomain at once are serialised by a transaction-scoped
        advisory lock on it, so exactly the oldest values fall out, once."""
        async with self._database.connection() as db, db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", subdomain)
            await db.execute(
                "INSERT INTO acme_dns_values (subdomain, value, updated) VALUES ($1, $2, $3)"
                " ON CONFLICT (subdomain, value) DO UPDATE SET updated = excluded.updated,"
                " seq = nextval(pg_get_serial_sequence('acme_dns_values', 'seq'))",
                subdomain,
                value,
                self._clock(),
            )
            rows = await db.fetch(
                "SELECT value FROM acme_dns_values WHERE subdomain = $1"
                " ORDER BY updated DESC, seq DESC",
                subdomain,
            )
            evicted = [row["value"] for row in rows[VALUES_KEPT:]]
            if evicted:
                await db.execute(
                    "DELETE FROM acme_dns_values WHERE subdomain = $1 AND value = ANY($2::text[])",
                    subdomain,
                    evicted,
                )
        return evicted

    async def aclose(self) -> None:
        return None  # the Database is closed by its owner
