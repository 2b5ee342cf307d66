"""``stetho run RECIPE --engine ray`` (stetho.pipeline.ray_engine): a local Ray instance of 2 CPUs
(started once for the module), a comparison of 2 variants × 2 seeds × 2 machine types of the
``stats`` model on tiny toy data. Every file a run writes is the in-process engine's, byte for
byte (but the few that record paths, times or pickles); a worker killed by SIGKILL in the middle
of a task is retried by Ray and the comparison completes with complete run folders only."""

from __future__ import annotations

import filecmp
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")

from stetho import pipeline  # noqa: E402
from stetho.cli import main  # noqa: E402
from stetho.errors import ConfigError  # noqa: E402
from stetho.pipeline.ray_engine import JOURNAL, connected  # noqa: E402
from stetho.synth import make_toy_dataset  # noqa: E402

#: Files of a run that differ between any two runs of the same recipe (paths, start times,
#: durations) or in bytes only (the pickle layout of a model file; its arrays are equal).
NOT_COMPARED = {"config.yaml", "versions.json", "timings.json", "models.json"}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance of 2 CPUs for the module (every engine call joins it)."""
    with connected(num_cpus=2):
        yield ray.cluster_resources()


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    make_toy_dataset(root, machines=["fan", "pump"], train_clips=8, target_train_clips=2, test_clips=2,
                     duration=1.0, seed=0)
    return root


VARIANTS = {"full": {}, "small": {"params": {"n_mels": 32}}}


def _recipe(toy: Path, out: Path, cache: Path, variants: tuple[str, ...] = ("full", "small"),
            seeds: tuple[int, ...] = (1, 2)) -> dict:
    return {"data": str(toy), "model": "stats", "progress": False, "cache_dir": str(cache), "out": str(out),
            "resources": {"cpus": 1, "gpus": 0},
            "compare": {"seeds": list(seeds), "variants": {v: VARIANTS[v] for v in variants}}}


@pytest.fixture(scope="module")
def local_out(toy, tmp_path_factory) -> Path:
    """The comparison run in process (engine local): the reference, run with the threads each Ray
    task of ``resources: {cpus: 1}`` has (torch, BLAS and OpenMP at 1 thread; Ray starts its
    workers with OMP_NUM_THREADS=1). With more BLAS threads the last bits of a score may differ:
    the README's promise is byte-identical files for the same thread settings."""
    import torch
    from threadpoolctl import threadpool_limits

    out = tmp_path_factory.mktemp("local") / "cmp"
    before = torch.get_num_threads()
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")
    try:
        torch.set_num_threads(1)
        with threadpool_limits(limits=1):
            pipeline.run(_recipe(toy, out, out.parent / "cache"), report=False)
    finally:
        torch.set_num_threads(before)
        mp.undo()
    return out


def _files(root: Path) -> dict[Path, Path]:
    return {p.relative_to(root): p for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_same_files(local: Path, other: Path) -> int:
    """Every file of ``local`` is in ``other`` byte for byte (but :data:`NOT_COMPARED` and model
    files, whose arrays are compared), and ``other`` holds no run file more; returns the count."""
    import torch

    a, b = _files(local), _files(other)
    kept = {p for p in a if p.name not in NOT_COMPARED and not p.name.startswith(".")}
    extra = {p for p in b if p.name not in NOT_COMPARED and not p.name.startswith(".")} - kept - {Path(JOURNAL)}
    assert not extra, f"files only the Ray engine wrote: {sorted(map(str, extra))}"
    for rel in sorted(kept):
        assert rel in b, f"{rel} missing from the Ray run"
        if rel.suffix == ".pt":
            _assert_equal(torch.load(a[rel], weights_only=False), torch.load(b[rel], weights_only=False), str(rel))
            continue
        assert filecmp.cmp(a[rel], b[rel], shallow=False), f"{rel} differs from the in-process run's"
    return len(kept)


def _assert_equal(x: object, y: object, where: str) -> None:
    """Two loaded model files hold equal values (arrays and tensors element for element)."""
    import numpy as np
    import torch

    assert type(x) is type(y), where
    if isinstance(x, dict):
        assert list(x) == list(y), where
        for k in x:
            _assert_equal(x[k], y[k], f"{where}/{k}")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            _assert_equal(u, v, f"{where}[{i}]")
    elif isinstance(x, (np.ndarray, torch.Tensor)):
        assert x.shape == y.shape and bool((x == y).all()), where
    else:
        assert repr(x) == repr(y), where


def _journal(out: Path) -> list[list[str]]:
    path = out / JOURNAL
    return [line.split("\t") for line in path.read_text().splitlines()] if path.exists() else []


def _assert_complete(out: Path, variants: tuple[str, ...] = ("full", "small"), seeds: tuple[int, ...] = (1, 2)) -> None:
    """Every run folder finished (trained, tested) and nothing staged, half-swapped or left over."""
    leftovers = [p for p in out.rglob(".*") if p.is_dir() and p.name.endswith((".partial", ".parts", ".old"))]
    assert not leftovers, leftovers
    for variant in variants:
        for seed in seeds:
            run = out / variant / f"seed_{seed}"
            timings = json.loads((run / "timings.json").read_text())
            assert set(timings) == {"train", "test"}
            assert sorted(json.loads((run / "models.json").read_text())["models"]) == ["fan.pt", "pump.pt"]
            assert not (run / ".test.partial").exists()
            assert (run / "summary.csv").is_file()


def test_ray_engine_writes_the_same_files_as_in_process(local_ray, toy, local_out, tmp_path, capsys):
    """The CLI with --engine ray on the local instance: one task per (variant, seed, machine
    type) plus one test task per run; every score file and comparison table byte-identical."""
    out = tmp_path / "cmp"
    recipe = tmp_path / "cmp.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(toy, out, tmp_path / "cache")))
    assert main(["-q", "run", str(recipe), "--engine", "ray", "--no-report"]) == 0
    assert "comparison tables written to" in capsys.readouterr().out
    n = _assert_same_files(local_out, out)
    # 4 runs × (train/test files, skipped, summary, 2 thresholds files, decision scores, 2 models
    # + 4 modes × 8 results files) + 3 comparison tables (more if runs come to hold more files)
    assert n >= 4 * (9 + 4 * 8) + 3, n
    assert (out / "small" / "seed_2" / "results" / "knn" / "anomaly_score_pump_section_00_test.csv").is_file()
    scores = (out / "comparison_models.csv").read_text()
    assert scores == (local_out / "comparison_models.csv").read_text() and "small/mahalanobis" in scores
    _assert_complete(out)
    log = _journal(out)
    trains = [r for r in log if r[1] == "done" and r[2].startswith("train ")]
    tests = [r for r in log if r[1] == "done" and r[2].startswith("test ")]
    assert sorted(r[2] for r in trains) == sorted(f"train {v}/seed_{s} {m}" for v in ("full", "small")
                                                  for s in (1, 2) for m in ("fan", "pump"))
    assert len(tests) == 4 and not [r for r in log if r[1] == "failed"]
    assert len({r[3] for r in log}) == 2  # two worker processes: the instance's 2 CPUs, 1 per task


def test_a_killed_worker_is_retried_and_the_comparison_completes(local_ray, toy, local_out, tmp_path):
    """SIGKILL the worker of the first training task as soon as it starts (its pid is in the
    task log): Ray retries it in a new worker; the run is complete and equals the in-process one."""
    out = tmp_path / "cmp"
    killed: list[tuple[str, int]] = []
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set() and not killed:
            for row in _journal(out):
                if row[1] == "start" and row[2].startswith("train "):
                    os.kill(int(row[3]), signal.SIGKILL)
                    killed.append((row[2], int(row[3])))
                    break
            time.sleep(0.005)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        pipeline.run(_recipe(toy, out, tmp_path / "cache", variants=("full",), seeds=(1,)), report=False,
                     engine="ray")
    finally:
        stop.set()
        thread.join()
    assert killed, "no training task was seen starting"
    task, pid = killed[0]
    log = _journal(out)
    assert not [r for r in log if r[2] == task and r[1] == "done" and int(r[3]) == pid], "killed after it finished"
    again = [r for r in log if r[2] == task and r[1] == "start" and int(r[3]) != pid]
    assert again and [r for r in log if r[2] == task and r[1] == "done" and r[3] == again[-1][3]]
    _assert_complete(out, variants=("full",), seeds=(1,))
    assert _assert_same_files(local_out / "full" / "seed_1", out / "full" / "seed_1") >= 9 + 4 * 8


def test_ray_engine_single_run_and_errors(local_ray, toy, tmp_path):
    """A recipe without compare: runs on Ray too (its machine types as tasks) with the scores of
    the in-process run; impossible resources and --address without the engine are one-line errors.
    The local instance lives on the loopback address only."""
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    assert local_ray["CPU"] == 2
    base = {"data": str(toy), "model": "stats", "progress": False, "cache_dir": str(tmp_path / "cache"),
            "params": {"n_mels": 32}, "seed": 5}
    here = pipeline.run({**base, "out": str(tmp_path / "here")}, report=False)
    there = pipeline.run({**base, "out": str(tmp_path / "there")}, report=False, engine="ray")
    for mode, result in here.results.items():
        assert there.results[mode].official_score == pytest.approx(result.official_score, abs=0)
        for f in (tmp_path / "here" / "results" / mode).iterdir():
            assert filecmp.cmp(f, tmp_path / "there" / "results" / mode / f.name, shallow=False), f
    with pytest.raises(ConfigError, match=r"resources.cpus is 3 but the Ray cluster has 2 CPU"):
        pipeline.run({**base, "out": str(tmp_path / "big"), "resources": {"cpus": 3}}, report=False, engine="ray")
    with pytest.raises(ConfigError, match=r"resources.gpus must be a number >= 0"):
        pipeline.run({**base, "out": str(tmp_path / "x"), "resources": {"gpus": -1}}, report=False, engine="ray")
    with pytest.raises(ConfigError, match="--address joins a Ray cluster: it needs --engine ray"):
        pipeline.run({**base, "out": str(tmp_path / "x")}, report=False, address="auto")
