"""Recordings kept and explained: the audio archive (stetho.monitor.archive), spectrograms and normal
profiles (stetho.monitor.spectra) checked against librosa by hand, and the service's recording
endpoints on a real uvicorn server (tests/test_monitor_service.py's Server) over a SQLite file;
the watcher's archive and its moved files."""

from __future__ import annotations

import csv
import hashlib
import io
import os
from pathlib import Path

import httpx
import librosa
import numpy as np
import pytest
import soundfile as sf
from sqlalchemy import func, select

from monitor_toy import run_dir, scorer  # noqa: F401 (fixtures)
from stetho.errors import StorageError
from stetho.monitor.archive import AudioArchive, default_archive, find_audio
from stetho.monitor.db import open_database
from stetho.monitor.schema import Recording
from stetho.monitor.service import create_app
from stetho.monitor.spectra import NormalProfiles, ProfileError, pool_time, recording_spectrogram
from stetho.monitor.watch import Watcher
from test_monitor_service import AUTH, TOKEN, Server, wav

OLD = 1_600_000_000  # an mtime long settled (for the watcher)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def librosa_logmel(y: np.ndarray, sr: int = 16000) -> np.ndarray:
    """The log-mel computed independently: librosa's mel power (128 mels, n_fft 1024, hop 512), 10 log10."""
    mel = librosa.feature.melspectrogram(y=y.astype(np.float64), sr=sr, n_fft=1024, hop_length=512, n_mels=128,
                                         pad_mode="constant")
    return (10 * np.log10(np.maximum(mel, np.finfo(float).eps))).T


def training_normals_by_hand(run_dir: Path) -> list[str]:
    with open(run_dir / "train_files.csv", newline="") as fh:
        return [r["file"] for r in csv.DictReader(fh) if r["machine"] == "fan" and r["section"] == "00"
                and r["role"] == "train"]


def mean_by_hand(files: list[str]) -> np.ndarray:
    mels = [librosa_logmel(sf.read(f, dtype="float32")[0]) for f in files]
    assert len({m.shape for m in mels}) == 1  # the toy clips have one length: a plain mean
    return np.mean(mels, axis=0)


# ---------------------------------------------------------------------------------------------
# The archive


def test_the_archive_keeps_bytes_by_sha256_atomically_and_once(tmp_path, monkeypatch):
    archive = AudioArchive(tmp_path / "audio")
    data = wav(1)
    h = sha(data)
    assert archive.find(h) is None
    path = archive.put(h, data, ".wav")
    assert path == tmp_path / "audio" / h[:2] / f"{h}.wav" and path.read_bytes() == data
    assert archive.find(h) == path
    before = path.stat().st_mtime_ns
    os.utime(path, ns=(before - 10**9, before - 10**9))
    assert archive.put(h, data, ".flac") == path  # idempotent: kept once, whatever the suffix, not rewritten
    assert path.stat().st_mtime_ns == before - 10**9
    assert sorted(p.name for p in (tmp_path / "audio").rglob("*")) == [h[:2], f"{h}.wav"]  # no temp file
    with pytest.raises(ValueError, match="SHA-256"):
        archive.put("0" * 64, data, ".wav")
    with pytest.raises(ValueError, match="not a SHA-256"):
        archive.find("../etc/passwd")

    # a write that fails before its rename leaves neither the file nor a temporary file
    other = wav(2)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(StorageError, match="disk full"):
        archive.put(sha(other), other, ".wav")
    monkeypatch.undo()
    assert archive.find(sha(other)) is None
    assert not list((tmp_path / "audio").rglob("*.tmp"))


def test_the_default_archive_is_beside_a_sqlite_file_and_none_for_postgresql(tmp_path):
    assert default_archive(f"sqlite:///{tmp_path / 'plant.db'}") == tmp_path / "plant_audio"
    assert default_archive("sqlite:///:memory:") is None
    assert default_archive("postgresql+psycopg://u@db.example/stetho") is None


def test_find_audio_looks_in_the_archive_then_the_path_then_done(tmp_path):
    data, h = wav(3), sha(wav(3))
    inbox = tmp_path / "inbox"
    recorded = inbox / "pump-1" / "day1" / "a.wav"
    assert find_audio(h, str(recorded), "pump-1") is None
    moved = inbox / "done" / "pump-1" / "day1" / "a.wav"
    moved.parent.mkdir(parents=True)
    moved.write_bytes(wav(4))  # another file of that name in done/: the watcher then writes a.wav.1
    moved.with_name("a.wav.1").write_bytes(data)
    assert find_audio(h, str(recorded), "pump-1") == moved.with_name("a.wav.1")
    recorded.parent.mkdir(parents=True)
    recorded.write_bytes(data)
    assert find_audio(h, str(recorded), "pump-1") == recorded
    recorded.write_bytes(wav(5))  # other bytes under the recorded name are not its audio
    assert find_audio(h, str(recorded), "pump-1") == moved.with_name("a.wav.1")
    archive = AudioArchive(tmp_path / "audio")
    kept = archive.put(h, data, ".wav")
    assert find_audio(h, str(recorded), "pump-1", archive) == kept


# ---------------------------------------------------------------------------------------------
# Spectrograms and normal profiles


def test_the_spectrogram_is_the_log_mel_with_its_axes(tmp_path):
    data = wav(6)
    y = sf.read(io.BytesIO(data), dtype="float32")[0]
    spec = recording_spectrogram(data, 16000)
    assert spec.db.shape == (32, 128)  # 1 + 16000 // 512 frames
    np.testing.assert_allclose(spec.db, librosa_logmel(y), atol=0.01)
    np.testing.assert_allclose(spec.times_s, np.arange(32) * 512 / 16000)
    np.testing.assert_allclose(spec.mel_hz, librosa.mel_frequencies(n_mels=130, fmax=8000)[1:-1])
    path = tmp_path / "a.wav"
    path.write_bytes(data)
    np.testing.assert_array_equal(recording_spectrogram(path, 16000).db, spec.db)
    # a 32 kHz file is resampled to the run's rate first, as scoring does
    assert recording_spectrogram(wav(6, sr=32000), 16000).db.shape == (32, 128)


def test_pooling_averages_consecutive_frames():
    x = np.arange(10.0)[:, None] * np.ones((1, 2))
    pooled, starts = pool_time(x, 4)  # 3 frames a column: [0,1,2] [3,4,5] [6,7,8] [9]
    np.testing.assert_allclose(pooled[:, 0], [1, 4, 7, 9])
    assert starts.tolist() == [0, 3, 6, 9]
    assert pool_time(x, 400)[0].shape == (10, 2)


def test_the_normal_profile_is_the_mean_of_the_training_normals(run_dir, tmp_path):
    files = training_normals_by_hand(run_dir)
    assert len(files) == 10  # 8 source + 2 target training normals
    profiles = NormalProfiles(tmp_path / "cache")
    profile = profiles.get(run_dir, "run1", "fan", "00", 16000)
    assert profile.n_clips == 10 and list(profile.files) == files and not profile.all_sections
    np.testing.assert_allclose(profile.mean, mean_by_hand(files), atol=0.01)
    assert profiles.get(run_dir, "run1", "fan", "00", 16000) is profile  # kept in memory
    # ... and on disk: a new instance reads it back without the training files
    assert len(list((tmp_path / "cache" / "profiles" / "run1").glob("*.npz"))) == 1
    again = NormalProfiles(tmp_path / "cache").get(tmp_path / "no-such-run", "run1", "fan", "00", 16000)
    np.testing.assert_array_equal(again.mean, profile.mean)
    # a section without training normals uses every section's; at most max_clips, evenly spaced
    few = NormalProfiles(max_clips=3).get(run_dir, "run1", "fan", "07", 16000)
    assert few.all_sections and list(few.files) == [files[0], files[4], files[9]]  # linspace(0, 9, 3) rounded
    np.testing.assert_allclose(few.mean, mean_by_hand([files[0], files[4], files[9]]), atol=0.01)


def test_a_run_whose_training_files_are_gone_names_the_run_and_the_file(run_dir, tmp_path):
    moved = tmp_path / "run"
    moved.mkdir()
    text = (run_dir / "train_files.csv").read_text().replace(str(Path(training_normals_by_hand(run_dir)[0]).parent),
                                                             str(tmp_path / "gone"))
    (moved / "train_files.csv").write_text(text)
    with pytest.raises(ProfileError, match=r"run abc .*training file .*gone.*is gone"):
        NormalProfiles().get(moved, "abc", "fan", "00", 16000)
    with pytest.raises(ProfileError, match="no normal training clip of machine type 'pump'"):
        NormalProfiles().get(run_dir, "abc", "pump", "00", 16000)


# ---------------------------------------------------------------------------------------------
# The service's endpoints


@pytest.fixture
def db(tmp_path):
    with open_database(f"sqlite:///{tmp_path / 'monitor.db'}") as database:
        yield database


def flag(db, asset, verdict, recording_id):
    """An on_verdict hook raising one alert per recording, so each has an alert to show."""
    return [db.add_alert(asset, verdict.default_mode, "k_of_n", f"test alert for {recording_id}", [recording_id])]


@pytest.fixture
def archive(tmp_path):
    return AudioArchive(tmp_path / "monitor_audio")


@pytest.fixture
def served(scorer, db, archive):
    app = create_app(scorer, db, TOKEN, archive=archive, on_verdict=flag)
    with Server(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def upload(client, data: bytes, name: str = "a.wav", asset: str = "fan-1") -> dict:
    r = client.post("/v1/score", headers=AUTH, files={"file": (name, data, "audio/wav")},
                    data={"asset": asset, "section": "00", "recorded_at": "2026-03-01T08:00:00Z"})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_recording_with_its_verdicts_alerts_and_audio(served, scorer, archive):
    data = wav(7)
    scored = upload(served, data)
    rid = scored["recording_id"]
    assert archive.find(scored["sha256"]).read_bytes() == data  # kept before the verdict was stored
    r = served.get(f"/v1/recordings/{rid}")
    assert r.status_code == 200, r.text
    got = r.json()
    assert {k: got[k] for k in ("id", "asset", "machine_type", "path", "sha256", "section", "source")} == {
        "id": rid, "asset": "fan-1", "machine_type": "fan", "path": "a.wav", "sha256": sha(data), "section": "00",
        "source": "http"}
    assert got["duration_s"] == 1.0 and got["sample_rate"] == 16000 and got["recorded_at"].startswith("2026-03-01T08")
    assert got["default_mode"] == scorer.default_mode("fan") and got["anomalous"] == scored["anomalous"]
    assert got["modes"] == {m: {**v, "run_id": scored["run"]["run_id"]} for m, v in scored["modes"].items()}
    assert [(a["id"], a["rule"], a["message"]) for a in got["alerts"]] == [
        (scored["alerts"][0], "k_of_n", f"test alert for {rid}")]
    assert got["audio_kept"] is True

    audio = served.get(f"/v1/recordings/{rid}/audio")
    assert audio.status_code == 200 and audio.content == data  # exactly the uploaded bytes
    assert audio.headers["content-type"] == "audio/wav"

    missing = served.get("/v1/recordings/999")
    assert missing.status_code == 404 and missing.json() == {"error": "unknown_recording", "detail": "no recording 999"}
    assert served.get("/v1/recordings/999/audio").json()["error"] == "unknown_recording"
    paths = served.get("/openapi.json").json()["paths"]
    assert {"/v1/recordings/{recording_id}", "/v1/recordings/{recording_id}/audio",
            "/v1/recordings/{recording_id}/spectrogram"} <= set(paths)


def test_the_spectrogram_endpoint_gives_recording_normal_and_difference(served, run_dir):
    data = wav(8)
    rid = upload(served, data)["recording_id"]
    r = served.get(f"/v1/recordings/{rid}/spectrogram")
    assert r.status_code == 200, r.text
    got = r.json()
    rec, normal, diff = (np.array(got[k]) for k in ("recording", "normal", "difference"))
    assert rec.shape == normal.shape == diff.shape == (32, 128) and got["frames_per_column"] == 1
    want_rec = librosa_logmel(sf.read(io.BytesIO(data), dtype="float32")[0])
    want_normal = mean_by_hand(training_normals_by_hand(run_dir))
    assert np.abs(rec - want_rec).max() <= 0.06  # rounded to 0.1 dB
    assert np.abs(normal - want_normal).max() <= 0.06
    assert np.abs(diff - (want_rec - want_normal)).max() <= 0.06
    assert np.array_equal(rec, np.round(rec, 1))
    assert got["n_normal_clips"] == 10 and got["normal_sections"] == "own" and got["sample_rate"] == 16000
    np.testing.assert_allclose(got["times_s"], np.arange(32) * 512 / 16000, atol=1e-4)
    np.testing.assert_allclose(got["mel_hz"], librosa.mel_frequencies(n_mels=130, fmax=8000)[1:-1], atol=0.06)

    pooled = served.get(f"/v1/recordings/{rid}/spectrogram", params={"columns": 10}).json()
    assert len(pooled["times_s"]) == 8 and pooled["frames_per_column"] == 4  # 32 frames -> 8 columns of 4
    assert np.abs(np.array(pooled["recording"])[1] - want_rec[4:8].mean(axis=0)).max() <= 0.06


def test_a_recording_whose_audio_was_deleted_is_404_with_a_clear_detail(served, archive):
    scored = upload(served, wav(9))
    rid = scored["recording_id"]
    archive.find(scored["sha256"]).unlink()
    for url in (f"/v1/recordings/{rid}/audio", f"/v1/recordings/{rid}/spectrogram"):
        r = served.get(url)
        assert r.status_code == 404 and r.json()["error"] == "audio_not_kept", r.text
        assert f"recording {rid}: its audio was not kept" in r.json()["detail"]
        assert str(archive.root) in r.json()["detail"]
    assert served.get(f"/v1/recordings/{rid}").json()["audio_kept"] is False


def test_an_upload_that_cannot_be_archived_is_503_and_stores_nothing(served, db, archive):
    archive.root.parent.mkdir(parents=True, exist_ok=True)
    archive.root.write_text("a file where the archive's folder should be")
    r = served.post("/v1/score", headers=AUTH, content=wav(10), params={"asset": "fan-1"})
    assert r.status_code == 503 and r.json()["error"] == "archive", r.text
    assert "cannot keep the audio" in r.json()["detail"]
    with db.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Recording)) == 0


# ---------------------------------------------------------------------------------------------
# The watcher


def test_the_watcher_archives_and_its_moved_file_is_found(tmp_path, scorer, db):
    inbox = tmp_path / "inbox"
    files = {}
    for name, seed in (("kept.wav", 11), ("moved.wav", 12)):
        path = inbox / "pump-1" / "day1" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(wav(seed))
        os.utime(path, (OLD, OLD))
        files[name] = path
    archive = AudioArchive(tmp_path / "audio")
    Watcher(inbox, scorer, db, machine_types="fan", move=True, archive=archive,
            settle_seconds=0).scan_once()
    assert archive.find(sha(wav(11))).read_bytes() == wav(11) and archive.find(sha(wav(12))) is not None

    # without an archive, the moved file is found in done/ by its recorded path and SHA-256
    more = inbox / "pump-1" / "day2" / "late.wav"
    more.parent.mkdir(parents=True)
    more.write_bytes(wav(13))
    os.utime(more, (OLD, OLD))
    Watcher(inbox, scorer, db, machine_types="fan", move=True, settle_seconds=0).scan_once()
    assert not more.exists()
    rec = db.recording(db.recording_id("pump-1", sha(wav(13))))
    assert rec.path == str(more) and rec.section == "00" and rec.source == "watch"
    assert find_audio(rec.sha256, rec.path, rec.asset) == inbox / "done" / "pump-1" / "day2" / "late.wav"


def test_the_archive_option_of_serve_and_watch(tmp_path):
    from stetho.cli import _archive, build_parser

    parser = build_parser()
    sqlite = f"sqlite:///{tmp_path / 'plant.db'}"
    assert _archive(parser.parse_args(["serve", "run", "--db", sqlite])) == tmp_path / "plant_audio"
    assert _archive(parser.parse_args(["watch", "inbox", "--run", "run", "--db", sqlite, "--archive", "none"])) is None
    assert _archive(parser.parse_args(["watch", "inbox", "--run", "run", "--db", "postgresql://u@h/d"])) is None
    assert _archive(parser.parse_args(["serve", "run", "--db", "postgresql://u@h/d", "--archive", "/srv/audio"])) \
        == Path("/srv/audio")


def test_a_run_whose_training_clips_are_gone_gives_409_naming_run_and_file(run_dir, db, tmp_path):
    import shutil

    from stetho.monitor.scoring import Scorer

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    first = training_normals_by_hand(run_dir)[0]
    text = (copy / "train_files.csv").read_text().replace(str(Path(first).parent), str(tmp_path / "gone"))
    (copy / "train_files.csv").write_text(text)
    app = create_app(Scorer.load(copy, resample=False), db, TOKEN, archive=AudioArchive(tmp_path / "audio"))
    with Server(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        rid = upload(client, wav(14))["recording_id"]
        r = client.get(f"/v1/recordings/{rid}/spectrogram")
        assert r.status_code == 409 and r.json()["error"] == "no_training_data", r.text
        assert str(tmp_path / "gone" / Path(first).name) in r.json()["detail"] and "run " in r.json()["detail"]
        assert client.get(f"/v1/recordings/{rid}/audio").status_code == 200
