"""Hyper-parameter search through Ray Tune (stetho.pipeline.search): a recipe's ``search:`` block
run by ``stetho run`` on one local Ray instance of 2 CPUs for the module, with the ``stats``
model on tiny toy data (2 machine types). Every trial's metric is the official score its run
folder's ``summary.csv`` records, the best is their maximum, ``best_recipe.yaml`` run by
``stetho run`` writes the best trial's score files byte for byte, a seeded random search draws
the same trials again, and evaluation data and bad spaces are refused before anything runs."""

from __future__ import annotations

import csv
import filecmp
import itertools
import shutil
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")
pytest.importorskip("ray.tune")

from stetho import pipeline  # noqa: E402
from stetho.cli import main  # noqa: E402
from stetho.errors import ConfigError  # noqa: E402
from stetho.pipeline.ray_engine import connected  # noqa: E402
from stetho.pipeline.search import BEST_RECIPE, RESULTS_CSV  # noqa: E402
from stetho.synth import make_toy_dataset  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance of 2 CPUs for the module (every search joins it)."""
    with connected(num_cpus=2):
        yield


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    make_toy_dataset(root, machines=["fan", "pump"], train_clips=8, target_train_clips=2, test_clips=2,
                     duration=1.0, seed=0)
    return root


def _recipe(toy: Path, out: Path, search: dict, **extra) -> dict:
    return {"data": str(toy), "model": "stats", "progress": False, "cache_dir": str(out.parent / "cache"),
            "out": str(out), "seed": 3, "search": search, **extra}


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / RESULTS_CSV, newline="") as f:
        return list(csv.DictReader(f))


def _official(run: Path, mode: str) -> float:
    """The official score of ``mode`` as the run folder's summary.csv records it."""
    with open(run / "summary.csv", newline="") as f:
        (row,) = [r for r in csv.DictReader(f) if r["score"] == mode]
    assert row["status"] == "official"
    return float(row["official score"])


def test_grid_search_through_the_cli(local_ray, toy, tmp_path, capsys):
    """A 2 × 2 grid over params.score_mode and params.k (keep: all): the CSV has the 4
    combinations, each metric is its run's official score in the mode of its score_mode, the
    best is their maximum, and best_recipe.yaml reproduces the best trial's files."""
    out = tmp_path / "search"
    space = {"params.score_mode": ["knn", "mahalanobis"], "params.k": [1, 2]}
    recipe = tmp_path / "search.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(toy, out, {"method": "grid", "space": space, "keep": "all"}),
                                     sort_keys=False))
    assert main(["-q", "run", str(recipe), "--no-report"]) == 0
    printed = capsys.readouterr().out
    assert "best: trial" in printed and BEST_RECIPE in printed
    rows = _rows(out)
    assert list(rows[0]) == ["trial", "params.score_mode", "params.k", "score_mode", "official", "best", "run", "error"]
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3"]
    assert sorted((r["params.score_mode"], int(r["params.k"])) for r in rows) == sorted(
        itertools.product(["knn", "mahalanobis"], [1, 2]))
    values = []
    for r in rows:
        assert r["score_mode"] == r["params.score_mode"] and not r["error"]
        run = Path(r["run"])
        assert run == out / "trials" / f"trial_{int(r['trial']):05d}" and run.is_dir()
        done = yaml.safe_load((run / "config.yaml").read_text())
        assert done["params"] == {"score_mode": r["params.score_mode"], "k": int(r["params.k"])}
        assert done["seed"] == 3 and done["search"] is None
        assert float(r["official"]) == _official(run, r["score_mode"])  # full precision in the CSV
        values.append(float(r["official"]))
    best = [r for r in rows if r["best"] == "1"]
    assert len(best) == 1 and float(best[0]["official"]) == max(values)
    assert best[0]["trial"] == min((r for r in rows if float(r["official"]) == max(values)),
                                   key=lambda r: int(r["trial"]))["trial"]  # ties: the first trial
    # the best recipe: no search block, the best parameters, runnable as it is
    best_recipe = yaml.safe_load((out / BEST_RECIPE).read_text())
    assert "search" not in best_recipe and best_recipe["model"] == "stats" and best_recipe["seed"] == 3
    assert best_recipe["params"] == {"score_mode": best[0]["params.score_mode"], "k": int(best[0]["params.k"])}
    assert main(["-q", "run", str(out / BEST_RECIPE), "--no-report"]) == 0
    again, run = Path(best_recipe["out"]), Path(best[0]["run"])
    mode = best[0]["score_mode"]
    assert _official(again, mode) == float(best[0]["official"])
    files = sorted(p.name for p in (run / "results" / mode).iterdir())
    assert files == sorted(p.name for p in (again / "results" / mode).iterdir()) and len(files) >= 8
    for name in files:
        assert filecmp.cmp(run / "results" / mode / name, again / "results" / mode / name, shallow=False), name
    # a second search into the same folder needs overwrite
    with pytest.raises(ConfigError, match="holds an earlier search"):
        pipeline.run(_recipe(toy, out, {"space": {"params.k": [1]}}), report=False)


def test_random_search_with_a_seed_is_reproducible(local_ray, toy, tmp_path):
    """Random search (2 samples of randint k and a choice of mode): the same seed draws the same
    trials with the same metrics; values stay within the space; keep: best leaves one run folder."""
    spec = {"method": "random", "samples": 2, "seed": 11, "metric": "auc_source",
            "space": {"params.k": {"randint": [1, 4]}, "params.score_mode": ["knn", "density"]}}
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        outcome = pipeline.run(_recipe(toy, out, spec), report=False)
        assert outcome.best is not None and outcome.best.run_dir.is_dir()
        assert sorted(p.name for p in (out / "trials").iterdir() if p.is_dir()) == [outcome.best.run_dir.name]
        assert len(list((out / "trials").iterdir())) == 2  # the run folder and its lock file
        outs.append(_rows(out))
    a, b = outs
    assert len(a) == 2
    assert [(r["params.k"], r["params.score_mode"], r["auc_source"]) for r in a] == [
        (r["params.k"], r["params.score_mode"], r["auc_source"]) for r in b]
    for r in a:
        assert 1 <= int(r["params.k"]) <= 4 and r["params.score_mode"] in ("knn", "density")
        assert 0.0 <= float(r["auc_source"]) <= 1.0
    assert float(next(r for r in a if r["best"] == "1")["auc_source"]) == max(float(r["auc_source"]) for r in a)


@pytest.fixture()
def small_toy(tmp_path) -> Path:
    root = tmp_path / "small"
    make_toy_dataset(root, machines=["fan"], train_clips=2, target_train_clips=1, test_clips=1, duration=0.5, seed=0)
    return root


SPACE = {"space": {"params.k": [1, 2]}}


def test_evaluation_data_is_refused(small_toy, tmp_path):
    """subset: eval, an eval_data folder, unlabelled test clips and a DCASE 2023 evaluation machine
    type: one-line errors before Ray starts or anything trains."""
    out = tmp_path / "out"
    both = tmp_path / "dcase"
    shutil.copytree(small_toy, both / "dev_data")
    shutil.copytree(small_toy, both / "eval_data")
    with pytest.raises(ConfigError, match=r"subset is eval; a search picks parameters on the data it measures"):
        pipeline.run(_recipe(both, out, SPACE, subset="eval"), report=False)
    with pytest.raises(ConfigError, match=r"eval_data.* is an evaluation set"):
        pipeline.run(_recipe(both / "eval_data", out, SPACE), report=False)
    with pytest.raises(ConfigError, match=r"eval_data.* is an evaluation set"):
        pipeline.run(_recipe(both, out, SPACE, subset="dev", test={"data": str(both / "eval_data")}), report=False)
    # a manifest of the same clips with the test labels left out: an evaluation set's test split
    clips = sorted(small_toy.rglob("*.wav"))
    manifest = tmp_path / "clips.csv"
    lines = ["path,machine,split,label,domain"]
    for p in clips:
        split = p.parent.name
        label = "" if split == "test" else "normal"
        lines.append(f"{p},fan,{split},{label},{'source' if '_source_' in p.name else 'target'}")
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"has no label \(unlabelled test clips are an evaluation set's\)"):
        pipeline.run(_recipe(manifest, out, SPACE), report=False)
    evalset = tmp_path / "d2023"
    shutil.copytree(small_toy / "fan", evalset / "ToyDrone")
    with pytest.raises(ConfigError, match=r"machine type ToyDrone, one of dcase2023's evaluation set"):
        pipeline.run(_recipe(evalset, out, SPACE, dataset="dcase2023"), report=False)
    assert not out.exists()
    # the development half of the same folder is accepted by the check
    from stetho.config import resolve
    from stetho.pipeline.search import check_development_data

    check_development_data(resolve(_recipe(both, out, SPACE, subset="dev")))


@pytest.mark.parametrize("search, message", [
    ({"space": {"k": [1, 2]}}, r"search.space.k: a search runs over model hyper-parameters only: write params.NAME"),
    ({"space": {"params.k": []}}, r"search.space.params.k: the list of values is empty"),
    ({"space": {"params.k": [1, 1]}}, r"search.space.params.k: a value is listed twice"),
    ({"space": {"params.k": {"randint": [1, 4]}}}, r"a distribution needs method: random"),
    ({"method": "random", "samples": 2, "space": {"params.k": {"normal": [0, 1]}}},
     r"search.space.params.k must be one of uniform, loguniform, randint"),
    ({"method": "random", "samples": 2, "space": {"params.k": {"uniform": [3, 1]}}},
     r"search.space.params.k.uniform must be \[low, high\] with numbers low < high"),
    ({"method": "random", "samples": 2, "space": {"params.k": {"loguniform": [0, 1]}}}, r"loguniform needs low > 0"),
    ({"method": "random", "samples": 2, "space": {"params.k": {"randint": [1, 2.5]}}}, r"randint needs integer bounds"),
    ({"method": "random", "space": {"params.k": [1]}}, r"search.samples \(the number of random trials\) must be"),
    ({"samples": 3, "space": {"params.k": [1]}}, r"search.samples is for method: random"),
    ({"method": "bayes", "space": {"params.k": [1]}}, r"search.method must be grid or random"),
    ({"metric": "accuracy", "space": {"params.k": [1]}}, r"search.metric 'accuracy' is unknown"),
    ({"mode": "best", "space": {"params.k": [1]}}, r"search.mode must be max or min"),
    ({"space": {"params.k": [1]}, "epochs": 3}, r"search: unknown key\(s\) epochs"),
    ({"space": {}}, r"search.space must map params.NAME"),
    # values the model refuses: each one checked before anything runs
    ({"space": {"params.k": [1, 0]}}, r"search.space.params.k: value 0: .*k"),
    ({"method": "random", "samples": 2, "space": {"params.k": {"uniform": [1, 3]}}},
     r"search.space.params.k: value 1.0?: .*k"),
    ({"space": {"params.no_such_param": [1]}}, r"search.space.params.no_such_param: value 1: .*no_such_param"),
    ({"score": "gmm", "space": {"params.k": [1]}, }, r"search.score: score mode 'gmm' is not among the modes"),
])
def test_bad_spaces_are_refused(small_toy, tmp_path, search, message):
    """Every bad search block is a one-line ConfigError naming the key, before any work."""
    extra = {"test": {"score": ["knn", "density"]}} if search.get("score") == "gmm" else {}
    with pytest.raises(ConfigError, match=message):
        pipeline.run(_recipe(small_toy, tmp_path / "out", search, **extra), report=False)
    assert not (tmp_path / "out").exists()


def test_search_and_compare_are_not_combined(small_toy, tmp_path):
    with pytest.raises(ConfigError, match="search and compare cannot be combined"):
        pipeline.run(_recipe(small_toy, tmp_path / "out", SPACE, compare={"seeds": [1, 2]}), report=False)
