"""Monitoring: scoring recordings against trained runs (``scoring``) and the database of every
verdict (``db``; its tables in ``schema``, its Alembic migrations in ``migrations/``)."""
