"""Alembic migrations of the monitoring database (run by ``open_database``)."""
