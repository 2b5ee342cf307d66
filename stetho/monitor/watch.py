"""The inbox watcher behind ``stetho watch``: score every recording dropped into a folder exactly
once, store its verdict, and record every bad file as a rejection.

Layout: ``INBOX/<asset>/.../*.wav`` — the asset is the first folder below ``INBOX``. The machine
type of an asset is, in this order: the one given (``machine_types``, ``--machine-type``), the one
line of ``INBOX/<asset>/machine_type``, else the loaded runs' only one. ``INBOX/done/`` and
``INBOX/rejected/`` are where ``move=True`` puts files (``<asset>/<path below it>``); they and
hidden folders are never assets.

When a file is complete: a name ending in ``.part`` is never touched (write ``x.wav.part``, then
rename to ``x.wav``); any other file is taken once its modification time is ``settle_seconds`` old,
so a file still being copied (its mtime moves with each write) waits.

Exactly once, across crashes: the database is the ledger. Before scoring, the file's SHA-256 is
looked up: a recording of the asset with those bytes already stored (a crash hit between storing and
moving, or a restart without ``move``) is not scored again, only moved; a rejection of the same path
and SHA-256 likewise. Storing is one transaction keyed on (asset, sha256), so a kill -9 at any point
leaves either nothing or the whole verdict, and the next pass completes what is missing.

Polling, not ``watchdog``: inotify (what ``watchdog`` uses on Linux) sees nothing on NFS and SMB
shares, where recorders often drop their files, and its events say only that a file was touched,
not that it is complete — a scan of sizes and times is needed anyway, and after a restart a full
scan is needed to find what arrived while it was down. One ``scandir`` pass a second costs next to
nothing for thousands of files, works on every filesystem and adds no dependency.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from stetho.errors import ConfigError, DatabaseError, ScoringError, StorageError
from stetho.monitor.archive import AudioArchive
from stetho.monitor.db import Database
from stetho.monitor.scoring import Scorer
from stetho.monitor.store import evaluate_rules, store_verdict

log = logging.getLogger(__name__)

#: Folders of ``INBOX`` that are not assets: where ``move=True`` puts scored and rejected files.
DONE, REJECTED = "done", "rejected"
#: The one-line file in an asset's folder naming its machine type.
MACHINE_TYPE_FILE = "machine_type"
#: Suffix of a file still being written (taken once renamed).
PARTIAL_SUFFIX = ".part"


@dataclass
class ScanResult:
    """What one :meth:`Watcher.scan_once` pass did, each list sorted by path.

    ``scored``: newly scored and stored; ``stored_before``: already in the database (a restart), not
    scored again; ``rejected``: stored as rejections; ``waiting``: ``*.part`` or not yet settled;
    ``alerts``: ids of alerts raised.
    """

    scored: list[Path] = field(default_factory=list)
    stored_before: list[Path] = field(default_factory=list)
    rejected: list[Path] = field(default_factory=list)
    waiting: list[Path] = field(default_factory=list)
    alerts: list[int] = field(default_factory=list)


class Watcher:
    """Score the recordings of ``inbox`` with ``scorer`` into ``db``.

    Args:
        inbox: the folder watched (``<asset>/.../*.wav``).
        scorer: the loaded runs.
        db: the verdict database (the ledger of what was done).
        machine_types: the machine type of every asset (a string) or per asset (a mapping); assets not
            named fall back to ``<asset>/machine_type``, then to the runs' only machine type.
        poll_seconds: pause between passes of :meth:`run`.
        settle_seconds: how old a file's modification time must be before it is taken.
        move: move each handled file to ``inbox/done/`` or ``inbox/rejected/`` (else leave it; it is
            remembered, and after a restart found in the database by its SHA-256).
        rules: alert rules evaluated after each new verdict (``None``: none).
        webhook: where new alerts are sent (``send(alert_row)``), or ``None``.
        archive: where each scored file's bytes are kept before its verdict is stored
            (:class:`~stetho.monitor.archive.AudioArchive`); a file that cannot be kept is not
            stored and is tried again on the next pass. ``None``: the file itself (in the inbox, or
            in ``done/`` after a move) is the only copy.
    """

    def __init__(self, inbox: str | Path, scorer: Scorer, db: Database,
                 machine_types: str | Mapping[str, str] | None = None, poll_seconds: float = 1.0,
                 settle_seconds: float = 2.0, move: bool = False, rules: Any = None, webhook: Any = None,
                 archive: AudioArchive | None = None) -> None:
        self.inbox = Path(inbox)
        if not self.inbox.is_dir():
            raise ConfigError(f"{self.inbox}: the inbox is not a folder")
        if not poll_seconds > 0 or not settle_seconds >= 0:
            raise ConfigError(f"{self.inbox}: poll_seconds must be above 0 and settle_seconds at least 0, "
                              f"got {poll_seconds} and {settle_seconds}")
        self.scorer, self.db = scorer, db
        self.machine_types = machine_types
        self.poll_seconds, self.settle_seconds = float(poll_seconds), float(settle_seconds)
        self.move, self.rules, self.webhook, self.archive = move, rules, webhook, archive
        # (size, mtime_ns) of files handled in this process and left in place (move=False)
        self._handled: dict[Path, tuple[int, int]] = {}
        # (path, sha256) of the watcher's stored rejections, read from the database on first need
        self._rejected: set[tuple[str, str | None]] | None = None
        self._warned: set[Path] = set()  # files directly in the inbox, said once

    # -- one pass -------------------------------------------------------------------------------

    def scan_once(self) -> ScanResult:
        """Handle every complete file of the inbox once; returns what was done."""
        result = ScanResult()
        now = time.time()
        for asset, path in self._files():
            try:
                st = path.stat()
            except FileNotFoundError:  # renamed or moved away meanwhile
                continue
            key = (st.st_size, st.st_mtime_ns)
            if self._handled.get(path) == key:
                continue
            if path.name.endswith(PARTIAL_SUFFIX) or now - st.st_mtime < self.settle_seconds:
                result.waiting.append(path)
                continue
            if self._handle(asset, path, st.st_mtime, result) and not self.move:
                self._handled[path] = key
        return result

    def run(self, stop_event: threading.Event) -> None:
        """Scan every ``poll_seconds`` until ``stop_event`` is set. A database that cannot be reached
        is logged and tried again on the next pass."""
        log.info("watching %s (every %.1f s)", self.inbox, self.poll_seconds)
        while not stop_event.is_set():
            try:
                done = self.scan_once()
                if done.scored or done.rejected:
                    log.info("%d scored, %d rejected", len(done.scored), len(done.rejected))
            except DatabaseError as exc:
                log.error("%s; trying again in %.1f s", exc, self.poll_seconds)
            stop_event.wait(self.poll_seconds)

    # -- helpers --------------------------------------------------------------------------------

    def _files(self) -> list[tuple[str, Path]]:
        """(asset, file) of every candidate file, sorted; files directly in the inbox are logged."""
        out = []
        for entry in sorted(self.inbox.iterdir()):
            if entry.name.startswith(".") or entry.name in (DONE, REJECTED):
                continue
            if not entry.is_dir():
                if entry not in self._warned:
                    self._warned.add(entry)
                    log.warning("%s: not in an asset folder (INBOX/<asset>/...); left alone", entry)
                continue
            for root, dirs, names in os.walk(entry):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    if name.startswith(".") or (name == MACHINE_TYPE_FILE and Path(root) == entry):
                        continue
                    out.append((entry.name, Path(root) / name))
        return out

    def _machine_type(self, asset: str) -> str:
        given = self.machine_types
        if isinstance(given, str):
            return given
        if isinstance(given, Mapping) and asset in given:
            return given[asset]
        named = self.inbox / asset / MACHINE_TYPE_FILE
        if named.is_file():
            text = named.read_text(encoding="utf-8").strip()
            if not text:
                raise ConfigError(f"{named}: empty; write the asset's machine type on one line")
            return text
        return self.scorer.resolve_machine_type(None)

    def _handle(self, asset: str, path: Path, mtime: float, result: ScanResult) -> bool:
        """Score, store and alert (or reject) one settled file, then move it if asked; ``False``
        when it could not be read (tried again on the next pass)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("%s: cannot read (%s); trying again on the next pass", path, exc.strerror or exc)
            return False
        digest = hashlib.sha256(data).hexdigest()
        if self.db.recording_id(asset, digest) is not None:
            result.stored_before.append(path)
            self._move(asset, path, DONE)
            return True
        name = str(path)
        if (name, digest) in self._rejections():
            result.rejected.append(path)
            self._move(asset, path, REJECTED)
            return True
        try:
            mtype = self._machine_type(asset)
            verdict = self.scorer.score(data, mtype, filename=name)
        except (ScoringError, ConfigError) as exc:
            self.db.reject(name, str(exc), "watch", sha256=digest)
            self._rejections().add((name, digest))
            log.warning("rejected %s", exc)
            result.rejected.append(path)
            self._move(asset, path, REJECTED)
            return True
        if self.archive is not None:
            try:
                self.archive.put(digest, data, path.suffix.lower())
            except (OSError, StorageError) as exc:
                log.error("%s: cannot keep its audio in %s (%s); not stored, trying again on the next pass",
                          path, self.archive.root, exc)
                return False
        when = datetime.fromtimestamp(mtime, tz=timezone.utc)
        stored = store_verdict(self.db, asset, verdict, path=name, recorded_at=when, source="watch")
        if stored.created:
            result.scored.append(path)
            raised = evaluate_rules(self.db, asset, verdict, self.rules)
            result.alerts += raised
            if raised and self.webhook is not None:
                for row in self.db.alerts(ids=raised):
                    self.webhook.send(row)
        else:  # another writer stored the same bytes meanwhile
            result.stored_before.append(path)
        self._move(asset, path, DONE)
        return True

    def _rejections(self) -> set[tuple[str, str | None]]:
        if self._rejected is None:
            self._rejected = {(r.path, r.sha256) for r in self.db.rejections() if r.source == "watch"}
        return self._rejected

    def _move(self, asset: str, path: Path, where: str) -> None:
        """Move ``path`` to ``inbox/<where>/<asset>/<path below the asset>`` when ``move`` is on,
        never over an existing file (a ``.1``, ``.2``... suffix is added)."""
        if not self.move:
            return
        target = self.inbox / where / path.relative_to(self.inbox)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            n = 0
            while target.exists():
                n += 1
                target = target.with_name(f"{path.name}.{n}")
            shutil.move(str(path), str(target))
        except OSError as exc:  # stored already: the next pass finds it in the database and tries again
            log.warning("%s: cannot move it to %s (%s)", path, target, exc.strerror or exc)


def watch(inbox: str | Path, runs: list[str | Path], db_url: str, machine_type: str | None = None,
          poll_seconds: float = 1.0, settle_seconds: float = 2.0, move: bool = False, resample: bool = True,
          alert_k: int = 3, alert_n: int = 5, alert_modes: str | Sequence[str] = "default",
          webhook_url: str | None = None,
          stop_event: threading.Event | None = None, archive: str | Path | None = None) -> None:
    """Load the runs once, open the database and run a :class:`Watcher` until ``stop_event`` is set
    (or forever); alerts by :class:`~stetho.monitor.alerts.AlertRules` ``(alert_k, alert_n, alert_modes)``; each
    scored file kept in the audio archive folder ``archive`` when given."""
    from stetho.monitor.alerts import AlertRules, Webhook
    from stetho.monitor.db import open_database

    scorer = Scorer.load(list(runs), resample=resample)
    modes = alert_modes if isinstance(alert_modes, str) else tuple(alert_modes)
    rules = AlertRules(k=alert_k, n=alert_n, modes=modes)
    rules.check_modes(m for t in scorer.machine_types for m in scorer.score_modes(t))
    webhook = Webhook(webhook_url) if webhook_url else None
    with open_database(db_url) as db:
        watcher = Watcher(inbox, scorer, db, machine_types=machine_type, poll_seconds=poll_seconds,
                          settle_seconds=settle_seconds, move=move, rules=rules, webhook=webhook,
                          archive=AudioArchive(archive) if archive is not None else None)
        watcher.run(stop_event or threading.Event())


__all__ = ["DONE", "MACHINE_TYPE_FILE", "PARTIAL_SUFFIX", "REJECTED", "ScanResult", "Watcher", "watch"]
