"""The inbox watcher (stetho.monitor.watch) on a tiny `stats` run, storing into a SQLite file and a
throw-away PostgreSQL server (tests/pg.py): files scored once when complete, bad files stored as
rejections, moves, and exactly-once across a kill -9 of `stetho watch`."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sqlalchemy import func, select

from monitor_toy import run_dir, scorer  # noqa: F401 (fixtures)
from stetho.errors import ConfigError
from stetho.monitor.db import open_database
from stetho.monitor.schema import Recording
from stetho.monitor.watch import Watcher

OLD = time.time() - 3600  # an mtime long settled


def wav(seed: int, seconds: float = 1.0) -> bytes:
    y = np.random.default_rng(seed).normal(0, 0.1, int(16000 * seconds)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, y, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def drop(path: Path, data: bytes, settled: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if settled:
        os.utime(path, (OLD, OLD))
    return path


def recordings(db) -> list[tuple[str, str, str]]:
    with db.engine.connect() as conn:
        return sorted((r.path, r.sha256, r.source) for r in conn.execute(select(Recording)))


def test_scores_complete_files_of_two_assets_once(tmp_path, scorer, database_url):
    inbox = tmp_path / "inbox"
    a = [drop(inbox / "pump-1" / f"{i}.wav", wav(i)) for i in range(3)]
    b = [drop(inbox / "pump-2" / "day1" / f"{i}.wav", wav(10 + i)) for i in range(2)]
    part = drop(inbox / "pump-1" / "late.wav.part", wav(20))
    growing = drop(inbox / "pump-2" / "growing.wav", wav(21), settled=False)
    with open_database(database_url) as db:
        w = Watcher(inbox, scorer, db, settle_seconds=30)
        first = w.scan_once()
        assert first.scored == sorted(a + b)
        assert first.waiting == sorted([part, growing])
        assert first.rejected == [] and first.stored_before == []
        rows = recordings(db)
        assert len(rows) == 5 and {r[2] for r in rows} == {"watch"}
        expected = scorer.score(a[0], "fan", filename=str(a[0]))
        stored = [x for x in db.verdicts("pump-1") if x.path == str(a[0])]
        assert {v.score_mode: v.score for v in stored} == pytest.approx(
            {m: mv.score for m, mv in expected.modes.items()})
        assert stored[0].recorded_at.timestamp() == pytest.approx(OLD, abs=1e-3)
        assert {s.name: s.recordings for s in db.assets()} == {"pump-1": 3, "pump-2": 2}

        assert w.scan_once().scored == []  # nothing twice, the two still waiting
        part.rename(inbox / "pump-1" / "late.wav")
        os.utime(growing, (OLD, OLD))
        third = w.scan_once()
        assert third.scored == sorted([inbox / "pump-1" / "late.wav", growing])
        assert len(recordings(db)) == 7

        # a new process (a restart) over the same inbox finds them stored and scores nothing
        again = Watcher(inbox, scorer, db, settle_seconds=30).scan_once()
        assert again.scored == [] and len(again.stored_before) == 7
        assert len(recordings(db)) == 7


def test_bad_files_become_rejections_and_the_watcher_goes_on(tmp_path, scorer, database_url):
    inbox = tmp_path / "inbox"
    good = drop(inbox / "fan-1" / "good.wav", wav(1))
    text = drop(inbox / "fan-1" / "notes.wav", b"not audio at all, a text file\n")
    truncated = drop(inbox / "fan-1" / "cut.wav", wav(2)[:30])
    with open_database(database_url) as db:
        w = Watcher(inbox, scorer, db, settle_seconds=0)
        done = w.scan_once()
        assert done.scored == [good]
        assert done.rejected == sorted([text, truncated])
        by_path = {r.path: r for r in db.rejections()}
        assert set(by_path) == {str(text), str(truncated)}
        assert "not_audio" in by_path[str(text)].reason or "audio" in by_path[str(text)].reason
        assert str(truncated) in by_path[str(truncated)].reason
        assert all(r.source == "watch" and len(r.sha256) == 64 for r in by_path.values())
        # a restart does not reject them again
        again = Watcher(inbox, scorer, db, settle_seconds=0).scan_once()
        assert sorted(again.rejected) == sorted([text, truncated]) and len(db.rejections()) == 2


def test_move_to_done_and_rejected(tmp_path, scorer, database_url):
    inbox = tmp_path / "inbox"
    drop(inbox / "fan-1" / "a" / "x.wav", wav(1))
    drop(inbox / "fan-1" / "bad.wav", b"junk")
    with open_database(database_url) as db:
        w = Watcher(inbox, scorer, db, settle_seconds=0, move=True)
        done = w.scan_once()
        assert len(done.scored) == 1 and len(done.rejected) == 1
        assert (inbox / "done" / "fan-1" / "a" / "x.wav").is_file()
        assert (inbox / "rejected" / "fan-1" / "bad.wav").is_file()
        assert not (inbox / "fan-1" / "a" / "x.wav").exists() and not (inbox / "fan-1" / "bad.wav").exists()
        # done/ and rejected/ are not assets: nothing more happens
        assert w.scan_once() == type(done)()
        # the same bytes dropped again (a crash between storing and moving): moved, not stored again
        drop(inbox / "fan-1" / "a" / "x.wav", wav(1))
        again = w.scan_once()
        assert again.scored == [] and len(again.stored_before) == 1
        assert (inbox / "done" / "fan-1" / "a" / "x.wav.1").is_file()
        assert len(recordings(db)) == 1


def test_a_failed_move_is_tried_again_without_scoring_twice(tmp_path, scorer):
    inbox = tmp_path / "inbox"
    wav_file = drop(inbox / "fan-1" / "x.wav", wav(1))
    (inbox / "done").write_text("a file where the done/ folder should be")
    with open_database(f"sqlite:///{tmp_path / 'db.sqlite'}") as db:
        w = Watcher(inbox, scorer, db, settle_seconds=0, move=True)
        assert w.scan_once().scored == [wav_file] and wav_file.is_file()  # stored, not moved
        (inbox / "done").unlink()
        again = w.scan_once()
        assert again.scored == [] and again.stored_before == [wav_file]
        assert (inbox / "done" / "fan-1" / "x.wav").is_file() and not wav_file.exists()
        assert len(recordings(db)) == 1


def test_machine_type_of_an_asset(tmp_path, scorer):
    inbox = tmp_path / "inbox"
    drop(inbox / "m-1" / "x.wav", wav(1))
    (inbox / "m-1" / "machine_type").write_text("valve\n")
    drop(inbox / "m-2" / "x.wav", wav(2))
    with open_database(f"sqlite:///{tmp_path / 'db.sqlite'}") as db:
        done = Watcher(inbox, scorer, db, settle_seconds=0).scan_once()
        assert done.scored == [inbox / "m-2" / "x.wav"]  # the run's only type, fan
        assert done.rejected == [inbox / "m-1" / "x.wav"]  # its file names a type no run serves
        assert "valve" in db.rejections()[0].reason
        with pytest.raises(ConfigError, match="not a folder"):
            Watcher(tmp_path / "missing", scorer, db)


def _count(url: str) -> int:
    with open_database(url) as db, db.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(Recording))


@pytest.mark.slow  # two start-ups of `stetho watch` (~3 s each: torch)
def test_exactly_once_across_kill_9(tmp_path, run_dir, database_url):
    inbox = tmp_path / "inbox"
    files = [drop(inbox / f"asset-{i % 3}" / f"{i:02d}.wav", wav(100 + i, seconds=2.0)) for i in range(30)]
    cmd = [sys.executable, "-m", "stetho.cli", "-q", "watch", str(inbox), "--run", str(run_dir), "--db",
           database_url, "--poll", "0.1", "--settle", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    open_database(database_url).close()  # migrate first, so counting works before the watcher starts
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while _count(database_url) < 5:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        at_kill = _count(database_url)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while _count(database_url) < 30:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.5)  # a few more passes: nothing more may be stored
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 5 <= at_kill < 30
    with open_database(database_url) as db:
        rows = recordings(db)
        assert sorted(r[0] for r in rows) == sorted(str(f) for f in files)  # each exactly once
        assert db.rejections() == []


def test_alert_rules_run_after_each_new_verdict(tmp_path, scorer, database_url):
    from stetho.monitor.alerts import AlertRules

    inbox = tmp_path / "inbox"
    for i in range(3):  # white noise: anomalous for the toy fan in every mode but mahalanobis
        drop(inbox / "fan-1" / f"{i}.wav", wav(i))
    with open_database(database_url) as db:
        w = Watcher(inbox, scorer, db, settle_seconds=0, rules=AlertRules(k=2, n=3))
        done = w.scan_once()
        assert len(done.scored) == 3
        stored = db.alerts()
        assert sorted(done.alerts) == sorted(a.id for a in stored)
        # by default the rules watch the model's own mode only: one fault, one alert per rule
        assert {(a.score_mode, a.rule) for a in stored} >= {("density", "k_of_n")}
        assert {a.score_mode for a in stored} == {scorer.default_mode("fan")} == {"density"}
        assert Watcher(inbox, scorer, db, settle_seconds=0, rules=AlertRules(k=2, n=3)).scan_once().alerts == []
        for i in range(3):  # modes="all": every anomalous mode alarms
            drop(inbox / "fan-2" / f"{i}.wav", wav(i))
        Watcher(inbox, scorer, db, settle_seconds=0, rules=AlertRules(k=2, n=3, modes="all")).scan_once()
        expected = {m for m, v in scorer.score(inbox / "fan-2" / "0.wav", "fan").modes.items() if v.decision}
        assert len(expected) >= 2
        assert {a.score_mode for a in db.alerts() if a.asset == "fan-2" and a.rule == "k_of_n"} == expected
