"""Nothing lost, nothing mixed: kill -9 during train and test, --overwrite, concurrent runs, disk
full, read-only folders, stray and changed model files, leftovers of killed writers.

Kills are real: a real ``stetho`` process receives SIGKILL, either from this test or — to land
exactly at the worst moment — from itself, through a patched step of :mod:`stetho.run_folder`.
Disk full and read-only are mocked at the write call (``OSError(ENOSPC/EROFS)``): the suite runs as
root, where permissions do not stop a write, and mounting a small tmpfs needs privileges CI may not
have.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from stetho import pipeline
from stetho.cli import main
from stetho.synth import make_toy_dataset
from stetho.errors import ConfigError, RunLockedError, StethoError, StorageError
from stetho.run_folder import lock_file, run_lock, staging_dir

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
FAST = {"epochs": 3, "batch_size": 64}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "data"
    make_toy_dataset(root, machines=["fan", "valve"], train_clips=8, target_train_clips=2, test_clips=3,
                     duration=1.0, seed=5, progress=False)
    return root


def _cfg(data: Path, out: Path, **over) -> dict:
    return {"data": str(data), "out": str(out), "params": dict(FAST), "progress": False, "cache": False, **over}


@pytest.fixture(scope="module")
def tested(data, tmp_path_factory) -> Path:
    """A trained and tested run (copied by tests that change it)."""
    run = tmp_path_factory.mktemp("tested") / "run"
    pipeline.train(_cfg(data, run))
    pipeline.test(run, progress=False, cache=False)
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run folder (except the lock beside it) by relative path."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _stetho_killed_at(step: str, args: list[str], nth: int = 1) -> subprocess.CompletedProcess:
    """Run ``stetho ARGS`` in a real process that SIGKILLs itself at the ``nth`` call of
    ``stetho.run_folder.<step>`` (before the step runs)."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        import stetho.run_folder as rf
        real, calls = rf.{step}, [0]
        def step(*a, **k):
            calls[0] += 1
            if calls[0] == {nth}:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        rf.{step} = step
        from stetho.cli import main
        sys.exit(main({args!r}))
    """)
    return subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=600)


# -- kill -9 -------------------------------------------------------------------------------------
def test_a_killed_overwrite_leaves_the_finished_run_as_it_was(data, tested, tmp_path):
    run = _copy(tested, tmp_path)
    before = _snapshot(run)
    # Killed when the new training is complete and about to be swapped in: the worst moment.
    proc = _stetho_killed_at("swap_in", ["-q", "train", "--data", str(data), "--out", str(run), "--overwrite",
                                         "--epochs", "2", "--no-progress", "--no-cache", "--seed", "3"])
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _snapshot(run) == before  # models, results, summaries untouched
    assert staging_dir(run).is_dir()
    # The same command again resumes the staged training and only then replaces the run.
    again = subprocess.run([sys.executable, "-m", "stetho.cli", "train", "--data", str(data), "--out", str(run),
                            "--overwrite", "--epochs", "2", "--no-progress", "--no-cache", "--seed", "3"],
                           env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr
    assert not staging_dir(run).exists()
    config = (run / "config.yaml").read_text()
    assert "seed: 3" in config and "epochs: 2" in config
    assert not (run / "results").exists() and not (run / "summary.csv").exists()  # a new run, untested


def test_a_test_killed_before_its_commit_leaves_the_previous_results(data, tested, tmp_path):
    run = _copy(tested, tmp_path)
    before = _snapshot(run)
    proc = _stetho_killed_at("commit_test", ["-q", "test", "--run", str(run), "--no-progress", "--no-cache",
                                             "--decision-fpr", "0.5"])
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (run / ".test.partial").is_dir()  # the killed test's own files
    after = _snapshot(run)
    assert {k: v for k, v in after.items() if not k.startswith(".test.partial")} == before
    # The next command that locks the run cleans up what the killed one left.
    pipeline.test(run, progress=False, cache=False)
    assert not (run / ".test.partial").exists()
    assert (run / "summary.csv").read_bytes() == before["summary.csv"]


def test_a_test_killed_in_the_middle_of_its_commit_is_rolled_forward(data, tested, tmp_path):
    run = _copy(tested, tmp_path)
    old_decisions = (run / "results" / "mse" / "decision_result_fan_section_00_test.csv").read_text()
    # Killed at the second file move of the commit: the old results moved aside, the new not yet in place.
    proc = _stetho_killed_at("_move", ["-q", "test", "--run", str(run), "--no-progress", "--no-cache",
                                       "--decision-fpr", "0.5"], nth=2)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (run / "summary.csv").exists()  # never the previous score beside new results
    pipeline.report([run])  # any command that locks the run finishes the commit first
    assert not (run / ".test.partial").exists() and not (run / ".results.old").exists()
    assert (run / "summary.csv").is_file() and (run / "report.html").is_file()
    new_decisions = (run / "results" / "mse" / "decision_result_fan_section_00_test.csv").read_text()
    assert new_decisions != old_decisions  # the killed test's (FPR 0.5) decisions, complete
    assert sum(int(r.split(",")[1]) for r in new_decisions.split()) > sum(
        int(r.split(",")[1]) for r in old_decisions.split())


# -- overwrite, concurrency, folders -------------------------------------------------------------
def test_a_second_process_on_the_same_run_folder_fails_naming_the_holder(data, tested, tmp_path):
    run = _copy(tested, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from stetho.run_folder import run_lock
        with run_lock({str(run)!r}, "train"):
            print("locked", flush=True)
            time.sleep(60)
    """)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"in use by pid {holder.pid} on .*since"):
            pipeline.train(_cfg(data, run, overwrite=True, seed=2))
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            pipeline.test(run, progress=False)
        assert main(["-q", "train", "--data", str(data), "--out", str(run), "--overwrite", "--no-progress"]) == 2
    finally:
        holder.kill()
        holder.wait()
    # The kernel drops the lock of a killed process: no stale lock to clean by hand.
    with run_lock(run, "train"):
        assert json.loads(lock_file(run).read_text())["pid"] == os.getpid()


def test_a_symlinked_run_folder_is_replaced_where_it_really_is(data, tested, tmp_path):
    real = _copy(tested, tmp_path)
    link = tmp_path / "latest"
    link.symlink_to(real, target_is_directory=True)
    pipeline.train(_cfg(data, link, overwrite=True, seed=4))
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert "seed: 4" in (real / "config.yaml").read_text() and not (real / "summary.csv").exists()
    assert not staging_dir(link).exists() and not (tmp_path / ".run.old").exists()


def test_out_must_be_a_folder_stetho_may_replace(data, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        pipeline.train(_cfg(data, a_file))
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"x")
    with pytest.raises(ConfigError, match="holds other files and no stetho run"):
        pipeline.train(_cfg(data, foreign, overwrite=True))
    assert (foreign / "cat.jpg").read_bytes() == b"x" and a_file.read_text() == "mine"
    assert main(["train", "--data", str(data), "--out", str(a_file / "run"), "--no-progress"]) == 2
    assert "notes.txt is a file, not a folder" in capsys.readouterr().err


def test_models_are_exactly_the_files_the_run_recorded(tested, tmp_path, caplog):
    run = _copy(tested, tmp_path)
    index = json.loads((run / "models.json").read_text())["models"]
    assert sorted(index) == ["fan.pt", "valve.pt"] and all(len(v["sha256"]) == 64 for v in index.values())
    # A stray backup is ignored (it used to replace fan.pt silently) ...
    shutil.copy(run / "models" / "valve.pt", run / "models" / "fan_backup.pt")
    with caplog.at_level("INFO", logger="stetho"):
        pipeline.test(run, progress=False, cache=False)
    assert "ignored fan_backup.pt (not models of this run)" in caplog.text
    assert (run / "summary.csv").read_bytes() == (tested / "summary.csv").read_bytes()
    # ... and a replaced model file is refused.
    shutil.copy(run / "models" / "valve.pt", run / "models" / "fan.pt")
    with pytest.raises(StethoError, match=r"fan.pt: differs from the file this run trained \(SHA-256"):
        pipeline.test(run, progress=False, cache=False)


def test_leftover_temporary_files_are_cleaned_and_new_files_respect_the_umask(data, tested, tmp_path):
    run = _copy(tested, tmp_path)
    leftover = run / "results" / "mse" / ".summary.csv.abc123.tmp"
    leftover.write_text("half")
    old = os.umask(0o002)
    try:
        pipeline.test(run, progress=False, cache=False)
    finally:
        os.umask(old)
    assert not leftover.exists()
    # 0664 under umask 002 (mkstemp alone would give 0600): run folders are shared
    import stetho.fileio as fileio

    expected = 0o666 & ~fileio.umask()
    for p in [run / "summary.csv", run / "results" / "mse" / "summary.csv", run / "models.json"]:
        assert p.stat().st_mode & 0o777 == expected, p


# -- storage errors ------------------------------------------------------------------------------
def _fail_writes(monkeypatch, code: int, match: str) -> None:
    """Make every atomic write whose destination contains ``match`` fail with ``code``."""
    import stetho.fileio as fileio

    real = fileio.atomic_path.__wrapped__  # the generator behind the context manager

    def failing(path):
        if match in str(path):
            raise fileio.storage_error(OSError(code, os.strerror(code)), path)
        return (yield from real(path))

    import contextlib

    monkeypatch.setattr(fileio, "atomic_path", contextlib.contextmanager(failing))


def test_disk_full_while_saving_a_model_keeps_the_previous_run(data, tested, tmp_path, monkeypatch, capsys):
    run = _copy(tested, tmp_path)
    before = _snapshot(run)
    import stetho.fileio as fileio

    real_open = open

    def enospc_open(file, mode="r", *args, **kwargs):  # the write call of the model file fails
        fh = real_open(file, mode, *args, **kwargs)
        if "w" in mode and ".valve.pt." in str(file):
            fh.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return fh

    monkeypatch.setattr(fileio, "open", enospc_open, raising=False)
    code = main(["-q", "train", "--data", str(data), "--out", str(run), "--overwrite", "--epochs", "2",
                 "--no-progress", "--no-cache"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("stetho: error: disk full: cannot write ") and "valve.pt" in err
    assert _snapshot(run) == before  # the finished run is untouched
    assert not list(staging_dir(run).rglob(".*.tmp"))  # no temporary file left behind


@pytest.mark.parametrize("command", ["train", "test", "report"])
def test_a_read_only_folder_is_a_one_line_error(data, tested, tmp_path, monkeypatch, capsys, command):
    run = _copy(tested, tmp_path)
    _fail_writes(monkeypatch, errno.EROFS, str(tmp_path))
    args = {"train": ["train", "--data", str(data), "--out", str(tmp_path / "new"), "--epochs", "1"],
            "test": ["test", "--run", str(run)],
            "report": ["report", str(run)]}[command]
    code = main(["-q", *args, *(["--no-progress", "--no-cache"] if command != "report" else [])])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "the file system is read-only" in err and str(tmp_path) in err


# -- names that would become paths ---------------------------------------------------------------
def test_a_manifest_machine_name_can_never_write_outside_the_run(data, tmp_path, capsys):
    victim = tmp_path / "x" / "VICTIM.pt"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    clip = next((data / "fan" / "train").glob("*.wav"))
    for machine in (str(victim.with_suffix("")), "../../x"):
        manifest = tmp_path / "clips.csv"
        manifest.write_text(f"path,machine,split,section,domain,label\n{clip},{machine},train,00,source,normal\n")
        code = main(["-q", "train", "--data", str(manifest), "--out", str(tmp_path / "run"), "--epochs", "1",
                     "--no-progress", "--no-cache"])
        err = capsys.readouterr().err
        assert code == 2 and "clips.csv: 1 bad row(s)" in err and "line 2" in err, err
        assert f"machine type {machine!r} is not a safe name" in err, err
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "run").exists() and not list(tmp_path.rglob("*.pt"))[1:]
    # and the pipeline checks the name again where it becomes a file name
    from stetho.pipeline import _model_file

    with pytest.raises(StethoError, match="machine type"):
        _model_file(tmp_path / "run", "../../x")


# -- silently wrong before -----------------------------------------------------------------------
def _summary(run: Path) -> str:
    return (run / "summary.csv").read_text() if (run / "summary.csv").exists() else ""


def test_summary_never_shows_an_earlier_tests_score(data, tested, tmp_path, caplog):
    run = _copy(tested, tmp_path)
    assert "official" in _summary(run)
    # Unlabeled data: scores, no metrics, and no stale summary.
    unlabeled = tmp_path / "unlabeled.csv"
    clips = sorted((data / "fan" / "test").glob("*.wav")) + sorted((data / "valve" / "test").glob("*.wav"))
    unlabeled.write_text("path,machine,split,section,domain,label\n"
                         + "".join(f"{c},{c.parent.parent.name},test,00,source,\n" for c in clips))
    outcome = pipeline.test(run, data=unlabeled, progress=False, cache=False)
    assert outcome.results == {"mahalanobis": None, "mse": None}
    assert not (run / "summary.csv").exists() and not (run / "results" / "mse" / "summary.csv").exists()
    # Partly labeled: metrics over the labeled clips, marked partial, naming what was left out.
    partial = tmp_path / "partial.csv"
    rows = [f"{c},{c.parent.parent.name},test,00,source,"
            f"{'' if i == 0 else ('anomaly' if 'anomaly' in c.name else 'normal')}\n" for i, c in enumerate(clips)]
    partial.write_text("path,machine,split,section,domain,label\n" + "".join(rows))
    with caplog.at_level("WARNING", logger="stetho"):
        outcome = pipeline.test(run, data=partial, progress=False, cache=False)
    result = outcome.results["mse"]
    assert result.partial and f"1 of {len(clips)} test clip(s) carry no label" in "; ".join(result.missing)
    assert clips[0].name in caplog.text
    assert "partial" in _summary(run) and f"1 of {len(clips)} test clip(s) carry no label" in _summary(run)


def test_a_score_file_with_a_byte_order_mark_evaluates(tested, tmp_path, capsys):
    scores = tmp_path / "scores"
    shutil.copytree(tested / "results" / "mse", scores)
    f = scores / "anomaly_score_fan_section_00_test.csv"
    f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())  # as spreadsheet programs save CSV
    data = pipeline.load_run_config(tested)["data"]
    assert main(["evaluate", str(scores), "--data", data]) == 0
    assert "official score (dcase2023)" in capsys.readouterr().out
    # an invisible character inside a name is shown escaped: "missing" and "extra" never print alike
    text = f.read_text(encoding="utf-8-sig").splitlines()
    name = text[0].split(",")[0]
    f.write_text("\n".join([name[:5] + "\u200b" + text[0][5:], *text[1:]]) + "\n")
    assert main(["evaluate", str(scores), "--data", data]) == 2
    err = capsys.readouterr().err
    assert f"1 extra (in the scores of machine type 'fan', not in the ground truth): {name[:5]!r}"[:-1] in err
    assert repr(name[:5] + "\u200b" + name[5:]) in err
    assert f"1 missing (in the ground truth, not in the scores of machine type 'fan'): {name}\n" in err


def _stereo_copy(data: Path, out: Path) -> Path:
    """The fan clips of ``data`` as 2-channel files: channel 0 the clip, channel 1 white noise."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    for src in sorted((data / "fan").rglob("*.wav")):
        y, sr = sf.read(src, dtype="float32")
        dst = out / src.relative_to(data)
        dst.parent.mkdir(parents=True, exist_ok=True)
        sf.write(dst, np.stack([y, 0.3 * rng.standard_normal(len(y)).astype("float32")], axis=1), sr)
    return out


def test_channel_and_device_given_at_test_time_are_used(data, tmp_path, capsys):
    stereo = _stereo_copy(data, tmp_path / "stereo")
    run = tmp_path / "run"
    pipeline.train(_cfg(stereo, run))
    pipeline.test(run, progress=False, cache=False)
    ch0 = (run / "results" / "mse" / "anomaly_score_fan_section_00_test.csv").read_text()
    pipeline.test(run, progress=False, cache=False, channel=1)
    ch1 = (run / "results" / "mse" / "anomaly_score_fan_section_00_test.csv").read_text()
    assert ch0 != ch1  # channel 1 (noise) was scored, not channel 0 again
    assert main(["-q", "test", "--run", str(run), "--channel", "5", "--no-progress", "--no-cache"]) == 2
    assert "has 2 channel(s); channel 5 was requested" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        assert main(["-q", "test", "--run", str(run), "--device", "cuda", "--no-progress", "--no-cache"]) == 2
        assert "--device cuda was asked for but CUDA is not available" in capsys.readouterr().err


def test_a_clip_of_another_sample_rate_is_noted_and_refused_with_strict(data, tested, tmp_path, caplog, capsys):
    import librosa
    import soundfile as sf

    run = _copy(tested, tmp_path)
    clips = sorted((data / "fan" / "test").glob("*.wav")) + sorted((data / "valve" / "test").glob("*.wav"))
    low = tmp_path / "low" / clips[0].name
    low.parent.mkdir()
    y, sr = sf.read(clips[0], dtype="float32")
    sf.write(low, librosa.resample(y, orig_sr=sr, target_sr=8000), 8000)
    manifest = tmp_path / "mixed.csv"
    manifest.write_text("path,machine,split,section,domain,label\n" + "".join(
        f"{low if i == 0 else c},{c.parent.parent.name},test,00,source,{'anomaly' if 'anomaly' in c.name else 'normal'}\n"
        for i, c in enumerate(clips)))
    with caplog.at_level("WARNING", logger="stetho"):
        pipeline.test(run, data=manifest, progress=False, cache=False)
    assert "1 test clip(s) have a sample rate the training clips did not have" in caplog.text and str(low) in caplog.text
    import csv

    with open(run / "test_files.csv", newline="") as fh:
        rows = {r["file"]: r for r in csv.DictReader(fh)}
    assert rows[str(low)]["sample_rate"] == "8000"
    assert rows[str(low)]["note"] == "sample rate 8000 Hz, training clips had 16000 Hz"
    assert {r["note"] for f, r in rows.items() if f != str(low)} == {""}
    before = _snapshot(run)
    assert main(["-q", "test", "--run", str(run), "--data", str(manifest), "--strict", "--no-progress",
                 "--no-cache"]) == 2
    assert "have a sample rate the training clips did not have (--strict)" in capsys.readouterr().err
    assert _snapshot(run) == before  # a refused test changes nothing


@pytest.mark.parametrize("args, message", [
    (["--epochs", "-3"], "epochs=-3"),
    (["--param", "batch_size=0"], "batch_size=0"),
    (["--param", "lr=nan"], "params.lr='nan' is not allowed; expected a number > 0"),
    (["--param", "lr=.nan"], "params.lr=nan is not allowed"),
    (["--seed", "100000000000000000000"], "seed"),
])
def test_bad_training_values_are_one_line_errors_before_any_work(data, tmp_path, capsys, args, message):
    code = main(["-q", "train", "--data", str(data), "--out", str(tmp_path / "run"), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists() and not staging_dir(tmp_path / "run").exists()
