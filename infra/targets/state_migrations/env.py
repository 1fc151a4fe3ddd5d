"""Alembic environment of the deployment-state database: migrations run on the connection the store hands in."""

from alembic import context

context.configure(connection=context.config.attributes["connection"], version_table="slmops_state_version")
with context.begin_transaction():
    context.run_migrations()
