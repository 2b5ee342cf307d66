"""Monitoring: scoring recordings against trained runs (``scoring``), the database of every
verdict (``db``; its tables in ``schema``, its Alembic migrations in ``migrations/``) and the alert
rules over it with their webhook (``alerts``); the HTTP scoring service over them (``service``)."""
