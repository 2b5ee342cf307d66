"""Alembic environment of the monitoring database.

Run by :func:`stetho.monitor.db.open_database` with an open connection in
``config.attributes["connection"]`` (no alembic.ini: ``script_location`` is set in code). For
developers, ``alembic`` on the command line also works with ``-x url=DATABASE_URL``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from stetho.monitor.schema import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    """Migrate over the caller's connection (inside its transaction), or over a new one made from
    ``-x url=...``."""
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    engine = create_engine(url)
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata,
                          render_as_batch=conn.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("stetho's monitoring migrations run online only (open_database does it)")
run_migrations_online()
