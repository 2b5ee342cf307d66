"""stetho.monitor.db against real databases: a SQLite file and a throw-away PostgreSQL server
(tests/pg.py); every test runs on both."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select

from stetho.errors import DatabaseError
from stetho.monitor.db import RecordingFacts, RunFacts, open_database
from stetho.monitor.schema import Base, Recording, Verdict

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
RUN = RunFacts(path="runs/fan", run_hash="abc123", stetho_version="0.2.0", model="stats")


def facts(i: int, *, at: datetime | None = None, sha: str | None = None, source: str = "http") -> RecordingFacts:
    return RecordingFacts(path=f"rec_{i:03d}.wav", sha256=sha or f"{i:064x}", recorded_at=at or T0 + timedelta(minutes=i),
                          duration_s=10.0, sample_rate=16000, source=source)


def verdicts(score: float) -> list[tuple[str, float, float, bool]]:
    return [("mahalanobis", score, 1.5, score > 1.5), ("knn", score / 2, 0.5, score / 2 > 0.5)]


@pytest.fixture
def db(database_url):
    with open_database(database_url) as database:
        yield database


def count(db, table) -> int:
    with db.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(table))


def test_the_migration_creates_exactly_the_orm_schema(db):
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        tables = set(inspect(conn).get_table_names())
    assert diff == []
    assert tables == set(Base.metadata.tables) | {"alembic_version"}


def test_the_schema_comparison_notices_a_changed_model(db):
    """The check above can fail: a wider column, a new column and a new index are all reported."""
    from sqlalchemy import Column, Index, MetaData, String

    changed = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    assets = changed.tables["assets"]
    assets.c.machine_type.type = String(300)
    assets.append_column(Column("site", String(50), nullable=True))
    Index("ix_assets_machine_type", assets.c.machine_type)
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), changed)
    kinds = sorted(d[0] if isinstance(d, tuple) else d[0][0] for d in diff)
    assert kinds == ["add_column", "add_index", "modify_type"]


def test_opening_again_is_a_no_op_and_keeps_the_rows(database_url):
    with open_database(database_url) as first:
        first.record("fan-1", "fan", facts(1), RUN, verdicts(1.0))
    with open_database(database_url) as second:
        with second.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == ["0002"]
        assert [a.recordings for a in second.assets()] == [1]


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path):
    with open_database(f"sqlite:///{tmp_path / 'x.db'}") as db, db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_record_stores_the_recording_and_its_verdicts_and_reads_them_back(db):
    local = timezone(timedelta(hours=2))
    at = datetime(2026, 3, 1, 12, 30, 15, 250000, tzinfo=local)  # 10:30:15.25 UTC
    got = db.record("fan-1", "fan", facts(7, at=at), RUN, verdicts(2.0))
    assert got.created and got.recording_id > 0
    rows = db.verdicts("fan-1")
    assert [(r.score_mode, r.score, r.threshold, r.decision) for r in rows] == [
        ("knn", 1.0, 0.5, True), ("mahalanobis", 2.0, 1.5, True)]
    assert {r.recording_id for r in rows} == {got.recording_id}
    assert rows[0].recorded_at == datetime(2026, 3, 1, 10, 30, 15, 250000, tzinfo=timezone.utc)
    assert rows[0].recorded_at.utcoffset() == timedelta(0)
    assert rows[0].received_at.tzinfo is not None and rows[0].run_hash == "abc123" and rows[0].source == "http"
    [asset] = db.assets()
    assert (asset.name, asset.machine_type, asset.recordings) == ("fan-1", "fan", 1)
    assert asset.last_verdict_at == rows[0].recorded_at and asset.created_at.tzinfo is not None


def test_times_come_back_in_utc_whatever_the_session_time_zone(postgresql_database):
    tokyo = postgresql_database + "?options=-c%20timezone%3DAsia/Tokyo"
    with open_database(tokyo) as db:
        db.record("fan-1", "fan", facts(1, at=T0), RUN, verdicts(1.0))
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW timezone").scalar() == "Asia/Tokyo"
        [row, _] = db.verdicts("fan-1", since=T0, until=T0 + timedelta(seconds=1))
        assert row.recorded_at == T0 and row.recorded_at.tzinfo == timezone.utc


def test_a_duplicate_recording_is_not_stored_twice(db):
    first = db.record("fan-1", "fan", facts(1), RUN, verdicts(1.0))
    other_run = RunFacts(path="runs/new", run_hash="zzz", stetho_version="0.2.0", model="ae")
    again = db.record("fan-1", "fan", facts(99, sha=facts(1).sha256), other_run, verdicts(9.0))
    assert (again.recording_id, again.created) == (first.recording_id, False)
    assert count(db, Recording.__table__) == 1 and count(db, Verdict.__table__) == 2
    with db.engine.connect() as conn:  # nothing written: not even the new run
        assert conn.exec_driver_sql("SELECT count(*) FROM runs").scalar() == 1
    # the same sound from another asset is another recording
    assert db.record("fan-2", "fan", facts(1), RUN, verdicts(1.0)).created
    assert [a.recordings for a in db.assets()] == [1, 1]


def test_a_verdict_that_violates_a_constraint_leaves_no_row_at_all(db, caplog):
    twice = [("mahalanobis", 1.0, 1.5, False), ("mahalanobis", 2.0, 1.5, True)]  # unique (rec, run, mode)
    with caplog.at_level("DEBUG", logger="stetho.monitor.db"), \
            pytest.raises(DatabaseError, match="rec_001.wav: cannot store"):
        db.record("fan-1", "fan", facts(1), RUN, twice)
    assert "retrying" not in caplog.text  # a real violation, not a lost race: tried once
    for table in ("assets", "runs", "recordings", "verdicts"):
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar() == 0, table
    assert db.record("fan-1", "fan", facts(1), RUN, verdicts(1.0)).created  # and the file can come again


@pytest.mark.parametrize("bad, message", [
    (dict(recorded_at=datetime(2026, 3, 1, 8, 0)), "has no time zone"),
    (dict(source="ftp"), "source 'ftp' is not one of"),
])
def test_bad_facts_are_refused_before_any_write(db, bad, message):
    with pytest.raises(DatabaseError, match=message):
        db.record("fan-1", "fan", RecordingFacts(**{**facts(1).__dict__, **bad}), RUN, verdicts(1.0))
    with pytest.raises(DatabaseError, match="not a finite number"):
        db.record("fan-1", "fan", facts(2), RUN, [("knn", float("nan"), 0.5, False)])
    assert db.assets() == []


def test_verdicts_filter_by_time_newest_first_with_a_limit(db):
    for i in range(6):  # recordings at T0 + 0..50 min, inserted out of order
        db.record("pump-1", "pump", facts(5 - i, at=T0 + timedelta(minutes=10 * (5 - i))), RUN, verdicts(float(5 - i)))
    db.record("pump-2", "pump", facts(100), RUN, verdicts(9.0))
    rows = db.verdicts("pump-1", since=T0 + timedelta(minutes=10), until=T0 + timedelta(minutes=40))
    assert [(r.recorded_at - T0, r.score_mode) for r in rows] == [
        (timedelta(minutes=m), mode) for m in (30, 20, 10) for mode in ("knn", "mahalanobis")]
    assert len(db.verdicts("pump-1", limit=3)) == 3
    last = db.last_verdicts("pump-1", "mahalanobis", 3)
    assert [r.score for r in last] == [5.0, 4.0, 3.0]
    assert [r.decision for r in last] == [True, True, True]
    assert [r.score for r in db.last_verdicts("pump-1", "mahalanobis", 10)] == [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]
    assert db.verdicts("no-such-asset") == []
    summary = {a.name: (a.recordings, a.last_verdict_at) for a in db.assets()}
    assert summary == {"pump-1": (6, T0 + timedelta(minutes=50)), "pump-2": (1, T0 + timedelta(minutes=100))}


def test_alerts_are_stored_with_their_recordings_and_acknowledged_once(db):
    ids = [db.record("valve-1", "valve", facts(i), RUN, verdicts(3.0)).recording_id for i in range(3)]
    first = db.add_alert("valve-1", "mahalanobis", "k_of_n", "3 of 5 anomalous", ids[::-1], raised_at=T0)
    second = db.add_alert("valve-1", "knn", "drift", "median above threshold", ids[1:], raised_at=T0 + timedelta(hours=1))
    assert [a.id for a in db.alerts()] == [second, first]
    a = db.alerts(open_only=True)[1]
    assert (a.asset, a.score_mode, a.rule, a.raised_at, a.recording_ids) == (
        "valve-1", "mahalanobis", "k_of_n", T0, tuple(sorted(ids)))
    acked = db.ack_alert(first, "alice", at=T0 + timedelta(hours=2))
    assert (acked.acknowledged_by, acked.acknowledged_at) == ("alice", T0 + timedelta(hours=2))
    again = db.ack_alert(first, "bob")
    assert (again.acknowledged_by, again.acknowledged_at) == ("alice", T0 + timedelta(hours=2))
    assert [a.id for a in db.alerts(open_only=True)] == [second]
    with pytest.raises(DatabaseError, match="alert 999: no such alert"):
        db.ack_alert(999, "alice")
    with pytest.raises(DatabaseError, match="rule 'spike' is not one of"):
        db.add_alert("valve-1", "knn", "spike", "x", [])
    with pytest.raises(DatabaseError, match="no such asset"):
        db.add_alert("nope", "knn", "drift", "x", [])
    with pytest.raises(DatabaseError, match="cannot store"):  # a recording that does not exist
        db.add_alert("valve-1", "knn", "drift", "x", [12345])
    assert len(db.alerts()) == 2


def test_rejections_are_stored_with_the_reason(db):
    first = db.reject("inbox/fan-1/a.wav", "not a WAV file", "watch", rejected_at=T0)
    second = db.reject("upload.wav", "NaN samples", "http", sha256="ab" * 32)
    rows = db.rejections()
    assert [r.id for r in rows] == [second, first]
    assert (rows[1].path, rows[1].reason, rows[1].sha256, rows[1].source, rows[1].rejected_at) == (
        "inbox/fan-1/a.wav", "not a WAV file", None, "watch", T0)
    with pytest.raises(DatabaseError, match="source 'mail' is not one of"):
        db.reject("x.wav", "bad", "mail")


def test_an_unreachable_or_unknown_database_is_one_clear_error(tmp_path):
    with pytest.raises(DatabaseError, match="does not exist"):
        open_database(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    with pytest.raises(DatabaseError, match="unsupported database"):
        open_database("mysql://localhost/x")
    with pytest.raises(DatabaseError, match="cannot open the database") as caught:
        open_database("postgresql+psycopg://postgres:secret@127.0.0.1:1/x")
    assert "secret" not in str(caught.value) and "***" in str(caught.value)


def test_a_plain_postgresql_url_uses_psycopg(postgresql_database):
    plain = postgresql_database.replace("postgresql+psycopg://", "postgresql://")
    with open_database(plain) as db:
        assert db.engine.dialect.driver == "psycopg" and db.assets() == []


WRITER = textwrap.dedent("""
    import sys, time
    from datetime import datetime, timedelta, timezone
    from pathlib import Path
    from stetho.monitor.db import RecordingFacts, RunFacts, open_database

    url, who, go, same = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4] == "same"
    db = open_database(url)  # both migrate at once too
    run = RunFacts(path="runs/fan", run_hash="shared", stetho_version="0.2.0", model="stats")
    while not go.exists():
        time.sleep(0.005)
    t0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
    created = 0
    for i in range(50):
        sha = f"{i:064d}" if same else f"{who}{i:063d}"
        rec = RecordingFacts(path=f"{who}_{i}.wav", sha256=sha, recorded_at=t0 + timedelta(seconds=i),
                             duration_s=1.0, sample_rate=16000, source="watch" if who == "w" else "http")
        created += db.record("fan-1", "fan", rec, run, [("knn", float(i), 10.0, i > 10)]).created
    print(created)
    db.close()
""")


def _write_at_once(url: str, go, files: str) -> list[int]:
    """Run two writer processes (``w``, ``h``) at once; the number each stored."""
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, url, who, str(go), files],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for who in ("w", "h")]
    time.sleep(1.0)  # both import and open the database (migrating at once), then start together
    go.touch()
    created = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        created.append(int(out))
    return created


def test_two_processes_writing_at_once_lose_nothing(database_url, tmp_path):
    assert _write_at_once(database_url, tmp_path / "go", "own") == [50, 50]
    with open_database(database_url) as db:
        assert [(a.name, a.recordings) for a in db.assets()] == [("fan-1", 100)]
        rows = db.verdicts("fan-1")
        assert len(rows) == 100 and {r.run_hash for r in rows} == {"shared"}
        assert sorted(r.path for r in rows) == sorted(f"{w}_{i}.wav" for w in "wh" for i in range(50))
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM runs").scalar() == 1


def test_two_processes_storing_the_same_files_at_once_store_each_once(database_url, tmp_path):
    """On PostgreSQL the loser of each race on a unique key retries and finds the winner's row."""
    assert sum(_write_at_once(database_url, tmp_path / "go", "same")) == 50
    with open_database(database_url) as db:
        assert [(a.name, a.recordings) for a in db.assets()] == [("fan-1", 50)]
        assert len(db.verdicts("fan-1")) == 50


def test_a_recording_and_the_alerts_it_helped_raise(db):
    first = db.record("fan-1", "fan", facts(1), RUN, verdicts(2.0)).recording_id
    second = db.record("fan-1", "fan", RecordingFacts(
        path="inbox/fan-1/b.wav", sha256="b" * 64, recorded_at=T0 + timedelta(hours=1), duration_s=2.5,
        sample_rate=48000, source="watch", section="03"), RUN, verdicts(3.0)).recording_id
    alert = db.add_alert("fan-1", "mahalanobis", "k_of_n", "2 of 2", [first, second])
    rec = db.recording(second)
    assert (rec.id, rec.asset, rec.machine_type, rec.path, rec.sha256) == (second, "fan-1", "fan", "inbox/fan-1/b.wav",
                                                                            "b" * 64)
    assert (rec.recorded_at, rec.duration_s, rec.sample_rate, rec.source, rec.section) == (
        T0 + timedelta(hours=1), 2.5, 48000, "watch", "03")
    assert db.recording(first).section is None  # not given: unknown, as for rows before migration 0002
    assert db.recording(999) is None
    assert [a.id for a in db.recording_alerts(second)] == [alert]
    assert db.recording_alerts(second)[0].recording_ids == (first, second)
    third = db.record("fan-1", "fan", facts(3), RUN, verdicts(0.1)).recording_id
    assert db.recording_alerts(third) == [] and db.recording_alerts(999) == []
