"""The schema of the monitoring database (SQLAlchemy 2 declarative, typed).

One schema for SQLite and PostgreSQL: ``assets`` (the physical machines), ``runs`` (the trained
model runs a verdict came from), ``recordings`` (one row per distinct recording of an asset: its
sha256 is unique per asset, so a file delivered twice is stored once), ``verdicts`` (per
recording, run and score mode), ``alerts`` with ``alert_recordings`` (the recordings that raised
them) and ``rejections`` (files that could not be scored, with the reason). The tables are created
by the Alembic migrations in ``migrations/``, never by ``create_all``; a test checks that the two
agree. Constraint and index names are fixed by a naming convention so both databases name them
alike.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Where a recording came from: the HTTP service, the inbox watcher, the command line.
SOURCES = ("http", "watch", "cli")
#: The alert rules: k of the last n verdicts anomalous; the rolling median above the threshold.
RULES = ("k_of_n", "drift")


class UTCDateTime(TypeDecorator[datetime]):
    """A point in time stored in UTC and returned timezone-aware (UTC) on every database.

    PostgreSQL keeps ``timestamp with time zone``; SQLite has no time zones, so the UTC wall-clock
    time is stored (ISO text, which also sorts by time) and UTC attached again when it is read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise TypeError(f"naive datetime {value.isoformat()}: the database stores timezone-aware times")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of the monitoring schema; constraint names are fixed by convention so the
    migrations and the ORM name them alike on both databases."""

    metadata = MetaData(naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })
    type_annotation_map = {datetime: UTCDateTime()}


class Asset(Base):
    """A physical machine whose recordings are scored (e.g. ``pump-3``)."""

    __tablename__ = "assets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    machine_type: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime]


class Run(Base):
    """A trained model run that produced verdicts, identified by ``run_hash``."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_hash: Mapped[str] = mapped_column(String(128), unique=True)
    path: Mapped[str] = mapped_column(Text)
    stetho_version: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime]


class Recording(Base):
    """One distinct recording of an asset; ``(asset_id, sha256)`` is unique."""

    __tablename__ = "recordings"
    __table_args__ = (
        UniqueConstraint("asset_id", "sha256"),
        CheckConstraint(f"source IN {SOURCES!r}", name="source"),
        CheckConstraint("duration_s >= 0", name="duration"),
        CheckConstraint("sample_rate > 0", name="sample_rate"),
        # verdicts of an asset over time and the latest ones per asset
        Index(None, "asset_id", "recorded_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id"))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime]
    received_at: Mapped[datetime]
    duration_s: Mapped[float] = mapped_column(Float)
    sample_rate: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))
    #: the section (machine ID) it was scored in; NULL for rows stored before migration 0002
    section: Mapped[str | None] = mapped_column(String(100))


class Verdict(Base):
    """The score, threshold and decision of one score mode of one run for one recording."""

    __tablename__ = "verdicts"
    __table_args__ = (
        UniqueConstraint("recording_id", "run_id", "score_mode"),  # also the index by recording
        Index(None, "run_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    recording_id: Mapped[int] = mapped_column(ForeignKey("recordings.id", ondelete="CASCADE"))
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    score_mode: Mapped[str] = mapped_column(String(100))
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    decision: Mapped[bool] = mapped_column(Boolean)


class Alert(Base):
    """An alarm raised for an asset and score mode by a rule; open until acknowledged."""

    __tablename__ = "alerts"
    __table_args__ = (
        CheckConstraint(f"rule IN {RULES!r}", name="rule"),
        Index(None, "acknowledged_at", "raised_at"),  # open alerts, newest first
        Index(None, "asset_id", "score_mode", "raised_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id"))
    score_mode: Mapped[str] = mapped_column(String(100))
    rule: Mapped[str] = mapped_column(String(16))
    raised_at: Mapped[datetime]
    message: Mapped[str] = mapped_column(Text)
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(200))


class AlertRecording(Base):
    """A recording that contributed to an alert."""

    __tablename__ = "alert_recordings"
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), primary_key=True)
    recording_id: Mapped[int] = mapped_column(ForeignKey("recordings.id", ondelete="CASCADE"),
                                              primary_key=True, index=True)


class Rejection(Base):
    """A file that could not be scored, with the reason."""

    __tablename__ = "rejections"
    __table_args__ = (CheckConstraint(f"source IN {SOURCES!r}", name="source"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    rejected_at: Mapped[datetime] = mapped_column(index=True)
    source: Mapped[str] = mapped_column(String(16))
