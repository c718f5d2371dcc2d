"""Alembic environment for the post ledger.

Migrations run through `Ledger.upgrade()`, which hands over an open connection (inside its transaction and, on
PostgreSQL, its advisory lock), so there is no alembic.ini. To write the next revision, do the same by hand:
a `Config` with `script_location` set to this folder, `config.attributes["connection"]` set to a connection
to an upgraded database, then `alembic.command.revision(config, message, autogenerate=True)`.

The version table has its own name so that the ledger can share a database with Dagster's storage, which keeps
its own `alembic_version`.
"""

from __future__ import annotations

from alembic import context

from influencer_pipeline.publishing.ledger import VERSION_TABLE, Base

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise SystemExit("the post ledger migrations run online, on a connection: use Ledger(url).upgrade()")
context.configure(connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
