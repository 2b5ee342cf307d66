"""Alert rules over the verdict database, and a webhook that announces new alerts.

Two rules watch each (asset, score mode), evaluated after every stored verdict:

- ``k_of_n``: at least ``k`` of the last ``n`` verdicts (by recording time) are anomalous. One
  anomalous recording is often a door slamming next to the microphone; several among the last few
  is a machine that sounds wrong.
- ``drift``: the median score of the last ``drift_window`` verdicts is above the threshold of the
  newest one. The median ignores up to half the window of outliers, so it follows the level the
  machine settles at rather than single loud recordings; it fires even when the single decisions
  were taken against other (e.g. higher, older) thresholds.

An alert is stored once (:meth:`stetho.monitor.db.Database.raise_alert`): while it is open (not
acknowledged) its rule stays silent for that asset and mode; after acknowledgement a new episode
counts only verdicts of recordings newer than the newest one that raised the acknowledged alert.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from stetho.errors import ConfigError
from stetho.monitor.db import AlertRow, Database, VerdictRow, utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlertRules:
    """The alert rules' parameters.

    ``k`` of the last ``n`` verdicts anomalous (default 3 of 5, the issue's default: a single
    anomalous recording does not alarm, three within five do, so a fault shows within a few
    recordings while isolated false alarms at the calibrated rate, about 10 %, almost never line
    up: three of five at 10 % independent false alarms is about 0.9 %). ``drift_window``
    verdicts for the rolling median (default 9, at least 3: a median of fewer is one or two
    recordings; 9 spans about twice ``n`` and ignores up to 4 outliers).

    ``modes``: the score modes the rules watch. ``"default"`` (the default): only the detector's
    own mode (:attr:`~stetho.monitor.scoring.Verdict.default_mode`, the decision ``stetho test``
    reports), so one fault raises one alert per rule, not one per mode; ``"all"``: every mode the
    model scores; or a tuple of mode names (those a verdict lacks are skipped).
    """

    k: int = 3
    n: int = 5
    drift_window: int = 9
    modes: str | tuple[str, ...] = "default"

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n:
            raise ConfigError(f"alert rules: k={self.k}, n={self.n}: need 1 <= k <= n")
        if self.drift_window < 3:
            raise ConfigError(f"alert rules: drift_window={self.drift_window}: need at least 3 verdicts")
        if isinstance(self.modes, str) and self.modes not in ("default", "all"):
            raise ConfigError(f"alert rules: modes={self.modes!r}: 'default', 'all' or a list of score modes")
        if not isinstance(self.modes, str) and not self.modes:
            raise ConfigError("alert rules: modes is empty: name at least one score mode, or 'default' / 'all'")

    def check_modes(self, known: Any) -> None:
        """Refuse (:class:`ConfigError`) named ``modes`` that none of ``known`` (the score modes the
        loaded models score) is: a misspelt mode would otherwise silence the alerts."""
        if isinstance(self.modes, str):
            return
        known = sorted(set(known))
        unknown = [m for m in self.modes if m not in known]
        if unknown:
            raise ConfigError(f"alert rules: unknown score mode(s) {', '.join(unknown)}; the loaded models score "
                              f"{', '.join(known)}")

    def modes_of(self, verdict: Any) -> list[str]:
        """The score modes of ``verdict`` (a :class:`~stetho.monitor.scoring.Verdict`) these rules watch."""
        if self.modes == "all":
            return list(verdict.modes)
        if self.modes == "default":
            default = verdict.default_mode if verdict.default_mode in verdict.modes else next(iter(verdict.modes))
            return [default]
        return [m for m in self.modes if m in verdict.modes]

    def evaluate(self, db: Database, asset: str, score_mode: str,
                 raised_at: datetime | None = None) -> list[int]:
        """Apply both rules to the newest verdicts of ``asset`` in ``score_mode`` (call it after
        each stored verdict); returns the ids of the alerts it stored (``k_of_n`` first), usually
        none. ``raised_at`` defaults to now."""
        when = raised_at or utc_now()
        new = []
        for rule, check in (("k_of_n", self._k_of_n), ("drift", self._drift)):
            latest = db.latest_alert(asset, score_mode, rule)
            if latest is not None and latest.acknowledged_at is None:
                continue  # stored once: the open alert stands for this episode
            window = db.last_verdicts(asset, score_mode, self.n if rule == "k_of_n" else self.drift_window,
                                      newer_than=latest.recording_ids if latest else ())
            fired = check(window, asset, score_mode)
            if fired is None:
                continue
            message, recordings = fired
            alert_id = db.raise_alert(asset, score_mode, rule, message, recordings, raised_at=when)
            if alert_id is not None:  # None: another process stored it first
                log.info("alert %d: %s", alert_id, message)
                new.append(alert_id)
        return new

    def _k_of_n(self, window: list[VerdictRow], asset: str, mode: str) -> tuple[str, list[int]] | None:
        """Fewer than ``n`` verdicts (a new asset, a new episode) still fire with ``k`` anomalous."""
        anomalous = [v.recording_id for v in window if v.decision]
        if len(anomalous) < self.k:
            return None
        return (f"{len(anomalous)} of the last {len(window)} recordings of {asset} were anomalous ({mode})",
                anomalous)

    def _drift(self, window: list[VerdictRow], asset: str, mode: str) -> tuple[str, list[int]] | None:
        """Needs a full window: the median of a few recordings is not a level."""
        if len(window) < self.drift_window:
            return None
        median = statistics.median(v.score for v in window)
        threshold = window[0].threshold  # newest first: the threshold now in force
        if not median > threshold:
            return None
        return (f"the median score of the last {len(window)} recordings of {asset} is {median:.4g}, "
                f"above the threshold {threshold:.4g} ({mode})", [v.recording_id for v in window])


def alert_payload(alert: AlertRow) -> dict[str, Any]:
    """The JSON a webhook receives for ``alert``."""
    return {"id": alert.id, "asset": alert.asset, "score_mode": alert.score_mode, "rule": alert.rule,
            "message": alert.message, "raised_at": alert.raised_at.isoformat(),
            "recording_ids": list(alert.recording_ids)}


class Webhook:
    """POSTs each new alert as JSON (:func:`alert_payload`) to ``url``.

    A failed POST (unreachable, timeout after ``timeout`` seconds, a status other than 2xx) is
    logged and tried again up to ``retries`` more times, ``backoff`` × attempt seconds apart;
    :meth:`send` never raises, so a broken receiver cannot break scoring. Standard library only.
    """

    def __init__(self, url: str, timeout: float = 5.0, retries: int = 2, backoff: float = 1.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"webhook {url!r}: not an http:// or https:// URL")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ConfigError(f"webhook {url}: need timeout > 0, retries >= 0, backoff >= 0")
        self.url, self.timeout, self.retries, self.backoff = url, float(timeout), int(retries), float(backoff)

    def send(self, alert: AlertRow) -> bool:
        """POST ``alert``; ``True`` when the receiver answered 2xx, ``False`` after every attempt
        failed (each failure logged as a warning)."""
        body = json.dumps(alert_payload(alert)).encode("utf-8")
        for attempt in range(1, self.retries + 2):
            request = urllib.request.Request(self.url, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                    return True  # urlopen raises HTTPError for any status >= 400
            except urllib.error.HTTPError as exc:
                why = f"HTTP {exc.code}"
            except Exception as exc:  # unreachable, refused, timeout, bad answer: never into scoring
                why = str(getattr(exc, "reason", None) or exc)
            log.warning("webhook %s: alert %d, attempt %d of %d failed: %s", self.url, alert.id, attempt,
                        self.retries + 1, why)
            if attempt <= self.retries and self.backoff:
                time.sleep(self.backoff * attempt)
        return False
