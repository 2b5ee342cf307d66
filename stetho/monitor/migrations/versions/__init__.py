"""Alembic revisions of the monitoring database, oldest first."""
