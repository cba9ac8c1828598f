"""Shared state on PostgreSQL (`[state]`): the journal, acme-dns accounts and `local` records
of every replica, host and serverless invocation in one database. asyncpg is imported only
here, and only when `[state]` is set."""
