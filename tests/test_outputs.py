"""Tests of stetho.outputs: submission file namings per DCASE year, result files, run summaries."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from stetho.datasets.clip import Clip
from stetho.errors import EvaluationError, StethoError
from stetho.metrics import (
    METRIC_KEYS,
    TABLE_COLUMNS,
    EvaluationResult,
    SectionResult,
    evaluate,
)
from stetho.outputs import (
    NAMINGS,
    SubmissionName,
    format_mean_std,
    parse_submission_filename,
    read_submission,
    submission_filenames,
    summarize_runs,
    write_results,
    write_submission,
)
from stetho.outputs.summary import read_summary_file


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


# ------------------------------------------------------------------------------------------
# file names
# ------------------------------------------------------------------------------------------

NAME_CASES = [
    # naming, machine, section, domain, expected score file name
    ("section", "fan", "00", None, "anomaly_score_fan_section_00_test.csv"),
    ("section", "slide_rail", "03", None, "anomaly_score_slide_rail_section_03_test.csv"),
    ("section_domain", "ToyCar", "01", "source", "anomaly_score_ToyCar_section_01_source_test.csv"),
    ("section_domain", "slide_rail", "05", "target", "anomaly_score_slide_rail_section_05_target_test.csv"),
    ("id", "fan", "00", None, "anomaly_score_fan_id_00.csv"),
    ("id", "fan", "00_-6dB", None, "anomaly_score_fan_id_00_-6dB.csv"),  # MIMII: ID and SNR
    ("id", "slide_rail", "06_6dB", None, "anomaly_score_slide_rail_id_06_6dB.csv"),
]


@pytest.mark.parametrize("naming, machine, section, domain, score_name", NAME_CASES)
def test_filenames_follow_each_years_baseline_and_parse_back(naming, machine, section, domain, score_name):
    scores, decisions = submission_filenames(machine, section, naming, domain)
    assert scores == score_name
    assert decisions == score_name.replace("anomaly_score_", "decision_result_", 1)
    assert parse_submission_filename(scores) == SubmissionName("score", machine, section, naming, domain)
    assert parse_submission_filename(decisions) == SubmissionName("decision", machine, section, naming, domain)


def test_unparseable_and_unexpressible_names():
    for name in ("anomaly_score_fan_section_00.csv", "anomaly_score_fan.csv", "result_fan.csv",
                 "anomaly_score_fan_section_00_test.csv.bak", "anomaly_score_fan_section_0a_test.csv"):
        assert parse_submission_filename(name) is None, name
    with pytest.raises(EvaluationError, match="section digits"):  # MIMII's section under 2022 naming
        submission_filenames("fan", "00_-6dB", "section")
    with pytest.raises(EvaluationError, match="would not read back"):  # '_id_' inside the ID: ambiguous
        submission_filenames("fan", "00_id_01", "id")
    with pytest.raises(EvaluationError, match="'/'"):
        submission_filenames("fan/x", "00", "section")
    with pytest.raises(EvaluationError, match="source' or 'target"):
        submission_filenames("fan", "00", "section_domain")
    with pytest.raises(EvaluationError, match="give no domain"):
        submission_filenames("fan", "00", "section", "source")
    with pytest.raises(EvaluationError, match="section, section_domain, id"):
        submission_filenames("fan", "00", "year2019")
    assert NAMINGS == ("section", "section_domain", "id")


@pytest.mark.parametrize("naming, machine, section", [
    ("section", "slide_rail", "00"), ("id", "slide_rail", "00_-6dB"), ("id", "fan", "04"),
])
def test_write_read_round_trip(tmp_path, naming, machine, section):
    names = [f"clip_{i}.wav" for i in range(5)]
    scores = np.array([0.5, -1.25, 3.0, 1e-9, 7.0])
    decisions = np.array([0, 0, 1, 0, 1])
    paths = write_submission(tmp_path, machine, section, names, scores, decisions, naming=naming)
    assert [p.name for p in paths] == list(submission_filenames(machine, section, naming))
    sub = read_submission(tmp_path)
    assert sub.naming == naming
    assert sub.scores == {(machine, section): list(zip(names, scores.tolist()))}  # full precision
    assert sub.decisions == {(machine, section): list(zip(names, decisions.tolist()))}


def test_section_domain_naming_writes_one_pair_per_domain(tmp_path):
    names = ["a.wav", "b.wav", "c.wav", "d.wav", "e.wav"]
    domains = ["target", "source", "target", "source", "source"]
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    decisions = np.array([1, 0, 1, 0, 0])
    paths = write_submission(tmp_path, "slide_rail", "02", names, scores, decisions,
                             naming="section_domain", domains=domains)
    assert [p.name for p in paths] == [
        "anomaly_score_slide_rail_section_02_source_test.csv",
        "decision_result_slide_rail_section_02_source_test.csv",
        "anomaly_score_slide_rail_section_02_target_test.csv",
        "decision_result_slide_rail_section_02_target_test.csv",
    ]
    assert _rows(paths[0]) == [["b.wav", "0.2"], ["d.wav", "0.4"], ["e.wav", "0.5"]]  # no header
    assert _rows(paths[3]) == [["a.wav", "1"], ["c.wav", "1"]]
    sub = read_submission(tmp_path)
    assert sub.naming == "section_domain"
    # both domain files merged under (machine, section): source rows, then target rows
    assert sub.scores == {("slide_rail", "02"): [("b.wav", 0.2), ("d.wav", 0.4), ("e.wav", 0.5),
                                                 ("a.wav", 0.1), ("c.wav", 0.3)]}
    assert dict(sub.decisions[("slide_rail", "02")]) == dict(zip(names, decisions.tolist()))

    # a domain without files gets no file
    only = write_submission(tmp_path / "one", "fan", "00", names[:2], scores[:2], naming="section_domain",
                            domains=["source", "source"])
    assert [p.name for p in only] == ["anomaly_score_fan_section_00_source_test.csv"]
    with pytest.raises(EvaluationError, match="needs the domain of every file"):
        write_submission(tmp_path, "fan", "00", names, scores, naming="section_domain")
    with pytest.raises(EvaluationError, match="None"):
        write_submission(tmp_path, "fan", "00", names, scores, naming="section_domain", domains=[None] * 5)


def test_mixed_namings_in_one_folder_are_an_error(tmp_path):
    write_submission(tmp_path, "fan", "00", ["a.wav"], np.array([0.1]))
    write_submission(tmp_path, "fan", "02", ["b.wav"], np.array([0.2]), naming="id")
    with pytest.raises(EvaluationError) as err:
        read_submission(tmp_path)
    msg = str(err.value)
    assert "2 namings" in msg
    assert "anomaly_score_fan_section_00_test.csv" in msg and "anomaly_score_fan_id_02.csv" in msg


def test_decision_without_score_and_empty_folder(tmp_path, caplog):
    write_submission(tmp_path, "fan", "00", ["a.wav", "b.wav"], np.array([0.1, 0.2]), np.array([0, 1]),
                     naming="section_domain", domains=["source", "target"])
    (tmp_path / "anomaly_score_fan_section_00_target_test.csv").unlink()
    with pytest.raises(EvaluationError, match="decision_result_fan_section_00_target_test.csv"):
        read_submission(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "anomaly_score_fan.csv").write_text("a.wav,0.5\n")
    with caplog.at_level(logging.WARNING, logger="stetho.outputs.dcase"):
        with pytest.raises(EvaluationError, match="no anomaly_score"):
            read_submission(empty)
    assert "anomaly_score_fan.csv" in caplog.text  # the misnamed file is pointed out


def _clip(name, label, domain, machine="fan", section="00"):
    return Clip(Path("data") / machine / "test" / name, machine, section, "test", domain, label)


def test_section_domain_files_evaluate_like_the_scores_themselves(tmp_path):
    # 2021 round trip: write per domain, read back, evaluate == evaluate the scores directly
    rng = np.random.default_rng(3)
    clips, scores = [], []
    for sec in ("00", "01"):
        for domain in ("source", "target"):
            for label in (0, 1):
                for i in range(6):
                    name = f"section_{sec}_{domain}_test_{'anomaly' if label else 'normal'}_{i:04d}.wav"
                    clips.append(_clip(name, label, domain, section=sec))
                    scores.append(float(rng.normal() + label))
    for sec in ("00", "01"):
        idx = [i for i, c in enumerate(clips) if c.section == sec]
        write_submission(tmp_path, "fan", sec, [clips[i].name for i in idx], np.array(scores)[idx],
                         naming="section_domain", domains=[clips[i].domain for i in idx])
    assert len(list(tmp_path.glob("anomaly_score_*"))) == 4  # two files per section
    sub = read_submission(tmp_path)
    read_back = [row for key in sorted(sub.scores) for row in sub.scores[key]]
    direct = evaluate([(c.name, s) for c, s in zip(clips, scores)], clips, formula="dcase2021")
    assert evaluate(read_back, clips, formula="dcase2021").official_score == direct.official_score


# ------------------------------------------------------------------------------------------
# result files per formula
# ------------------------------------------------------------------------------------------


def _labeled(rows, machine="fan", section="00"):
    """rows: (domain, label, score) -> clips, (name, score) pairs, decisions (score > 0.5)."""
    clips, scores = [], []
    for i, (domain, label, score) in enumerate(rows):
        clips.append(_clip(f"{section}_{domain}_{label}_{i:04d}.wav", label, domain, machine, section))
        scores.append((clips[-1].name, score))
    return clips, scores, [(n, int(v > 0.5)) for n, v in scores]


ROWS = [("source", 0, 0.1), ("source", 0, 0.4), ("source", 1, 0.9), ("source", 1, 0.3),
        ("target", 0, 0.2), ("target", 0, 0.6), ("target", 1, 0.8), ("target", 1, 0.7)]


def test_write_results_dcase2022_layout(tmp_path):
    clips, scores, _ = _labeled(ROWS)
    result = evaluate(scores, clips, formula="dcase2023")
    written = write_results(tmp_path, result)
    assert [p.name for p in written] == ["result_fan.csv", "summary.csv"]
    table = _rows(tmp_path / "result_fan.csv")
    assert table[0] == list(TABLE_COLUMNS)
    assert [r[0] for r in table[1:]] == ["00", "arithmetic mean", "harmonic mean"]
    summary = _rows(tmp_path / "summary.csv")
    assert summary[0] == ["machine", "AUC (source)", "AUC (target)", "pAUC", "hmean", "formula", "official score",
                          "status", "partial score", "missing"]
    assert summary[1][0] == "fan" and summary[1][-5:] == ["dcase2023", "", "", "", ""]
    assert float(summary[1][4]) == pytest.approx(result.machine_summary()[0]["hmean"])
    assert summary[-1][0] == "official score" and summary[-1][-5] == "dcase2023"
    assert float(summary[-1][-4]) == result.official_score  # full precision
    assert summary[-1][-3:] == ["official", "", ""]  # no partial score, nothing missing


def test_write_results_of_a_partial_result_has_no_official_score(tmp_path):
    clips, scores, _ = _labeled(ROWS)
    pump, _, _ = _labeled(ROWS, machine="pump")
    result = evaluate(scores, clips, formula="dcase2023", test_split=clips + pump)
    assert result.partial and result.missing == ["machine type pump not scored (8 test files)"]
    write_results(tmp_path, result)
    summary = _rows(tmp_path / "summary.csv")
    last = dict(zip(summary[0], summary[-1]))
    assert last["machine"] == "partial score" and last["official score"] == ""
    assert last["status"] == "partial" and float(last["partial score"]) == result.partial_score
    assert last["missing"] == "machine type pump not scored (8 test files)"
    assert [r[0] for r in summary[1:]] == ["fan", "partial score"]  # pump has no row: not scored
    back = read_summary_file(tmp_path / "summary.csv")
    assert back.partial and math.isnan(back.official) and back.partial_score == result.partial_score
    assert back.missing == result.missing and back.formula == "dcase2023"


def test_write_results_dcase2021_layout(tmp_path):
    clips, scores, decisions = _labeled(ROWS)
    result = evaluate(scores, clips, decisions, formula="dcase2021")
    write_results(tmp_path, result)
    table = _rows(tmp_path / "result_fan.csv")
    assert table[0] == ["section", "domain", "AUC", "pAUC", "precision", "recall", "F1 score"]
    assert [r[:2] for r in table[1:]] == [["00", "source"], ["00", "target"], ["arithmetic mean", ""],
                                          ["harmonic mean", ""]]
    # within source: {0.9, 0.3} vs {0.1, 0.4}: 2 + 1 -> 3/4
    assert float(table[1][2]) == pytest.approx(3 / 4)
    summary = _rows(tmp_path / "summary.csv")
    assert summary[0] == [
        "machine", "AUC (source)", "pAUC (source)", "AUC (target)", "pAUC (target)", "hmean",
        "precision (source)", "precision (target)", "recall (source)", "recall (target)",
        "F1 score (source)", "F1 score (target)", "formula", "official score", "status", "partial score", "missing",
    ]
    assert summary[-1][0] == "official score" and float(summary[-1][-4]) == result.official_score
    assert summary[-1][-5] == "dcase2021"


def test_write_results_dcase2020_layout(tmp_path):
    clips, scores = [], {}
    for machine, ids in (("fan", ("00", "02")), ("pump", ("00",))):
        for mid in ids:
            c, s, _ = _labeled([(None, 0, 0.1), (None, 1, 0.7), (None, 0, 0.6), (None, 1, 0.4)], machine, mid)
            clips += c
            scores.setdefault(machine, []).extend(s)
    result = evaluate(scores, clips, formula="dcase2020")
    written = write_results(tmp_path, result)
    assert [p.name for p in written] == ["result_fan.csv", "result_pump.csv", "summary.csv"]
    table = _rows(tmp_path / "result_fan.csv")
    assert table[0] == ["id", "AUC", "pAUC"]
    assert [r[0] for r in table[1:]] == ["00", "02", "arithmetic mean"]
    summary = _rows(tmp_path / "summary.csv")
    assert summary[0] == ["machine", "AUC", "pAUC", "score", "formula", "official score", "status", "partial score",
                          "missing"]
    assert [r[0] for r in summary[1:]] == ["fan", "pump", "official score"]
    # every ID: {0.7, 0.4} vs {0.1, 0.6}: 2 + 1 -> 3/4, so every mean is 3/4 too
    assert float(summary[1][1]) == pytest.approx(3 / 4)
    assert float(summary[-1][-4]) == result.official_score and summary[-1][-5] == "dcase2020"


# ------------------------------------------------------------------------------------------
# multi-run summary
# ------------------------------------------------------------------------------------------


def _result_2020(values: dict[str, tuple[float, float]], formula: str = "dcase2020",
                 missing: list[str] | None = None) -> EvaluationResult:
    """A result with one ID per machine type and the given (AUC, pAUC); official = 2020 formula
    (partial, with these reasons, when ``missing`` is given)."""
    sections = []
    for machine, (a, p) in values.items():
        metrics = dict.fromkeys(METRIC_KEYS, math.nan) | {"AUC": a, "pAUC": p}
        sections.append(SectionResult(machine, "00", metrics, 4, 2, has_domains=False))
    official = float(np.mean([v for ap in values.values() for v in ap]))
    return EvaluationResult(sections, official, formula, missing=list(missing or []))


def _fake_run(root: Path, name: str, modes: dict[str, EvaluationResult]) -> Path:
    run = root / name
    for mode, result in modes.items():
        write_results(run / "results" / mode, result)
    return run


# fan AUC 0.70, 0.80, 0.90 -> mean 0.8, std sqrt((0.01 + 0 + 0.01) / 2) = 0.1
# fan pAUC 0.60, 0.60, 0.90 -> mean 0.7, std sqrt((0.01 + 0.01 + 0.04) / 2) = sqrt(0.03)
# fan score (AUC + pAUC)/2 = 0.65, 0.70, 0.90 -> mean 0.75, std sqrt((0.01 + 0.0025 + 0.0225)/2) = sqrt(0.0175)
# pump 0.5, 0.5 in every run -> std 0
# official = (fan score + 0.5) / 2 = 0.575, 0.6, 0.7 -> mean 0.625,
#   std sqrt((0.0025 + 0.000625 + 0.005625) / 2) = sqrt(0.004375)
FAN = [(0.70, 0.60), (0.80, 0.60), (0.90, 0.90)]


@pytest.fixture()
def three_runs(tmp_path):
    runs = []
    for k, fan in enumerate(FAN):
        modes = {"mahalanobis": _result_2020({"fan": fan, "pump": (0.5, 0.5)})}
        if k < 2:  # only two runs have this mode: it is left out
            modes["mse"] = _result_2020({"fan": fan, "pump": (0.5, 0.5)})
        runs.append(_fake_run(tmp_path, f"seed{k}", modes))
    return runs


def test_summarize_runs_mean_and_sample_std(three_runs, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="stetho.outputs.summary"):
        summary = summarize_runs(three_runs)
    assert "mse" in caplog.text
    assert list(summary.modes) == ["mahalanobis"] and summary.n_runs == 3
    rows = summary.rows("mahalanobis")
    assert list(rows[0]) == [
        "machine", "AUC mean", "AUC std", "pAUC mean", "pAUC std", "score mean", "score std",
        "official score mean", "official score std", "status", "partial score mean", "partial score std",
        "missing", "n_runs", "formula",
    ]
    fan, pump, official = rows
    assert fan["machine"] == "fan" and fan["n_runs"] == 3 and fan["formula"] == "dcase2020"
    assert fan["AUC mean"] == pytest.approx(0.8) and fan["AUC std"] == pytest.approx(0.1)
    assert fan["pAUC mean"] == pytest.approx(0.7) and fan["pAUC std"] == pytest.approx(math.sqrt(0.03))
    assert fan["score mean"] == pytest.approx(0.75) and fan["score std"] == pytest.approx(math.sqrt(0.0175))
    assert fan["AUC std"] == pytest.approx(np.std([0.7, 0.8, 0.9], ddof=1))  # sample, not population std
    assert pump["AUC mean"] == pytest.approx(0.5) and pump["AUC std"] == 0.0
    assert official["machine"] == "official score" and official["AUC mean"] is None
    assert official["official score mean"] == pytest.approx(0.625)
    assert official["official score std"] == pytest.approx(math.sqrt(0.004375))
    assert summary.official("mahalanobis") == pytest.approx((0.625, math.sqrt(0.004375)))

    (path,) = summary.write(tmp_path / "out")
    assert path.name == "summary_runs_mahalanobis.csv"
    table = _rows(path)
    assert table[0] == list(rows[0])
    assert float(table[1][2]) == pytest.approx(0.1) and table[-1][0] == "official score"
    assert float(table[-1][table[0].index("official score mean")]) == pytest.approx(0.625)

    text = summary.format_text()
    assert "mahalanobis (dcase2020, 3 runs)" in text
    assert "0.8000 ± 0.1000" in text and "0.5000 ± 0.0000" in text
    assert "official score: 0.6250 ± 0.0661" in text


def test_summarize_partial_runs_gives_a_partial_score_never_an_official_one(tmp_path):
    gone = ["machine type valve not scored (6 test files)"]
    runs = [_fake_run(tmp_path, f"p{k}", {"mse": _result_2020({"fan": fan, "pump": (0.5, 0.5)}, missing=gone)})
            for k, fan in enumerate(FAN)]
    summary = summarize_runs(runs)
    assert summary.status("mse") == "partial"
    assert all(math.isnan(v) for v in summary.official("mse"))
    assert summary.partial_score("mse") == pytest.approx((0.625, math.sqrt(0.004375)))  # as official above
    last = summary.rows("mse")[-1]
    assert last["machine"] == "partial score" and last["status"] == "partial"
    assert last["official score mean"] is None and last["partial score mean"] == pytest.approx(0.625)
    assert last["missing"] == gone[0]
    assert ("partial score: 0.6250 ± 0.0661 (PARTIAL: not the official score; missing: machine type valve "
            "not scored (6 test files))") in summary.format_text()
    assert "official score:" not in summary.format_text()
    # one partial run among official ones: no official mean, and the summary says how many
    mixed = summarize_runs([_fake_run(tmp_path, "o0", {"mse": _result_2020({"fan": FAN[0], "pump": (0.5, 0.5)})}),
                            runs[1]])
    assert mixed.status("mse") == "partial" and math.isnan(mixed.official("mse")[0])
    assert "missing: 1 of 2 runs partial; machine type valve" in mixed.format_text()
    # official runs only: an official score and no partial one
    official = summarize_runs([_fake_run(tmp_path, "o1", {"mse": _result_2020({"fan": FAN[0], "pump": (0.5, 0.5)})})])
    last = official.rows("mse")[-1]
    assert official.status("mse") == "official" and last["machine"] == "official score"
    assert last["partial score mean"] is None and math.isnan(official.partial_score("mse")[0])


def test_summary_files_written_before_the_status_column_still_read_as_official(tmp_path):
    path = tmp_path / "summary.csv"
    path.write_text("machine,AUC,pAUC,score,formula,official score\nfan,0.7,0.6,0.65,dcase2020,\n"
                    "official score,,,,dcase2020,0.575\n")
    old = read_summary_file(path)
    assert old.official == 0.575 and old.status == "official" and not old.partial and old.missing == []
    assert old.columns == ["AUC", "pAUC", "score"] and old.machines["fan"]["AUC"] == 0.7


def test_a_comparison_of_models_says_which_are_partial(tmp_path):
    from stetho.outputs import write_section_metrics
    from stetho.outputs.compare import compare_runs

    gone = ["machine type valve not scored (6 test files)"]
    runs = {}
    for name, missing in (("full", None), ("part", gone)):
        result = _result_2020({"fan": (0.7, 0.6), "pump": (0.5, 0.5)}, missing=missing)
        run = _fake_run(tmp_path, name, {"mse": result})
        write_section_metrics(run / "results" / "mse" / "sections.csv", result)
        runs[name] = [(run, "mse")]
    comparison = compare_runs(runs)
    assert {r["model"]: r["status"] for r in comparison.model_rows()} == {"full": "official", "part": "partial"}
    text = comparison.format_text()
    assert "PARTIAL (not the official score's coverage" in text and f"  part: {gone[0]}" in text
    assert "  full:" not in text
    assert "PARTIAL" not in compare_runs({"full": runs["full"]}).format_text()


def test_summarize_one_run_has_nan_std(three_runs):
    summary = summarize_runs(three_runs[:1])
    fan = summary.rows("mahalanobis")[0]
    assert fan["AUC mean"] == pytest.approx(0.7) and math.isnan(fan["AUC std"])
    assert list(summary.modes) == ["mahalanobis", "mse"]  # one run: all its modes are common
    assert format_mean_std(0.7, math.nan) == "0.7000 ± -"
    assert format_mean_std(math.nan, math.nan) == "-"
    assert format_mean_std(0.71234, 0.015, digits=3) == "0.712 ± 0.015"


def test_summarize_refuses_runs_that_cannot_be_averaged(three_runs, tmp_path):
    with pytest.raises(EvaluationError, match="no runs"):
        summarize_runs([])
    with pytest.raises(EvaluationError, match="given twice"):
        summarize_runs([three_runs[0], three_runs[0]])
    other = _fake_run(tmp_path, "year2022", {"mahalanobis": _result_2020({"fan": (0.7, 0.6), "pump": (0.5, 0.5)},
                                                                         formula="dcase2022")})
    with pytest.raises(EvaluationError) as err:
        summarize_runs(three_runs + [other])
    msg = str(err.value)
    assert "different official-score formulas" in msg
    assert f"{three_runs[0]}: dcase2020" in msg and f"{other}: dcase2022" in msg
    fewer = _fake_run(tmp_path, "fan_only", {"mahalanobis": _result_2020({"fan": (0.7, 0.6)})})
    with pytest.raises(EvaluationError, match=rf"different machine types.*{fewer}: fan\b"):
        summarize_runs([three_runs[0], fewer])
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    with pytest.raises(StethoError, match="not_a_run"):
        summarize_runs([three_runs[0], empty])
    mse_only = _fake_run(tmp_path, "mse_only", {"mse": _result_2020({"fan": (0.7, 0.6), "pump": (0.5, 0.5)})})
    with pytest.raises(EvaluationError, match="no score mode in common"):
        summarize_runs([three_runs[2], mse_only])
