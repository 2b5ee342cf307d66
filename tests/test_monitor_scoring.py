"""The scoring core (stetho.monitor.scoring): the same verdicts as `stetho test`, from a path,
bytes or an array; every kind of bad input a ScoringError; models loaded once, nothing written."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stetho import pipeline
from stetho.errors import ConfigError, ScoringError
from stetho.monitor.scoring import Scorer
from stetho.synth import make_toy_dataset

AE_FAST = {"epochs": 2, "batch_size": 128}
DURATION = 1.0  # seconds per toy clip


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    make_toy_dataset(root, machines=["fan", "valve"], train_clips=10, target_train_clips=2, test_clips=4,
                     duration=DURATION, seed=0)
    return root


@pytest.fixture(scope="module")
def runs(toy_root, tmp_path_factory, one_torch_thread) -> dict[str, Path]:
    """A tested `stats` run and a tested 2-epoch `ae` run of both machine types."""
    out = {}
    for model, params in (("stats", {}), ("ae", AE_FAST)):
        run_dir = tmp_path_factory.mktemp("runs") / model
        pipeline.train({"data": str(toy_root), "out": str(run_dir), "model": model, "params": params,
                        "progress": False})
        pipeline.test(run_dir, progress=False)
        out[model] = run_dir
    return out


def _csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _test_files(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "test_files.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _written(run_dir: Path, mode: str, kind: str, machine: str, section: str) -> dict[str, float]:
    path = run_dir / "results" / mode / f"{kind}_{machine}_section_{section}_test.csv"
    return {name: float(value) for name, value in _csv(path)}


@pytest.mark.parametrize("model", ["stats", "ae"])
def test_scores_thresholds_and_decisions_are_those_stetho_test_wrote(runs, model):
    run_dir = runs[model]
    scorer = Scorer.load(run_dir)
    assert scorer.machine_types == ["fan", "valve"]
    det_modes = None
    rows = _test_files(run_dir)
    assert len(rows) == 32  # 2 machine types x 2 domains x 4 clips x normal/anomaly
    n_anomalous = 0
    for row in rows:
        v = scorer.score(row["file"], row["machine"], section=row["section"])
        det_modes = det_modes or list(v.modes)
        assert v.machine_type == row["machine"] and v.sample_rate == int(row["sample_rate"]) == 16000
        assert v.duration_s == pytest.approx(DURATION, abs=1e-9)
        assert v.sha256 == hashlib.sha256(Path(row["file"]).read_bytes()).hexdigest()
        for mode, mv in v.modes.items():
            score = _written(run_dir, mode, "anomaly_score", row["machine"], row["section"])[row["name"]]
            decision = _written(run_dir, mode, "decision_result", row["machine"], row["section"])[row["name"]]
            assert mv.score == pytest.approx(score, rel=1e-9, abs=0)
            assert int(mv.decision) == int(decision)
            assert mv.decision == (mv.score > mv.threshold)
            n_anomalous += mv.decision
    assert set(det_modes) == {p.name for p in (run_dir / "results").iterdir() if p.is_dir()}
    assert 0 < n_anomalous < len(rows) * len(det_modes)  # the comparison covers both decisions
    with open(run_dir / "test_thresholds.csv", newline="") as fh:
        thresholds = list(csv.DictReader(fh))
    assert thresholds
    for t in thresholds:  # the thresholds the test decided with
        v = scorer.score(rows[0]["file"], t["machine"], section="00")
        assert v.modes[t["mode"]].threshold == pytest.approx(float(t["threshold"]), rel=1e-12)


def test_run_identity_is_kept(runs):
    import json

    scorer = Scorer.load([runs["stats"]])
    (run,) = scorer.runs
    assert run.path == runs["stats"] and run.model == "stats" and run.machine_types == ("fan", "valve")
    assert run.run_id == hashlib.sha256((runs["stats"] / "models.json").read_bytes()).hexdigest()[:12]
    assert run.version == json.loads((runs["stats"] / "versions.json").read_text())["stetho"]
    assert scorer.run_of("valve") is run


def test_anomalous_is_the_decision_of_the_detectors_own_score_mode(runs, toy_root, tmp_path):
    from stetho.monitor.scoring import ModeVerdict, Verdict

    run_dir = tmp_path / "knn"  # stats' first mode is density; this run decides with knn
    pipeline.train({"data": str(toy_root), "out": str(run_dir), "model": "stats", "params": {"score_mode": "knn"},
                    "progress": False})
    scorer = Scorer.load(run_dir)
    assert scorer.default_mode("fan") == "knn" and Scorer.load(runs["stats"]).default_mode("fan") == "density"
    for path in sorted((toy_root / "fan" / "test").glob("*.wav")):
        v = scorer.score(path, "fan")
        assert v.default_mode == "knn" and v.anomalous == v.modes["knn"].decision
        assert v.to_dict()["anomalous"] == v.anomalous and v.to_dict()["default_mode"] == "knn"
    one = scorer.score(path, "fan")
    forced = Verdict(name="x", machine_type="fan", run=one.run, duration_s=1.0, sample_rate=16000, sha256="",
                     section="00", default_mode="knn",
                     modes={"density": ModeVerdict(1.0, 2.0, False), "knn": ModeVerdict(3.0, 2.0, True)})
    assert forced.anomalous is True  # not the first mode's False


def test_bytes_and_arrays_score_as_the_file_does(runs, toy_root):
    scorer = Scorer.load(runs["ae"])
    path = sorted((toy_root / "fan" / "test").glob("*.wav"))[0]
    from_path = scorer.score(path, "fan")
    from_bytes = scorer.score(path.read_bytes(), "fan", filename="upload.wav")
    y, sr = sf.read(str(path), dtype="float32")
    from_array = scorer.score(y, "fan", sample_rate=sr)
    assert from_bytes.name == "upload.wav" and from_array.name == "<array>"
    assert from_bytes.sha256 == from_path.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert from_array.sha256 == hashlib.sha256(y.tobytes()).hexdigest()
    for mode in from_path.modes:
        assert from_bytes.modes[mode] == from_path.modes[mode]
        assert from_array.modes[mode].score == pytest.approx(from_path.modes[mode].score, rel=1e-9)
    flac = path.with_name("clip.flac")
    try:
        sf.write(str(flac), y, sr, subtype="PCM_16")
        assert scorer.score(flac.read_bytes(), "fan").modes == from_path.modes  # lossless: same samples
    finally:
        flac.unlink()


def test_other_sample_rates_are_resampled_unless_refused(runs, toy_root, tmp_path):
    path = sorted((toy_root / "valve" / "test").glob("*.wav"))[0]
    y, sr = sf.read(str(path), dtype="float32")
    low = tmp_path / "low.wav"
    import soxr

    sf.write(str(low), soxr.resample(y, sr, 8000, quality="HQ"), 8000, subtype="FLOAT")
    v = Scorer.load(runs["stats"]).score(low, "valve")
    assert v.sample_rate == 8000 and v.duration_s == pytest.approx(DURATION, abs=1e-3)
    assert all(np.isfinite(m.score) for m in v.modes.values())
    with pytest.raises(ScoringError, match=r"low\.wav: sample rate is 8000 Hz, expected 16000 Hz") as err:
        Scorer.load(runs["stats"], resample=False).score(low, "valve")
    assert err.value.kind == "sample_rate"


def _bad_inputs(tmp_path: Path, real_wav: Path) -> dict[str, Path]:
    text = tmp_path / "notes.wav"
    text.write_text("this is a text file, not a recording\n" * 20)
    data = real_wav.read_bytes()
    truncated = tmp_path / "cut.wav"
    truncated.write_bytes(data[: len(data) // 2])
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, dtype=np.float32), 16000, subtype="PCM_16")
    nan = tmp_path / "nan.wav"
    y = np.zeros(32000, dtype=np.float32)
    y[100:110] = np.nan
    sf.write(str(nan), y, 16000, subtype="FLOAT")
    short = tmp_path / "short.wav"
    sf.write(str(short), np.zeros(100, dtype=np.float32), 16000, subtype="PCM_16")
    return {"not_audio": text, "corrupt": truncated, "empty": empty, "non_finite": nan, "too_short": short,
            "not_found": tmp_path / "missing.wav"}


@pytest.mark.parametrize("kind, message", [
    ("not_audio", "cannot be read as audio: unrecognised format"),
    ("corrupt", "truncated: the header declares 16000 frames"),
    ("empty", "zero-length file"),
    ("non_finite", "contains 10 NaN/inf sample"),
    ("too_short", "too short: 100 samples at 16000 Hz"),
    ("not_found", "file does not exist"),
])
def test_each_bad_file_is_a_scoring_error_of_its_kind(runs, toy_root, tmp_path, kind, message):
    scorer = Scorer.load(runs["stats"])
    real = sorted((toy_root / "fan" / "test").glob("*.wav"))[0]
    path = _bad_inputs(tmp_path, real)[kind]
    with pytest.raises(ScoringError, match=message) as err:
        scorer.score(path, "fan")
    assert err.value.kind == kind and err.value.path == path
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    if path.exists():  # the same problem in bytes: named by the upload's name
        with pytest.raises(ScoringError, match=message) as err:
            scorer.score(path.read_bytes(), "fan", filename="upload.wav")
        assert err.value.kind == kind and str(err.value).startswith("upload.wav: ")


def test_a_real_zero_length_recording_is_empty(runs, real_data):
    empties = sorted((real_data / "sensiml_fan" / "empty_cuts").glob("*.wav"))
    assert empties
    with pytest.raises(ScoringError, match="zero-length") as err:
        Scorer.load(runs["stats"]).score(empties[0], "fan")
    assert err.value.kind == "empty"


def test_bad_arrays_and_requests(runs):
    scorer = Scorer.load(runs["stats"])
    y = np.random.default_rng(1).normal(0, 0.1, 32000)
    with pytest.raises(ScoringError, match="needs its sample rate") as err:
        scorer.score(y, "fan")
    assert err.value.kind == "sample_rate"
    bad = y.copy()
    bad[5] = np.inf
    with pytest.raises(ScoringError, match="contains 1 NaN/inf") as err:
        scorer.score(bad, "fan", sample_rate=16000)
    assert err.value.kind == "non_finite"
    with pytest.raises(ScoringError, match="got shape") as err:
        scorer.score(y.reshape(2, -1), "fan", sample_rate=16000)
    assert err.value.kind == "not_audio"
    with pytest.raises(ScoringError, match="over 100x full scale") as err:
        scorer.score(y * 32767 * 100, "fan", sample_rate=16000)
    assert err.value.kind == "out_of_range"
    with pytest.raises(ScoringError, match="cannot score a dict") as err:
        scorer.score({"x": 1}, "fan")
    assert err.value.kind == "not_audio"
    with pytest.raises(ScoringError, match=r"machine type 'fna' is not served .* \(did you mean 'fan'\?\); "
                                           "they serve fan, valve") as err:
        scorer.score(y, "fna", sample_rate=16000)
    assert err.value.kind == "unknown_machine_type"


def test_a_machine_type_served_by_two_runs_is_an_error_naming_both(runs):
    with pytest.raises(ConfigError, match=f"'fan' is served by two runs, {runs['stats']} and {runs['ae']}"):
        Scorer.load([runs["stats"], runs["ae"]])
    with pytest.raises(ConfigError, match="no such run folder"):
        Scorer.load(runs["stats"].parent / "nope")


def test_models_load_once_and_scoring_writes_nothing(runs, toy_root, tmp_path):
    import os

    run_dir = tmp_path / "run"
    shutil.copytree(runs["ae"], run_dir)
    scorer = Scorer.load(run_dir)
    clip = sorted((toy_root / "fan" / "test").glob("*.wav"))[0]
    before = scorer.score(clip, "fan")
    shutil.rmtree(run_dir)  # scoring reads no model file again
    cache = Path(os.environ["STETHO_CACHE_DIR"])

    def tree():
        return sorted((str(p), p.stat().st_mtime_ns) for root in (cache, tmp_path, toy_root) for p in root.rglob("*"))

    snapshot = tree()
    again = scorer.score(clip, "fan")
    scorer.score(clip.read_bytes(), "valve")
    assert tree() == snapshot  # no feature cache, no temporary file
    assert again.modes == before.modes


# -- `stetho score` ---------------------------------------------------------------------------------
def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from stetho.cli import main

    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_stetho_score_prints_each_files_verdict_as_a_table_or_json(runs, toy_root, capsys):
    import json

    files = sorted((toy_root / "valve" / "test").glob("*.wav"))[:3]
    scorer = Scorer.load(runs["stats"])
    expected = [scorer.score(f, "valve") for f in files]
    # a run of fan and valve scores valve files (issue 23's "unknown machine type(s)" must not happen)
    code, out, err = _cli(capsys, "score", str(runs["stats"]), *map(str, files), "--machine-type", "valve", "--json")
    assert code == 0 and err == ""
    lines = [json.loads(line) for line in out.splitlines()]
    assert [d["file"] for d in lines] == [str(f) for f in files]
    for d, v in zip(lines, expected):
        assert d["machine_type"] == "valve" and d["sha256"] == v.sha256
        assert d["run"]["run_id"] == v.run.run_id and d["run"]["model"] == "stats"
        assert d["modes"] == {m: {"score": mv.score, "threshold": mv.threshold, "decision": mv.decision}
                              for m, mv in v.modes.items()}
    code, out, err = _cli(capsys, "score", str(runs["stats"]), *map(str, files), "--machine-type", "valve")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:6] == ["file", "machine", "type", "density", "score", "threshold"]
    assert len(rows) == 3
    for row, v in zip(rows, expected):
        cells = row.split()
        assert cells[0] == str(v.name) and cells[1] == "valve"
        first = next(iter(v.modes.values()))
        assert float(cells[2]) == pytest.approx(first.score, rel=1e-5)
        assert float(cells[3]) == pytest.approx(first.threshold, rel=1e-5)
        assert cells[4] == ("ANOMALY" if first.decision else "normal")


def test_stetho_score_defaults_to_the_runs_only_machine_type(toy_root, tmp_path, capsys):
    run_dir = tmp_path / "fan_only"
    pipeline.train({"data": str(toy_root), "out": str(run_dir), "model": "stats", "machines": ["fan"],
                    "progress": False})
    f = sorted((toy_root / "fan" / "test").glob("*.wav"))[0]
    code, out, err = _cli(capsys, "score", str(run_dir), str(f), "--json")
    assert code == 0, err
    import json

    (d,) = [json.loads(line) for line in out.splitlines()]
    assert d["machine_type"] == "fan"
    assert d["modes"]["mahalanobis"]["score"] == Scorer.load(run_dir).score(f, "fan").modes["mahalanobis"].score


def test_stetho_score_errors_are_one_line_with_status_2(runs, toy_root, tmp_path, capsys):
    good = sorted((toy_root / "fan" / "test").glob("*.wav"))[0]
    code, out, err = _cli(capsys, "score", str(runs["stats"]), str(good))
    assert code == 2 and out == ""
    assert err == (f"stetho: error: {runs['stats']} serves 2 machine types (fan, valve): say which one the "
                   "recordings are of (--machine-type)\n")
    code, out, err = _cli(capsys, "score", str(runs["stats"]), str(good), "--machine-type", "fna")
    assert code == 2 and "machine type 'fna' is not served" in err and "did you mean 'fan'" in err
    text = tmp_path / "notes.wav"
    text.write_text("not audio\n" * 10)
    code, out, err = _cli(capsys, "score", str(runs["stats"]), str(text), str(good), "--machine-type", "fan",
                          "--json")
    assert code == 2  # the good file is still scored
    assert err.startswith(f"stetho: error: {text}: cannot be read as audio") and err.count("\n") == 1
    assert len(out.splitlines()) == 1 and str(good) in out
    code, out, err = _cli(capsys, "score", str(tmp_path / "norun"), str(good))
    assert code == 2 and "no such run folder" in err and err.count("\n") == 1


def test_scoring_from_several_threads_gives_the_same_verdicts(runs, toy_root):
    from concurrent.futures import ThreadPoolExecutor

    scorer = Scorer.load([runs["ae"]])
    files = [(f, m) for m in ("fan", "valve") for f in sorted((toy_root / m / "test").glob("*.wav"))[:4]]
    alone = [scorer.score(f, m).modes for f, m in files]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda fm: scorer.score(fm[0].read_bytes(), fm[1]).modes, files * 3))
    assert together == alone * 3


def test_load_checks_its_arguments(runs):
    with pytest.raises(ConfigError, match="threads must be a whole number >= 1, got 0"):
        Scorer.load(runs["stats"], threads=0)
    with pytest.raises(ConfigError, match="no run folder to score with"):
        Scorer.load([])
    v = Scorer.load(runs["stats"]).score(np.zeros(16000) + 0.01 * np.sin(np.arange(16000)), "fan",
                                         sample_rate=16000, section="01", attributes={"spd": "20"})
    assert v.section == "01" and v.name == "<array>" and v.duration_s == 1.0 and v.sample_rate == 16000
