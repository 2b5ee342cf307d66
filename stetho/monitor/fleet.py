"""The fleet at a glance: each asset's status (OK / WARNING / ALARM), last verdict and recent
scores, worst first -- what ``GET /v1/fleet`` answers and the dashboard's tiles show.

The status rule (the README's "Dashboard" section and the page's help say the same):

- ``ALARM``: the asset has an open (unacknowledged) alert;
- ``WARNING``: no open alert, but at least one of its last ``n`` verdicts (``n`` of the alert
  rules' k-of-n) is anomalous in its machine type's default score mode;
- ``OK``: otherwise (also an asset without verdicts yet).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from stetho.errors import StethoError
from stetho.monitor.db import AlertRow, Database, VerdictRow

#: The statuses, worst first (the fleet's sort order).
STATUSES = ("ALARM", "WARNING", "OK")


def asset_status(open_alerts: int, recent_decisions: Sequence[bool]) -> str:
    """The status of one asset (module docstring): ``"ALARM"`` with at least one open alert, else
    ``"WARNING"`` when any of ``recent_decisions`` (its last ``n`` default-mode decisions) is
    anomalous, else ``"OK"``."""
    if open_alerts < 0:
        raise ValueError(f"open_alerts must be >= 0, got {open_alerts}")
    if open_alerts:
        return "ALARM"
    return "WARNING" if any(recent_decisions) else "OK"


@dataclass(frozen=True)
class FleetAsset:
    """One asset's tile: ``recent`` are its newest ``spark`` default-mode verdicts, oldest first
    (the sparkline); ``last`` the newest of them; ``open_alerts`` its unacknowledged alerts,
    newest first."""

    asset: str
    machine_type: str
    status: str
    default_mode: str | None
    last_recording_at: datetime | None
    last: VerdictRow | None
    recent: tuple[VerdictRow, ...]
    open_alerts: tuple[AlertRow, ...]


def fleet(db: Database, default_mode: Callable[[str], str], n: int = 5, spark: int = 30) -> list[FleetAsset]:
    """Every asset of ``db`` with its status, worst first (ALARM, WARNING, OK), then the newest
    last recording first, then by name.

    Args:
        db: the verdict database.
        default_mode: machine type -> its default score mode (``Scorer.default_mode``); for a
            machine type it raises on (no loaded run serves it any more) the mode of the asset's
            newest verdict is used, first by name.
        n: the alert rules' ``n``: how many newest verdicts decide WARNING.
        spark: how many newest verdicts the sparkline shows (at least ``n`` are read).
    """
    if n < 1 or spark < 1:
        raise ValueError(f"n and spark must be >= 1, got n={n}, spark={spark}")
    open_by_asset: dict[str, list[AlertRow]] = {}
    for alert in db.alerts(open_only=True):
        open_by_asset.setdefault(alert.asset, []).append(alert)
    tiles = []
    for summary in db.assets():
        try:
            mode: str | None = default_mode(summary.machine_type)
        except StethoError:
            newest = db.verdicts(summary.name, limit=1)
            mode = newest[0].score_mode if newest else None
        rows = db.verdicts(summary.name, score_mode=mode, limit=max(n, spark)) if mode else []
        alerts = tuple(open_by_asset.get(summary.name, ()))
        status = asset_status(len(alerts), [r.decision for r in rows[:n]])
        tiles.append(FleetAsset(asset=summary.name, machine_type=summary.machine_type, status=status,
                                default_mode=mode, last_recording_at=summary.last_verdict_at,
                                last=rows[0] if rows else None, recent=tuple(reversed(rows[:spark])),
                                open_alerts=alerts))
    # worst first, then the newest last recording (assets without one last), then by name
    tiles.sort(key=lambda t: t.asset)
    tiles.sort(key=lambda t: t.last_recording_at.timestamp() if t.last_recording_at else float("-inf"),
               reverse=True)
    tiles.sort(key=lambda t: STATUSES.index(t.status))
    return tiles


__all__ = ["FleetAsset", "STATUSES", "asset_status", "fleet"]
