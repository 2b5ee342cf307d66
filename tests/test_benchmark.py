"""``stetho benchmark``: the splits of small labelled sets, the leaderboard's aggregation and ranks,
and the runner (cells in child processes, reuse, failures) on tiny toy data."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from stetho.datasets.clip import Clip
from stetho.datasets.resplit import clips_from_rules, move_to_test, reference_normals
from stetho.errors import ConfigError
from stetho.outputs.leaderboard import (
    cell_metrics, false_alarm_rate, format_leaderboard, leaderboard, markdown_table, overall_rows,
)


# -- splits -------------------------------------------------------------------------------------

def _clip(name: str, split: str, label: int = 0, machine: str = "slider", section: str = "00") -> Clip:
    return Clip(path=Path(f"/d/{machine}/{split}/{name}"), machine=machine, section=section, split=split, label=label)


def test_move_to_test_spreads_evenly_and_avoids_names_the_test_split_uses():
    train = [_clip(f"normal_{i:02d}.wav", "train") for i in range(10)]
    test = [_clip("normal_00.wav", "test"), _clip("anomaly_00.wav", "test", 1)]
    out = move_to_test(train + test, 3)
    moved = sorted(c.name for c in out if c.split == "test" and c.path.parent.name == "train")
    # movable: normal_01..normal_09 (normal_00 is also a test name); positions int((i + .5) * 9 / 3) = 1, 4, 7
    assert moved == ["normal_02.wav", "normal_05.wav", "normal_08.wav"]
    assert sum(c.split == "train" for c in out) == 7 and len(out) == 12
    with pytest.raises(ConfigError, match="slider has 9 movable training clip"):
        move_to_test(train + test, 9)


def test_reference_normals_keeps_the_last_n_normals_per_section():
    clips = [_clip(f"{i:02d}.wav", "test", 0, section=s) for s in ("00", "02") for i in range(5)]
    clips += [_clip(f"a{i}.wav", "test", 1) for i in range(3)]
    out = reference_normals(clips, 2)
    train = sorted((c.section, c.name) for c in out if c.split == "train")
    assert train == [("00", "03.wav"), ("00", "04.wav"), ("02", "03.wav"), ("02", "04.wav")]
    assert all(c.split == "test" for c in out if c.label == 1)
    with pytest.raises(ConfigError, match="section 00 has 5 normal clip"):
        reference_normals(clips, 5)


def test_clips_from_rules_alternate_keys_and_errors(tmp_path):
    for folder, n in (("Healthy/M1", 5), ("Propeller/M1", 2)):
        (tmp_path / folder).mkdir(parents=True)
        for i in range(n):
            (tmp_path / folder / f"{1400 + 50 * i}.wav").write_bytes(b"")
    rules = [{"files": "Healthy/M1/*.wav", "machine": "bldc", "section": "M1", "label": "normal", "split": "alternate"},
             {"files": "Propeller/M1/*.wav", "machine": "bldc", "section": "M1", "label": "anomaly", "split": "test"}]
    clips = clips_from_rules(tmp_path, rules)
    assert [(c.name, c.split, c.label) for c in clips] == [
        ("Healthy_M1_1400.wav", "train", 0), ("Healthy_M1_1450.wav", "test", 0), ("Healthy_M1_1500.wav", "train", 0),
        ("Healthy_M1_1550.wav", "test", 0), ("Healthy_M1_1600.wav", "train", 0),
        ("Propeller_M1_1400.wav", "test", 1), ("Propeller_M1_1450.wav", "test", 1)]
    with pytest.raises(ConfigError, match=r"clips\[0\]: .*matches no file"):
        clips_from_rules(tmp_path, [{**rules[0], "files": "Nope/*.wav"}])
    with pytest.raises(ConfigError, match=r"clips\[1\]: .*also matched by clips\[0\]"):
        clips_from_rules(tmp_path, [rules[0], {**rules[0]}])
    with pytest.raises(ConfigError, match="anomalous clips belong to the test split"):
        clips_from_rules(tmp_path, [{**rules[1], "split": "alternate"}])
    with pytest.raises(ConfigError, match="unknown key.*colour"):
        clips_from_rules(tmp_path, [{**rules[0], "colour": "red"}])


# -- leaderboard aggregation --------------------------------------------------------------------

def _cell(ds, entry, seed, official, **kw):
    return {"dataset": ds, "entry": entry, "seed": seed, "status": "ok", "official": official, **kw}


def test_leaderboard_means_stds_and_ranks_with_ties():
    cells = [_cell("a", "x", 1, 0.6, **{"train s": 2.0}), _cell("a", "x", 2, 0.8, **{"train s": 4.0}),
             _cell("a", "y", 1, 0.7), _cell("a", "y", 2, 0.7),
             _cell("a", "z", 1, 0.5), {"dataset": "a", "entry": "z", "seed": 2, "status": "failed: boom"},
             _cell("b", "x", 1, 0.9), _cell("b", "y", 1, 0.4), _cell("b", "z", 1, 0.6)]
    board = leaderboard(cells)
    row = {(r["dataset"], r["entry"]): r for r in board.table}
    assert row[("a", "x")]["official"] == pytest.approx(0.7)
    assert row[("a", "x")]["official std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert row[("a", "x")]["train s"] == pytest.approx(3.0)
    assert row[("a", "z")]["seeds"] == "1/2" and math.isnan(row[("a", "z")]["official std"])
    # a: x and y tie at 0.7 → both rank 1.5; z 3.  b: x 1, z 2, y 3
    assert [row[("a", e)]["rank"] for e in "xyz"] == [1.5, 1.5, 3.0]
    assert [row[("b", e)]["rank"] for e in "xyz"] == [1.0, 3.0, 2.0]
    overall = {o["entry"]: o for o in board.overall}
    assert overall["x"]["mean rank"] == pytest.approx(1.25)
    assert overall["x"]["mean official"] == pytest.approx((0.7 + 0.9) / 2)
    assert overall["y"]["mean rank"] == pytest.approx(2.25) and overall["z"]["mean rank"] == pytest.approx(2.5)
    assert [o["entry"] for o in board.overall] == ["x", "y", "z"]
    text = format_leaderboard(board)
    assert "0.700±0.141 (1.5)" in text and "a z seed 2: failed: boom" in text
    md = markdown_table(*overall_rows(board)).splitlines()
    assert md[0] == "| entry | mean score | mean rank | a | b |" and md[1] == "| --- | --- | --- | --- | --- |"
    assert md[2] == "| x | 0.800 | 1.25 | 0.700±0.141 (1.5) | 0.900 (1.0) |"


def test_leaderboard_puts_entries_on_fewer_datasets_after_full_ones():
    cells = [_cell("a", "full", 1, 0.5), _cell("b", "full", 1, 0.5), _cell("a", "part", 1, 0.9)]
    assert [o["entry"] for o in leaderboard(cells).overall] == ["full", "part"]


# -- the runner on toy data ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from stetho.synth import make_toy_dataset

    root = tmp_path_factory.mktemp("bench") / "toy"
    make_toy_dataset(root, machines=["fan", "valve"], train_clips=12, target_train_clips=2, test_clips=4,
                     duration=1.0, seed=0, progress=False)
    return root


def _suite(tmp: Path, toy: Path, **over) -> Path:
    suite = {"out": str(tmp / "out"), "data_root": [str(toy.parent)], "seeds": [1], "jobs": 2,
             "datasets": {"toy": {"data": toy.name, "about": "tiny"}},
             "methods": {"ms": {"model": "stats", "score": ["density", "knn"]},
                         "broken": {"model": "stats", "machines": ["pump"], "score": "density"}}}
    suite.update(over)
    path = tmp / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def test_benchmark_runs_cells_reuses_them_and_ranks(tmp_path, toy, monkeypatch):
    """Each cell is a child process (a few seconds each): 4 cells in all."""
    from stetho.pipeline.benchmark import benchmark, load_suite

    path = _suite(tmp_path, toy, ensembles={"fused": {"members": ["ms/density", "ms/knn"], "weights": [2, 1]},
                                            "half": {"members": ["ms/density", "broken/density"]}})
    out = benchmark(load_suite(path))
    assert out.ran == 2 and out.reused == 0
    cells = {(c["entry"], c["seed"]): c for c in out.board.cells}
    assert set(cells) == {("ms/density", 1), ("ms/knn", 1), ("broken/density", 1), ("fused", 1), ("half", 1)}
    # a fusion of the finished members, written as a run folder of its own and ranked with the rest
    fused = tmp_path / "out" / "runs" / "toy" / "fused" / "seed_1"
    record = json.loads((fused / "ensemble.json").read_text())
    assert [m["mode"] for m in record["members"]] == ["density", "knn"]
    assert [m["weight"] for m in record["members"]] == pytest.approx([2 / 3, 1 / 3])
    with open(fused / "summary.csv", newline="") as fh:
        assert cells[("fused", 1)]["official"] == pytest.approx(float(next(csv.DictReader(fh))["official score"]))
    assert cells[("fused", 1)]["status"] == "ok" and cells[("half", 1)]["status"] == "members not finished"
    assert cells[("broken/density", 1)]["status"].startswith("failed: ")
    assert "unknown machine type(s) 'pump'" in cells[("broken/density", 1)]["status"]
    run = tmp_path / "out" / "runs" / "toy" / "ms" / "seed_1"
    with open(run / "summary.csv", newline="") as fh:
        official = {r["score"]: float(r["official score"]) for r in csv.DictReader(fh)}
    assert cells[("ms/knn", 1)]["official"] == pytest.approx(official["knn"])
    rec = json.loads((tmp_path / "out" / "cells" / "toy" / "ms" / "seed_1.json").read_text())
    assert rec["status"] == "ok" and rec["peak_mb"] > 50
    for name in ("leaderboard.csv", "leaderboard_overall.csv", "leaderboard_cells.csv", "leaderboard.txt",
                 "leaderboard.md", "leaderboard.html"):
        assert (tmp_path / "out" / name).is_file()
    html = (tmp_path / "out" / "leaderboard.html").read_text()
    assert "<h2>toy</h2>" in html and "http" not in html.replace("http-equiv", "")
    ranks = {r["entry"]: r["rank"] for r in out.board.table}
    best = max(("ms/density", "ms/knn", "fused"), key=lambda e: cells[(e, 1)]["official"])
    assert ranks[best] == 1.0 and math.isnan(ranks["broken/density"])

    # The false-alarm rate: the share of normal test clips the decision files flag.
    with open(run / "test_files.csv", newline="") as fh:
        label = {(r["machine"], r["name"]): r["label"] for r in csv.DictReader(fh)}
    flagged = []
    for f in (run / "results" / "density").glob("decision_result_*.csv"):
        machine = f.name.split("_")[2]
        with open(f, newline="") as fh:
            flagged += [int(d) for name, d in csv.reader(fh) if label[(machine, name)] == "0"]
    rate, n = false_alarm_rate(run, "density")
    assert n == len(flagged) == 2 * 8 and rate == pytest.approx(sum(flagged) / len(flagged))
    assert cell_metrics(run, "density")["false alarms"] == rate == cells[("ms/density", 1)]["false alarms"]

    # A second seed: the finished cell is reused, only the new seed's runs.
    only_ms = {"methods": {"ms": {"model": "stats", "score": ["density", "knn"]}}}
    out2 = benchmark(load_suite(_suite(tmp_path, toy, **only_ms), {"seeds": [1, 2]}))
    assert out2.reused == 1 and out2.ran == 1
    row = {r["entry"]: r for r in out2.board.table}
    assert row["ms/knn"]["seeds"] == "2/2" and math.isfinite(row["ms/knn"]["official std"])
    # A changed parameter makes the cell stale: it runs again.
    changed = {"methods": {"ms": {"model": "stats", "params": {"k": 2}, "score": ["density", "knn"]}}}
    out3 = benchmark(load_suite(_suite(tmp_path, toy, **changed)))
    assert out3.ran == 1 and out3.reused == 0
    # So does a changed default of the model (the digest holds every parameter the model uses).
    from stetho.models.stats import StatsDetector
    from stetho.pipeline.benchmark import plan

    before = plan(load_suite(_suite(tmp_path, toy, **changed)))[0].digest
    monkeypatch.setattr(StatsDetector, "common_defaults", {"calibration": "holdout"})
    assert plan(load_suite(_suite(tmp_path, toy, **changed)))[0].digest != before


def test_suite_errors_name_the_file_and_key(tmp_path, toy):
    from stetho.pipeline.benchmark import load_suite, plan

    with pytest.raises(ConfigError, match=r"suite.yaml: unknown key\(s\) colour"):
        load_suite(_suite(tmp_path, toy, colour=1))
    with pytest.raises(ConfigError, match=r"methods.ms.datasets: unknown dataset 'nope'"):
        load_suite(_suite(tmp_path, toy, methods={"ms": {"model": "stats", "datasets": ["nope"]}}))
    with pytest.raises(ConfigError, match=r"ensembles.e: member 'ae/mse' names no method"):
        load_suite(_suite(tmp_path, toy, ensembles={"e": {"members": ["ae/mse", "ms/knn"]}}))
    with pytest.raises(ConfigError, match="unknown parameter"):
        plan(load_suite(_suite(tmp_path, toy, methods={"ms": {"model": "stats", "params": {"kk": 2}}})))


def test_cli_benchmark_tabulates_and_merges_nested_overrides(tmp_path, toy, capsys):
    from stetho.cli import main
    from stetho.pipeline.benchmark import load_suite

    path = _suite(tmp_path, toy)
    suite = load_suite(path, {"methods": {"ms": {"params": {"k": 3}}}, "seeds": [4]})
    assert suite.methods["ms"] == {"model": "stats", "score": ["density", "knn"], "params": {"k": 3}}
    assert "broken" in suite.methods and suite.seeds == [4]
    assert main(["-q", "benchmark", str(path), "seeds=[4]", "--tabulate"]) == 0
    out = capsys.readouterr().out
    assert "ms/knn" in out and "not run" in out and "0 cell(s) run, 0 reused" in out
    assert (tmp_path / "out" / "leaderboard.html").is_file()


def test_include_takes_the_other_suites_keys_and_replaces_those_given(tmp_path, toy):
    from stetho.pipeline.benchmark import load_suite

    base = _suite(tmp_path, toy, ensembles={"e": {"members": ["ms/knn", "broken/density"]}})
    (tmp_path / "sub").mkdir()
    tuning = tmp_path / "sub" / "tuning.yaml"
    tuning.write_text("include: ../suite.yaml\nout: elsewhere\nmethods: {v1: {model: stats}}\nensembles: {}\n")
    suite = load_suite(tuning)
    assert list(suite.datasets) == ["toy"] and list(suite.methods) == ["v1"] and suite.ensembles == {}
    assert suite.out == Path("elsewhere") and suite.seeds == [1]
    assert load_suite(base).ensembles["e"]["members"] == ["ms/knn", "broken/density"]
    loop = tmp_path / "loop.yaml"
    loop.write_text("include: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_suite(loop)
