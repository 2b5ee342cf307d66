"""The monitoring database: every recording scored, its verdicts, alerts and rejected files.

One SQLAlchemy 2 schema serves SQLite (the default, ``sqlite:///stetho.db``: embedded, nothing to
install) and PostgreSQL (``postgresql+psycopg://user:password@host:port/dbname``, for fleets). The
schema is created and upgraded by the Alembic migrations shipped in ``stetho/monitor/migrations``;
:func:`open_database` runs them on every start-up.

Times are stored in UTC and always returned timezone-aware (UTC) on both databases; a naive
datetime is refused, because "10:00" from a plant in another time zone is not a time.

The tables are in :mod:`stetho.monitor.schema`; callers use :class:`Database` and the small frozen
records below, never the ORM classes.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, create_engine, event, func, or_, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from stetho.errors import DatabaseError
from stetho.monitor.schema import (
    RULES,
    SOURCES,
    Alert,
    AlertRecording,
    Asset,
    Recording,
    Rejection,
    Run,
    Verdict,
)

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///stetho.db"
#: Key of PostgreSQL's transaction-level advisory lock held while migrations run, so that two
#: processes starting at once do not both create the tables (any constant; "stetho" in ASCII).
MIGRATION_LOCK_KEY = 0x73746574686F
#: How long a SQLite writer waits for another one before giving up, in milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(timezone.utc)


def _require_aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise DatabaseError(f"{what} {value.isoformat()} has no time zone; give a timezone-aware time")
    return value.astimezone(timezone.utc)


# ---------------------------------------------------------------------------------------------
# What callers pass in and get back


@dataclass(frozen=True)
class RecordingFacts:
    """What is known about a recording when it is scored.

    ``path`` is the stored path or the original file name; ``recorded_at`` and ``received_at`` are
    timezone-aware (``received_at`` defaults to now); ``duration_s`` in seconds, ``sample_rate``
    in Hz; ``source`` one of ``http``, ``watch``, ``cli``; ``section`` the section (machine ID)
    it was scored in.
    """

    path: str
    sha256: str
    recorded_at: datetime
    duration_s: float
    sample_rate: int
    source: str
    received_at: datetime | None = None
    section: str | None = None


@dataclass(frozen=True)
class RunFacts:
    """The model run that scored a recording: ``run_hash`` identifies it (get-or-create key)."""

    path: str
    run_hash: str
    stetho_version: str
    model: str


@dataclass(frozen=True)
class Recorded:
    """Result of :meth:`Database.record`: the recording's id and whether this call stored it
    (``False``: the same (asset, sha256) was already there and nothing was written)."""

    recording_id: int
    created: bool


@dataclass(frozen=True)
class AssetSummary:
    """An asset with its number of recordings and ``last_verdict_at``: the recording time of its
    newest scored recording (``None`` before the first)."""

    name: str
    machine_type: str
    created_at: datetime
    recordings: int
    last_verdict_at: datetime | None


@dataclass(frozen=True)
class RecordingRow:
    """One stored recording: its asset (and machine type), where it came from and what it is.
    ``section`` is ``None`` for recordings stored before it was recorded (migration 0002)."""

    id: int
    asset: str
    machine_type: str
    path: str
    sha256: str
    recorded_at: datetime
    received_at: datetime
    duration_s: float
    sample_rate: int
    source: str
    section: str | None


@dataclass(frozen=True)
class VerdictRow:
    """One stored verdict with the facts of its recording and run."""

    verdict_id: int
    recording_id: int
    asset: str
    path: str
    sha256: str
    recorded_at: datetime
    received_at: datetime
    source: str
    run_hash: str
    score_mode: str
    score: float
    threshold: float
    decision: bool


@dataclass(frozen=True)
class AlertRow:
    """One stored alert and the ids of the recordings that triggered it (ascending)."""

    id: int
    asset: str
    score_mode: str
    rule: str
    raised_at: datetime
    message: str
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    recording_ids: tuple[int, ...]


@dataclass(frozen=True)
class RejectionRow:
    """One stored rejection."""

    id: int
    path: str
    sha256: str | None
    reason: str
    rejected_at: datetime
    source: str


#: A verdict to store: (score mode, score, threshold, decision).
VerdictTuple = tuple[str, float, float, bool]


# ---------------------------------------------------------------------------------------------
# Engine set-up


def _is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _wal(cursor: sqlite3.Cursor) -> None:
    """Put the database file in WAL mode (persistent: once is enough). Switching needs the file to
    itself, and SQLite answers "database is locked" at once, without the busy timeout, while
    another process holds it (two services starting together on a new file): retry until the
    busy timeout has passed."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _configure_sqlite(engine: Engine) -> None:
    """WAL (readers never block the writer), a busy timeout, foreign keys on, and transactions the
    driver does not open behind SQLAlchemy's back: ``BEGIN IMMEDIATE`` for writes, so a writer
    takes the lock before reading and never fails on upgrading a read lock."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event below emits BEGIN
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")  # durable in WAL mode except on power loss
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("stetho_write") else "BEGIN")


def _make_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError; keep the message one line
        raise DatabaseError(f"{url}: not a database URL ({exc})") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            folder = Path(parsed.database).expanduser().resolve().parent
            if not folder.is_dir():
                raise DatabaseError(f"{url}: folder {folder} does not exist")
        engine = create_engine(parsed)
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() != "postgresql":
        raise DatabaseError(f"{url}: unsupported database; use sqlite:///FILE or postgresql+psycopg://...")
    if parsed.drivername == "postgresql":  # SQLAlchemy's default driver (psycopg2) is not installed
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed, pool_pre_ping=True)


def _migrate(engine: Engine) -> None:
    """Run the shipped Alembic migrations up to ``head`` in one transaction. On PostgreSQL a
    transaction-level advisory lock, on SQLite ``BEGIN IMMEDIATE``, makes a second process
    starting at the same time wait and then find the schema current."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    with engine.execution_options(stetho_write=True).begin() as conn:
        if not _is_sqlite(engine):
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_database(url: str = DEFAULT_URL) -> Database:
    """Connect to ``url`` and upgrade its schema to the newest migration (safe on every start-up,
    also by several processes at once). Raises :class:`~stetho.errors.DatabaseError` when the
    database cannot be reached or migrated."""
    engine = _make_engine(url)
    try:
        _migrate(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise DatabaseError(f"{_safe(url)}: cannot open the database: {_first_line(exc)}") from exc
    return Database(engine)


def _safe(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


#: Unique keys that two writers may both insert at once (PostgreSQL; SQLite writers are serialised by
#: BEGIN IMMEDIATE): the loser's retry finds the winner's row. Any other violation is a real error.
RACE_CONSTRAINTS = frozenset({"uq_assets_name", "uq_runs_run_hash", "uq_recordings_asset_id_sha256"})


def _lost_race(exc: IntegrityError) -> bool:
    diag = getattr(exc.orig, "diag", None)
    return getattr(diag, "constraint_name", None) in RACE_CONSTRAINTS


def _first_line(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


# ---------------------------------------------------------------------------------------------
# The database


def _alert_facts(asset: str, rule: str, raised_at: datetime | None,
                 recording_ids: Iterable[int]) -> tuple[datetime, list[int]]:
    """An alert's checked rule, its time (tz-aware, default now) and its sorted recording ids."""
    if rule not in RULES:
        raise DatabaseError(f"alert for {asset}: rule {rule!r} is not one of {', '.join(RULES)}")
    return (_require_aware(raised_at or utc_now(), f"alert for {asset}: raised_at"),
            sorted(set(int(i) for i in recording_ids)))


def _insert_alert(session: Session, asset_id: int, score_mode: str, rule: str, when: datetime, message: str,
                  ids: Sequence[int]) -> int:
    """Insert an alert row and its triggering recordings in ``session``; its id."""
    row = Alert(asset_id=asset_id, score_mode=score_mode, rule=rule, raised_at=when, message=message)
    session.add(row)
    session.flush()
    session.add_all(AlertRecording(alert_id=row.id, recording_id=i) for i in ids)
    session.flush()
    return row.id


class Database:
    """Reads and writes of the monitoring schema. Every write is one transaction; get one from
    :func:`open_database`, close it with :meth:`close` (or use it as a context manager)."""

    #: Attempts of a write that lost a race with another writer (e.g. both created one asset).
    ATTEMPTS = 3

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._write = engine.execution_options(stetho_write=True)

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The database URL with the password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    # -- writes ---------------------------------------------------------------------------------

    def record(self, asset: str, machine_type: str, recording: RecordingFacts, run: RunFacts,
               verdicts: Sequence[VerdictTuple]) -> Recorded:
        """Store a scored recording: get-or-create ``asset`` and ``run``, insert the recording and
        all its ``verdicts`` in one transaction. A recording whose (asset, sha256) is already
        stored is not stored again: its id comes back with ``created=False`` and nothing is
        written. On any failure nothing is written (no recording without its verdicts)."""
        if recording.source not in SOURCES:
            raise DatabaseError(f"{recording.path}: source {recording.source!r} is not one of {', '.join(SOURCES)}")
        recorded_at = _require_aware(recording.recorded_at, f"{recording.path}: recorded_at")
        received_at = _require_aware(recording.received_at or utc_now(), f"{recording.path}: received_at")
        rows = [(str(m), float(s), float(t), bool(d)) for m, s, t, d in verdicts]
        for mode, score, threshold, _ in rows:
            if not (math.isfinite(score) and math.isfinite(threshold)):
                raise DatabaseError(f"{recording.path}: score mode {mode}: score {score} or threshold "
                                    f"{threshold} is not a finite number")

        def write(session: Session) -> Recorded:
            asset_row = session.scalar(select(Asset).where(Asset.name == asset))
            if asset_row is not None:
                existing = session.scalar(select(Recording.id).where(
                    Recording.asset_id == asset_row.id, Recording.sha256 == recording.sha256))
                if existing is not None:
                    return Recorded(existing, False)
            else:
                asset_row = Asset(name=asset, machine_type=machine_type, created_at=utc_now())
                session.add(asset_row)
            run_row = session.scalar(select(Run).where(Run.run_hash == run.run_hash))
            if run_row is None:
                run_row = Run(run_hash=run.run_hash, path=run.path, stetho_version=run.stetho_version,
                              model=run.model, created_at=utc_now())
                session.add(run_row)
            session.flush()
            rec = Recording(asset_id=asset_row.id, path=recording.path, sha256=recording.sha256,
                            recorded_at=recorded_at, received_at=received_at,
                            duration_s=float(recording.duration_s), sample_rate=int(recording.sample_rate),
                            source=recording.source, section=recording.section)
            session.add(rec)
            session.flush()
            session.add_all(Verdict(recording_id=rec.id, run_id=run_row.id, score_mode=m, score=s,
                                    threshold=t, decision=d) for m, s, t, d in rows)
            session.flush()
            return Recorded(rec.id, True)

        return self._transaction(write, f"{recording.path}: cannot store the recording of asset {asset}")

    def reject(self, path: str, reason: str, source: str, sha256: str | None = None,
               rejected_at: datetime | None = None) -> int:
        """Store that the file at ``path`` was rejected and why; returns the rejection's id."""
        if source not in SOURCES:
            raise DatabaseError(f"{path}: source {source!r} is not one of {', '.join(SOURCES)}")
        when = _require_aware(rejected_at or utc_now(), f"{path}: rejected_at")

        def write(session: Session) -> int:
            row = Rejection(path=path, sha256=sha256, reason=reason, rejected_at=when, source=source)
            session.add(row)
            session.flush()
            return row.id

        return self._transaction(write, f"{path}: cannot store the rejection")

    def add_alert(self, asset: str, score_mode: str, rule: str, message: str,
                  recording_ids: Iterable[int], raised_at: datetime | None = None) -> int:
        """Store an alert of ``rule`` (``k_of_n`` or ``drift``) for ``asset`` and ``score_mode``
        with the recordings that triggered it; returns the alert's id."""
        when, ids = _alert_facts(asset, rule, raised_at, recording_ids)

        def write(session: Session) -> int:
            asset_id = session.scalar(select(Asset.id).where(Asset.name == asset))
            if asset_id is None:
                raise DatabaseError(f"alert for {asset}: no such asset")
            return _insert_alert(session, asset_id, score_mode, rule, when, message, ids)

        return self._transaction(write, f"alert for {asset}: cannot store it")

    def raise_alert(self, asset: str, score_mode: str, rule: str, message: str,
                    recording_ids: Sequence[int], raised_at: datetime | None = None) -> int | None:
        """Store an alert as :meth:`add_alert` does, unless it would repeat one: ``None`` (nothing
        written) while an alert of the same (asset, score mode, rule) is open, or when a recording
        of ``recording_ids`` is not newer (by recording time, ties by id) than the newest one that
        raised the latest acknowledged alert of that key. Check and insert are one transaction
        holding the asset's row lock (PostgreSQL; SQLite writers are serialised), so two processes
        evaluating the same verdicts at once store the alert once."""
        when, ids = _alert_facts(asset, rule, raised_at, recording_ids)

        def write(session: Session) -> int | None:
            lock = select(Asset.id).where(Asset.name == asset)
            asset_id = session.scalar(lock if _is_sqlite(self.engine) else lock.with_for_update())
            if asset_id is None:
                raise DatabaseError(f"alert for {asset}: no such asset")
            latest = session.execute(
                select(Alert.id, Alert.acknowledged_at)
                .where(Alert.asset_id == asset_id, Alert.score_mode == score_mode, Alert.rule == rule)
                .order_by(Alert.id.desc()).limit(1)).first()
            if latest is not None:
                if latest[1] is None:
                    return None
                previous = session.scalars(select(AlertRecording.recording_id)
                                           .where(AlertRecording.alert_id == latest[0])).all()
                cutoff = self._newest_recording(session, previous)
                if cutoff is not None and ids:
                    oldest = session.execute(select(Recording.recorded_at, Recording.id)
                                             .where(Recording.id.in_(ids))
                                             .order_by(Recording.recorded_at, Recording.id).limit(1)).first()
                    if oldest is not None and (oldest[0], oldest[1]) <= cutoff:
                        return None
            return _insert_alert(session, asset_id, score_mode, rule, when, message, ids)

        return self._transaction(write, f"alert for {asset}: cannot store it")

    def ack_alert(self, alert_id: int, by: str, at: datetime | None = None) -> AlertRow:
        """Acknowledge an alert (closing it) and return it. Acknowledging it again changes nothing:
        the first acknowledgement is kept."""
        when = _require_aware(at or utc_now(), f"alert {alert_id}: acknowledged_at")

        def write(session: Session) -> None:
            row = session.get(Alert, alert_id, with_for_update=not _is_sqlite(self.engine))
            if row is None:
                raise DatabaseError(f"alert {alert_id}: no such alert")
            if row.acknowledged_at is None:
                row.acknowledged_at, row.acknowledged_by = when, by

        self._transaction(write, f"alert {alert_id}: cannot acknowledge it")
        return self.alerts(ids=[alert_id])[0]

    def _transaction(self, write: Any, what: str) -> Any:
        """Run ``write(session)`` in one write transaction, retrying when it lost a race with
        another writer (a unique key inserted meanwhile); a failure rolls everything back."""
        for attempt in range(1, self.ATTEMPTS + 1):
            try:
                with Session(self._write, expire_on_commit=False) as session, session.begin():
                    return write(session)
            except IntegrityError as exc:
                if attempt == self.ATTEMPTS or not _lost_race(exc):
                    raise DatabaseError(f"{what}: {_first_line(exc)}") from exc
                log.debug("%s: retrying after %s", what, _first_line(exc))
            except OperationalError as exc:
                raise DatabaseError(f"{what}: {_first_line(exc)}") from exc
        raise AssertionError("unreachable")

    # -- reads ----------------------------------------------------------------------------------

    def assets(self) -> list[AssetSummary]:
        """Every asset by name, with its number of recordings and last verdict time."""
        stmt = (select(Asset.name, Asset.machine_type, Asset.created_at, func.count(Recording.id),
                       func.max(Recording.recorded_at))
                .outerjoin(Recording, Recording.asset_id == Asset.id)
                .group_by(Asset.id, Asset.name, Asset.machine_type, Asset.created_at)
                .order_by(Asset.name))
        with Session(self.engine) as session:
            rows = session.execute(stmt).all()
        return [AssetSummary(n, m, c, int(k), last) for n, m, c, k, last in rows]  # max() keeps UTCDateTime

    def verdicts(self, asset: str, since: datetime | None = None, until: datetime | None = None,
                 limit: int | None = None, score_mode: str | None = None) -> list[VerdictRow]:
        """Verdicts of ``asset`` recorded in ``[since, until)``, newest recording first (ties by
        recording id, then score mode), at most ``limit`` rows."""
        stmt = self._verdict_query().where(Asset.name == asset)
        if since is not None:
            stmt = stmt.where(Recording.recorded_at >= _require_aware(since, "since"))
        if until is not None:
            stmt = stmt.where(Recording.recorded_at < _require_aware(until, "until"))
        if score_mode is not None:
            stmt = stmt.where(Verdict.score_mode == score_mode)
        stmt = stmt.order_by(Recording.recorded_at.desc(), Recording.id.desc(), Verdict.score_mode)
        if limit is not None:
            stmt = stmt.limit(int(limit))
        with Session(self.engine) as session:
            return [VerdictRow(*row) for row in session.execute(stmt).all()]

    def recording_id(self, asset: str, sha256: str) -> int | None:
        """Id of the recording of ``asset`` with these bytes (``sha256``), or ``None`` if not stored
        (the watcher asks before scoring a file a crash left behind)."""
        stmt = (select(Recording.id).join(Asset, Recording.asset_id == Asset.id)
                .where(Asset.name == asset, Recording.sha256 == sha256))
        with Session(self.engine) as session:
            return session.scalar(stmt)

    def recording_verdicts(self, recording_id: int) -> list[VerdictRow]:
        """The stored verdicts of one recording (by score mode); ``[]`` for an unknown id. What
        the service answers for an upload it already stored."""
        stmt = self._verdict_query().where(Recording.id == int(recording_id)).order_by(Verdict.id)
        with Session(self.engine) as session:
            return [VerdictRow(*row) for row in session.execute(stmt).all()]

    def recording(self, recording_id: int) -> RecordingRow | None:
        """The stored recording ``recording_id``, or ``None`` for an unknown id."""
        stmt = (select(Recording.id, Asset.name, Asset.machine_type, Recording.path, Recording.sha256,
                       Recording.recorded_at, Recording.received_at, Recording.duration_s, Recording.sample_rate,
                       Recording.source, Recording.section)
                .join(Asset, Asset.id == Recording.asset_id).where(Recording.id == int(recording_id)))
        with Session(self.engine) as session:
            row = session.execute(stmt).first()
        return None if row is None else RecordingRow(*row)

    def recording_alerts(self, recording_id: int) -> list[AlertRow]:
        """The alerts ``recording_id`` helped raise (it is among their triggering recordings),
        newest first; ``[]`` for none or an unknown id."""
        stmt = select(AlertRecording.alert_id).where(AlertRecording.recording_id == int(recording_id))
        with Session(self.engine) as session:
            ids = list(session.scalars(stmt))
        return self.alerts(ids=ids) if ids else []

    def last_verdicts(self, asset: str, score_mode: str, n: int,
                      newer_than: Sequence[int] = ()) -> list[VerdictRow]:
        """The ``n`` newest verdicts (by recording time) of ``asset`` in ``score_mode``, newest
        first: what the k-of-n and drift rules look at. ``newer_than`` (recording ids): keep only
        recordings after the newest of them (by recording time, ties by id), i.e. a new episode
        after an alert that those recordings raised."""
        stmt = self._verdict_query().where(Asset.name == asset, Verdict.score_mode == score_mode)
        with Session(self.engine) as session:
            newest = self._newest_recording(session, newer_than)
            if newest is not None:
                at, rid = newest
                stmt = stmt.where(or_(Recording.recorded_at > at,
                                      and_(Recording.recorded_at == at, Recording.id > rid)))
            stmt = stmt.order_by(Recording.recorded_at.desc(), Recording.id.desc()).limit(int(n))
            return [VerdictRow(*row) for row in session.execute(stmt).all()]

    def latest_alert(self, asset: str, score_mode: str, rule: str) -> AlertRow | None:
        """The most recently stored alert of ``rule`` for ``asset`` and ``score_mode`` (open or
        acknowledged), or ``None``: where the alert rules' current episode starts."""
        stmt = (select(Alert.id).join(Asset, Asset.id == Alert.asset_id)
                .where(Asset.name == asset, Alert.score_mode == score_mode, Alert.rule == rule)
                .order_by(Alert.id.desc()).limit(1))
        with Session(self.engine) as session:
            found = session.scalar(stmt)
        return None if found is None else self.alerts(ids=[found])[0]

    @staticmethod
    def _newest_recording(session: Session, ids: Sequence[int]) -> tuple[datetime, int] | None:
        """(recorded_at, id) of the newest of the recordings ``ids``; ``None`` for none."""
        if not ids:
            return None
        row = session.execute(select(Recording.recorded_at, Recording.id)
                              .where(Recording.id.in_([int(i) for i in ids]))
                              .order_by(Recording.recorded_at.desc(), Recording.id.desc()).limit(1)).first()
        return None if row is None else (row[0], row[1])

    def alerts(self, open_only: bool = False, ids: Sequence[int] | None = None,
               asset: str | None = None) -> list[AlertRow]:
        """Stored alerts, newest first; ``open_only``: those not yet acknowledged; ``asset``: of
        that asset only."""
        stmt = (select(Alert.id, Asset.name, Alert.score_mode, Alert.rule, Alert.raised_at, Alert.message,
                       Alert.acknowledged_at, Alert.acknowledged_by)
                .join(Asset, Asset.id == Alert.asset_id)
                .order_by(Alert.raised_at.desc(), Alert.id.desc()))
        if open_only:
            stmt = stmt.where(Alert.acknowledged_at.is_(None))
        if ids is not None:
            stmt = stmt.where(Alert.id.in_(list(ids)))
        if asset is not None:
            stmt = stmt.where(Asset.name == asset)
        with Session(self.engine) as session:
            rows = session.execute(stmt).all()
            links: dict[int, list[int]] = {}
            if rows:
                for a, r in session.execute(
                        select(AlertRecording.alert_id, AlertRecording.recording_id)
                        .where(AlertRecording.alert_id.in_([row[0] for row in rows]))
                        .order_by(AlertRecording.alert_id, AlertRecording.recording_id)):
                    links.setdefault(a, []).append(r)
        return [AlertRow(*row, recording_ids=tuple(links.get(row[0], []))) for row in rows]

    def rejections(self, limit: int | None = None) -> list[RejectionRow]:
        """Stored rejections, newest first."""
        stmt = select(Rejection).order_by(Rejection.rejected_at.desc(), Rejection.id.desc())
        if limit is not None:
            stmt = stmt.limit(int(limit))
        with Session(self.engine) as session:
            return [RejectionRow(r.id, r.path, r.sha256, r.reason, r.rejected_at, r.source)
                    for r in session.scalars(stmt)]

    @staticmethod
    def _verdict_query() -> Any:
        return (select(Verdict.id, Recording.id, Asset.name, Recording.path, Recording.sha256,
                       Recording.recorded_at, Recording.received_at, Recording.source, Run.run_hash,
                       Verdict.score_mode, Verdict.score, Verdict.threshold, Verdict.decision)
                .join(Recording, Recording.id == Verdict.recording_id)
                .join(Asset, Asset.id == Recording.asset_id)
                .join(Run, Run.id == Verdict.run_id))

