"""Alembic environment: runs on the connection handed over by `prescaler.db.migrate` (no alembic.ini)."""

from __future__ import annotations

from alembic import context

from prescaler.db import VERSION_TABLE, metadata

# Any constant works; it only has to be the same in every process that migrates this schema.
_MIGRATION_LOCK_KEY = 0x7072657363616C65  # "prescale"


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("prescaler migrations run through prescaler.db.migrate(engine)")
    if connection.dialect.name == "postgresql":
        # Operators, CLI and tests may migrate concurrently; the transaction-scoped lock serialises them.
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})")
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE,
                      transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported")
run_migrations_online()
