"""Monitoring: the database of every verdict (``db``)."""
