"""The PostgreSQL schema as numbered migrations, applied in order, each in a transaction.

Never edit a migration that has shipped: add the next one. The `schema_migrations` table
records what a database has; a database ahead of this code is refused, not guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "journal, acme-dns accounts, local records",
        """
        CREATE TABLE journal_entries (
            id          BIGSERIAL PRIMARY KEY,
            created     DOUBLE PRECISION NOT NULL,
            settled     DOUBLE PRECISION,
            action      TEXT NOT NULL CHECK (action IN ('add', 'remove')),
            outcome     TEXT NOT NULL CHECK (outcome IN ('pending', 'done', 'failed')),
            door        TEXT NOT NULL,
            sender      TEXT,
            "user"      TEXT,
            certificate TEXT,
            domain      TEXT,
            fqdn        TEXT NOT NULL,
            value       TEXT NOT NULL,
            provider    TEXT NOT NULL,
            zone        TEXT NOT NULL,
            request_id  TEXT,
            error       TEXT
        );
        CREATE INDEX journal_value ON journal_entries (zone, fqdn, value, id);
        CREATE INDEX journal_certificate ON journal_entries (certificate);
        CREATE INDEX journal_created ON journal_entries (created);

        CREATE TABLE acme_dns_accounts (
            username      TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            subdomain     TEXT NOT NULL UNIQUE,
            allow_from    TEXT NOT NULL,
            created       DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE acme_dns_values (
            subdomain TEXT NOT NULL,
            value     TEXT NOT NULL,
            updated   DOUBLE PRECISION NOT NULL,
            seq       BIGSERIAL NOT NULL,
            PRIMARY KEY (subdomain, value)
        );

        CREATE TABLE txt_values (
            fqdn    TEXT NOT NULL,
            value   TEXT NOT NULL,
            ttl     INTEGER NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            expires DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (fqdn, value)
        );
        CREATE INDEX txt_values_expires ON txt_values (expires);
        CREATE TABLE store_meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
        """,
    ),
    Migration(
        2,
        "Secrets Manager door: per-secret leases, validations asked",
        """
        CREATE TABLE secrets_manager_leases (
            secret TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            until  DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE secrets_manager_validations (
            secret    TEXT NOT NULL,
            order_key TEXT NOT NULL,
            asked     DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (secret, order_key)
        );
        """,
    ),
    Migration(
        3,
        "journal: drop the certificate index, which no query uses",
        # The failed-order clean-up filters on the latest add per value (a LATERAL join):
        # its plan never touched this index, and every insert paid for it (as on SQLite).
        "DROP INDEX IF EXISTS journal_certificate;",
    ),
)
LATEST = MIGRATIONS[-1].version
