"""The step the service and the watcher share: store a :class:`~stetho.monitor.scoring.Verdict`
as one recording with its per-mode verdicts, then run the alert rules on the asset.

It lives here rather than in :mod:`stetho.monitor.service` so the watcher need not import FastAPI.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from stetho.monitor.db import Database, Recorded, RecordingFacts, RunFacts
from stetho.monitor.scoring import Verdict


def store_verdict(db: Database, asset: str, verdict: Verdict, *, path: str, recorded_at: datetime,
                  source: str) -> Recorded:
    """Store ``verdict`` of the recording at ``path`` (recorded at the timezone-aware ``recorded_at``)
    for ``asset`` in one transaction. The same bytes already stored for the asset are not stored
    again: :class:`~stetho.monitor.db.Recorded` then has ``created=False``."""
    facts = RecordingFacts(path=path, sha256=verdict.sha256, recorded_at=recorded_at,
                           duration_s=verdict.duration_s, sample_rate=verdict.sample_rate, source=source,
                           section=verdict.section)
    run = RunFacts(path=str(verdict.run.path), run_hash=verdict.run.run_id,
                   stetho_version=verdict.run.version or "unknown", model=verdict.run.model)
    rows = [(m, v.score, v.threshold, v.decision) for m, v in verdict.modes.items()]
    return db.record(asset, verdict.machine_type, facts, run, rows)


def evaluate_rules(db: Database, asset: str, verdict: Verdict, rules: Any) -> list[int]:
    """Ids of the alerts ``rules`` (``evaluate(db, asset, score_mode) -> ids``, e.g.
    :class:`~stetho.monitor.alerts.AlertRules`) raise for the score modes of ``verdict`` they
    watch (``rules.modes_of(verdict)``; every mode for rules without it); ``rules=None`` raises
    none. Call it after a newly stored verdict only."""
    if rules is None:
        return []
    raised: list[int] = []
    modes = rules.modes_of(verdict) if hasattr(rules, "modes_of") else list(verdict.modes)
    for mode in modes:
        raised += list(rules.evaluate(db, asset, mode))
    return raised


__all__ = ["evaluate_rules", "store_verdict"]
