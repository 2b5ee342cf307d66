"""Alembic environment of the monitoring database.

Run by :func:`stetho.monitor.db.open_database` with an open connection, inside its transaction, in
``config.attributes["connection"]`` (no alembic.ini: ``script_location`` is set in code).

A new revision after a change of :mod:`stetho.monitor.schema`: open a database at the current head
and, with that ``Config`` and connection, call ``alembic.command.revision(cfg, message=...,
autogenerate=True)``; then edit the file to name plain SQLAlchemy types (revisions are frozen) and
check it with ``tests/test_monitor_db.py``.
"""

from __future__ import annotations

from alembic import context

from stetho.monitor.schema import Base

config = context.config
connection = config.attributes.get("connection")
if context.is_offline_mode() or connection is None:
    raise SystemExit("stetho's monitoring migrations run through stetho.monitor.db.open_database "
                     "(online, on its connection)")
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
