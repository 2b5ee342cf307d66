"""Tests of score fusion: stetho.backends.fusion (standardiser, weighted mean) and
stetho.pipeline.ensemble / `stetho ensemble` on a tiny toy data set."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from stetho.backends.fusion import ScoreStandardizer, fuse, normalized_weights


# ---------------------------------------------------------------- standardiser
def test_standardizer_per_domain_and_machine_fallback():
    # fan: 5 source scores (own group), 2 target scores (too few: the machine's statistics);
    # valve: 6 scores without a domain (the machine's statistics).
    fan_src = [1.0, 2.0, 3.0, 4.0, 5.0]
    fan_tgt = [10.0, 12.0]
    valve = [0.5, 0.7, 0.9, 1.1, 1.3, 1.5]
    scores = fan_src + fan_tgt + valve
    machines = ["fan"] * 7 + ["valve"] * 6
    domains = ["source"] * 5 + ["target"] * 2 + [""] * 6
    st = ScoreStandardizer(min_group=5).fit(scores, machines, domains)

    # hand: source mean 3, std (ddof 1) sqrt(10/4); fan over all 7: mean 37/7
    src_sd = np.sqrt(2.5)
    fan_all = np.array(fan_src + fan_tgt)
    fan_mean = fan_all.sum() / 7
    fan_sd = np.sqrt(((fan_all - fan_mean) ** 2).sum() / 6)
    valve_sd = np.sqrt(((np.array(valve) - 1.0) ** 2).sum() / 5)
    assert st.group_stats_ == {("fan", "source"): pytest.approx((3.0, src_sd, 5))}
    assert st.machine_stats_["fan"] == pytest.approx((fan_mean, fan_sd, 7))
    assert st.machine_stats_["valve"] == pytest.approx((1.0, valve_sd, 6))

    z = st.transform([6.0, 11.0, 2.0, 1.2], ["fan", "fan", "valve", "fan"], ["source", "target", None, ""])
    np.testing.assert_allclose(z, [(6 - 3) / src_sd, (11 - fan_mean) / fan_sd, (2 - 1) / valve_sd,
                                   (1.2 - fan_mean) / fan_sd])
    stats = st.statistics()
    assert stats["fan"]["domains"] == {"source": {"mean": 3.0, "std": pytest.approx(src_sd), "n": 5}}
    assert stats["valve"] == {"mean": 1.0, "std": pytest.approx(valve_sd), "n": 6, "domains": {}}
    json.dumps(stats)  # plain data


def test_standardizer_group_without_spread_falls_back_and_min_group_counts():
    # the source group is large enough but constant: the machine's statistics
    st = ScoreStandardizer(min_group=3).fit([2.0, 2.0, 2.0, 5.0, 8.0], ["m"] * 5,
                                            ["source"] * 3 + ["target"] * 2)
    assert st.group_stats_ == {}
    assert st.machine_stats_["m"] == pytest.approx((3.8, np.sqrt((3 * 1.8 ** 2 + 1.2 ** 2 + 4.2 ** 2) / 4), 5))
    # min_group 2: the target group (5, 8) has its own: mean 6.5, std sqrt(4.5)
    st2 = ScoreStandardizer(min_group=2).fit([2.0, 2.0, 2.0, 5.0, 8.0], ["m"] * 5, ["source"] * 3 + ["target"] * 2)
    assert st2.group_stats_ == {("m", "target"): pytest.approx((6.5, np.sqrt(4.5), 2))}
    np.testing.assert_allclose(st2.transform([8.0], ["m"], ["target"]), [1.5 / np.sqrt(4.5)])


@pytest.mark.parametrize("scores, machines, message", [
    ([1.0], ["fan"], "1 calibration score"),
    ([1.0, 1.0, 1.0], ["fan"] * 3, "no spread"),
    ([1.0, np.nan], ["fan"] * 2, "not finite"),
    ([1.0, 2.0], ["fan"], "1 machine labels for 2 scores"),
])
def test_standardizer_refuses_what_it_cannot_standardise(scores, machines, message):
    with pytest.raises(ValueError, match=message):
        ScoreStandardizer().fit(scores, machines)


def test_standardizer_unknown_machine_and_bad_min_group():
    st = ScoreStandardizer().fit([1.0, 2.0], ["fan", "fan"])
    with pytest.raises(ValueError, match="no calibration scores of machine type.*valve"):
        st.transform([1.0], ["valve"])
    with pytest.raises(ValueError, match="min_group"):
        ScoreStandardizer(min_group=1).fit([1.0, 2.0], ["fan", "fan"])
    with pytest.raises(ValueError, match="before fit"):
        ScoreStandardizer().transform([1.0], ["fan"])


# ---------------------------------------------------------------- fuse
def test_fuse_weighted_mean():
    a, b = np.array([1.0, -2.0, 0.5]), np.array([3.0, 0.0, -0.5])
    np.testing.assert_allclose(fuse([a, b]), [2.0, -1.0, 0.0])
    np.testing.assert_allclose(fuse([a, b], [3, 1]), [1.5, -1.5, 0.25])  # weights 0.75, 0.25
    np.testing.assert_allclose(fuse([a, b], [0, 2]), b)
    np.testing.assert_allclose(normalized_weights([2, 6], 2), [0.25, 0.75])


@pytest.mark.parametrize("weights, message", [
    ([1.0, -1.0], "non-negative"), ([0.0, 0.0], "sum to zero"), ([1.0], "1 weight"), ([np.inf, 1], "finite"),
])
def test_fuse_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        fuse([np.zeros(2), np.ones(2)], weights)


def test_fuse_shape_mismatch():
    with pytest.raises(ValueError, match="different shapes"):
        fuse([np.zeros(2), np.ones(3)])


# ---------------------------------------------------------------- parsing members
def test_parse_member(tmp_path):
    from stetho.errors import ConfigError
    from stetho.pipeline.ensemble import Member, parse_member

    assert parse_member("runs/ae") == Member(Path("runs/ae"), None, 1.0)
    assert parse_member("runs/ae:mse") == Member(Path("runs/ae"), "mse", 1.0)
    assert parse_member("runs/ae:mse@2.5") == Member(Path("runs/ae"), "mse", 2.5)
    assert parse_member("runs/ae@0.5") == Member(Path("runs/ae"), None, 0.5)
    assert parse_member("C:/runs/ae") == Member(Path("C:/runs/ae"), None, 1.0)  # ':' before a '/': a path
    assert parse_member("a:b/ae:knn") == Member(Path("a:b/ae"), "knn", 1.0)
    odd = tmp_path / "run:1"
    odd.mkdir()
    assert parse_member(str(odd)) == Member(odd, None, 1.0)  # an existing folder named with ':'
    for bad, message in (("runs/ae:mse@x", "weight 'x' is not a number"), ("runs/ae@-1", "non-negative"),
                         ("runs/ae:", "mode ''"), (":mse", "no run folder")):
        with pytest.raises(ConfigError, match=message):
            parse_member(bad)


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tested_run(tmp_path_factory):
    """A toy data set and a `stats` run trained and tested on it (three score modes)."""
    from stetho import pipeline
    from stetho.synth import make_toy_dataset

    base = tmp_path_factory.mktemp("fusion")
    make_toy_dataset(base / "data", machines=["fan", "valve"], train_clips=20, target_train_clips=3, test_clips=6,
                     duration=2.0, seed=0, progress=False)
    run = base / "run"
    pipeline.train({"data": str(base / "data"), "out": str(run), "model": "stats", "progress": False})
    pipeline.test(run, progress=False)
    return base, run


def _dict_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _submission(folder: Path, kind: str) -> dict[tuple[str, str], float]:
    """(machine, name) -> value of the anomaly_score_* / decision_result_* files of a folder."""
    out = {}
    for f in sorted(folder.glob(f"{kind}_*_section_*_test.csv")):
        machine = f.name[len(kind) + 1:].split("_section_")[0]
        with open(f, newline="") as fh:
            out.update({(machine, r[0]): float(r[1]) for r in csv.reader(fh)})
    return out


def _hand_z(values: np.ndarray, machines: np.ndarray, domains: np.ndarray, cal: list[dict[str, str]], mode: str,
            min_group: int) -> np.ndarray:
    """z-scores computed directly: a (machine, domain) group's mean/std (ddof 1) when it has at
    least min_group calibration scores with spread, else the machine type's."""
    cs = np.array([float(r[mode]) for r in cal])
    cm = np.array([r["machine"] for r in cal])
    cd = np.array([r["domain"] for r in cal])
    z = np.empty(len(values))
    for i, (v, m, d) in enumerate(zip(values, machines, domains)):
        group = cs[(cm == m) & (cd == d)]
        if len(group) >= min_group and np.std(group, ddof=1) > 0:
            z[i] = (v - group.mean()) / np.std(group, ddof=1)
        else:
            whole = cs[cm == m]
            z[i] = (v - whole.mean()) / np.std(whole, ddof=1)
    return z


@pytest.mark.parametrize("weights, min_group", [((1.0, 1.0), 5), ((3.0, 1.0), 2)])
def test_ensemble_end_to_end(tested_run, tmp_path, weights, min_group):
    from stetho.backends import fpr_threshold
    from stetho.pipeline.ensemble import ensemble

    _, run = tested_run
    modes = ("density", "mahalanobis")
    outcome = ensemble([(run, modes[0], weights[0]), (run, modes[1], weights[1])], tmp_path / "ens",
                       min_group=min_group)
    out = tmp_path / "ens"
    w = np.array(weights) / sum(weights)
    assert outcome.weights == pytest.approx(list(w))

    # fused test scores = the weighted mean of the hand-computed z-scores of each mode's CSVs
    tests = _dict_rows(run / "test_files.csv")
    keys = [(r["machine"], r["name"]) for r in tests]
    machines = np.array([r["machine"] for r in tests])
    domains = np.array([r["domain"] for r in tests])
    cal = _dict_rows(run / "decision_scores.csv")
    expect = sum(wi * _hand_z(np.array([_submission(run / "results" / mode, "anomaly_score")[k] for k in keys]),
                              machines, domains, cal, mode, min_group) for wi, mode in zip(w, modes))
    fused = _submission(out / "results" / "ensemble", "anomaly_score")
    assert sorted(fused) == sorted(keys)
    np.testing.assert_allclose([fused[k] for k in keys], expect, rtol=1e-10, atol=1e-12)
    # stats cross-fits its thresholds: all 20 source and 3 target training clips are calibration
    # clips, so the target group has statistics of its own only when min_group is 2
    stats = json.loads((out / "ensemble.json").read_text())["members"][0]["standardisation"]
    assert set(stats["fan"]["domains"]) == ({"source", "target"} if min_group == 2 else {"source"})

    # fused calibration scores and the threshold fitted on them
    cm = np.array([r["machine"] for r in cal])
    cd = np.array([r["domain"] for r in cal])
    cal_fused = sum(wi * _hand_z(np.array([float(r[mode]) for r in cal]), cm, cd, cal, mode, min_group)
                    for wi, mode in zip(w, modes))
    written = _dict_rows(out / "decision_scores.csv")
    np.testing.assert_allclose([float(r["ensemble"]) for r in written], cal_fused, rtol=1e-10, atol=1e-12)
    thresholds = {r["machine"]: float(r["threshold"]) for r in _dict_rows(out / "thresholds.csv")}
    for machine in ("fan", "valve"):
        sel = cm == machine
        assert thresholds[machine] == pytest.approx(fpr_threshold(cal_fused[sel], cd[sel], 0.1), rel=1e-9)
        assert outcome.thresholds[machine] == thresholds[machine]

    # decisions: fused score above its machine type's threshold
    decisions = _submission(out / "results" / "ensemble", "decision_result")
    assert {k: int(fused[k] > thresholds[k[0]]) for k in keys} == {k: int(v) for k, v in decisions.items()}

    # evaluated as `stetho test` does: an official score in summary.csv, result tables beside the scores
    summary = _dict_rows(out / "summary.csv")
    assert [(r["score"], r["status"], r["formula"]) for r in summary] == [("ensemble", "official", "dcase2023")]
    assert float(summary[0]["official score"]) == pytest.approx(outcome.result.official_score)
    assert 0.0 < outcome.result.official_score <= 1.0
    for name in ("sections.csv", "summary.csv", "result_fan.csv", "result_valve.csv"):
        assert (out / "results" / "ensemble" / name).is_file()
    assert (out / "test_files.csv").read_bytes() == (run / "test_files.csv").read_bytes()
    # one run's two modes: its training and test are counted once
    member_t, fused_t = json.loads((run / "timings.json").read_text()), json.loads((out / "timings.json").read_text())
    assert fused_t["train"]["seconds"] == pytest.approx(member_t["train"]["seconds"])
    assert fused_t["test"]["seconds"] == pytest.approx(member_t["test"]["seconds"])
    record = json.loads((out / "ensemble.json").read_text())
    assert [(m["mode"], m["weight"]) for m in record["members"]] == [("density", w[0]), ("mahalanobis", w[1])]
    assert (record["decision_fpr"], record["min_group"]) == (0.1, min_group)

    # a second fusion replaces the ensemble folder
    again = ensemble([(run, "knn", 1.0), (run, "density", 1.0)], out, min_group=min_group)
    assert json.loads((out / "ensemble.json").read_text())["members"][0]["mode"] == "knn"
    assert again.result is not None


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def test_ensemble_errors(tested_run, tmp_path):
    from stetho import pipeline
    from stetho.errors import ConfigError
    from stetho.pipeline.ensemble import ensemble
    from stetho.synth import make_toy_dataset

    base, run = tested_run
    out = tmp_path / "ens"
    modes = sorted(p.name for p in (run / "results").iterdir() if p.is_dir())  # density, knn, mahalanobis ...
    assert {"density", "knn", "mahalanobis"} <= set(modes)
    with pytest.raises(ConfigError, match=re.escape(f"tested in {len(modes)} score modes ({', '.join(modes)})")):
        ensemble([(run, None, 1), (run, "knn", 1)], out)
    with pytest.raises(ConfigError, match=re.escape(f"no test scores of mode 'mse'; tested modes: {', '.join(modes)}")):
        ensemble([(run, "mse", 1), (run, "knn", 1)], out)
    with pytest.raises(ConfigError, match="weights sum to zero"):
        ensemble([(run, "density", 0), (run, "knn", 0)], out)
    with pytest.raises(ConfigError, match="min_group must be an integer of at least 2, got 1"):
        ensemble([(run, "density", 1), (run, "knn", 1)], out, min_group=1)
    with pytest.raises(ConfigError, match="at least two members, got 1"):
        ensemble([(run, "density", 1)], out)

    untested = _copy(run, tmp_path / "untested")
    shutil.rmtree(untested / "results")
    with pytest.raises(ConfigError, match="untested: not tested"):
        ensemble([(run, "density", 1), (untested, "density", 1)], out)

    # the same model tested on other data (4 instead of 6 clips per machine, domain and label): 2 * 2 * 2 * 2
    # clips only in the first
    make_toy_dataset(tmp_path / "other", machines=["fan", "valve"], train_clips=2, target_train_clips=1,
                     test_clips=4, duration=2.0, seed=1, progress=False)
    elsewhere = _copy(run, tmp_path / "elsewhere")
    pipeline.test(elsewhere, data=tmp_path / "other", progress=False)
    with pytest.raises(ConfigError, match=r"run:density and .*elsewhere:knn scored different test clips "
                                          r"\(16 only in the first, 0 only in the second, e\.g\. fan/"):
        ensemble([(run, "density", 1), (elsewhere, "knn", 1)], out)

    # calibrated on other held-out clips: nothing shared to fit a threshold on
    moved = _copy(run, tmp_path / "moved")
    rows = _dict_rows(moved / "decision_scores.csv")
    for r in rows:
        r["file"] = "elsewhere/" + r["file"]
    from stetho.outputs import write_dict_csv

    write_dict_csv(moved / "decision_scores.csv", rows)
    with pytest.raises(ConfigError, match="no calibration clip is shared by all members"):
        ensemble([(run, "density", 1), (moved, "knn", 1)], out)
    assert not out.exists()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="no ensemble.json"):
        ensemble([(run, "density", 1), (run, "knn", 1)], foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_cli_ensemble(tested_run, tmp_path, capsys):
    from stetho.cli import main

    _, run = tested_run
    out = tmp_path / "cli"
    assert main(["-q", "ensemble", f"{run}:density", f"{run}:mahalanobis@3", "--out", str(out), "--name", "fused",
                 "--decision-fpr", "0.2"]) == 0
    printed = capsys.readouterr().out
    summary = _dict_rows(out / "summary.csv")
    assert f"official score (dcase2023): {float(summary[0]['official score']):.4f}" in printed
    record = json.loads((out / "ensemble.json").read_text())
    assert [m["weight"] for m in record["members"]] == [0.25, 0.75]
    assert record["decision_fpr"] == 0.2 and record["name"] == "fused"
    assert (out / "results" / "fused" / "anomaly_score_fan_section_00_test.csv").is_file()
    assert main(["ensemble", f"{run}:density@x", f"{run}:knn", "--out", str(out)]) == 2
    assert "weight 'x' is not a number" in capsys.readouterr().err


def test_ensemble_partial_without_test_data_and_unlabeled(tested_run, tmp_path):
    from stetho.outputs import write_dict_csv
    from stetho.pipeline.ensemble import ensemble

    _, run = tested_run
    # the recorded test data is gone: coverage of its test split cannot be checked -> partial
    gone = _copy(run, tmp_path / "gone")
    timings = json.loads((gone / "timings.json").read_text())
    timings["test"]["data"] = str(tmp_path / "deleted")
    (gone / "timings.json").write_text(json.dumps(timings))
    outcome = ensemble([(gone, "density", 1), (run, "knn", 1)], tmp_path / "p")
    summary = _dict_rows(tmp_path / "p" / "summary.csv")
    assert summary[0]["status"] == "partial" and summary[0]["official score"] == ""
    assert "is not there" in summary[0]["missing"]
    assert float(summary[0]["partial score"]) == pytest.approx(outcome.result.partial_score)

    # unlabeled test clips: scores and decisions, no metrics, no summary.csv
    blind = _copy(run, tmp_path / "blind")
    rows = _dict_rows(blind / "test_files.csv")
    for r in rows:
        r["label"] = ""
    write_dict_csv(blind / "test_files.csv", rows)
    outcome = ensemble([(blind, "density", 1), (run, "knn", 1)], tmp_path / "u")
    assert outcome.result is None
    assert not (tmp_path / "u" / "summary.csv").exists()
    assert len(_submission(tmp_path / "u" / "results" / "ensemble", "decision_result")) == len(rows)
