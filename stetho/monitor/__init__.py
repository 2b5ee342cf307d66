"""Monitoring: scoring recordings against trained runs (``scoring``), the database of every
verdict (``db``; its tables in ``schema``, its Alembic migrations in ``migrations/``) and the alert
rules over it with their webhook (``alerts``); the step that stores a verdict and runs the rules
(``store``); the audio archive (``archive``) and spectrograms beside the normal profile of a run
(``spectra``); over them the HTTP scoring service (``service``, its recording endpoints in
``recordings``) and the inbox watcher (``watch``)."""
