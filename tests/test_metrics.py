"""Tests of stetho.metrics: the official DCASE Task 2 metrics, joined by file name."""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import hmean
from sklearn.metrics import roc_auc_score

from stetho.datasets.clip import Clip
from stetho.errors import EvaluationError
from stetho.metrics import (
    ARITHMETIC_MEAN,
    FORMULAS,
    HARMONIC_MEAN,
    METRIC_KEYS,
    NO_DOMAIN_COLUMNS,
    SUMMARY_PRINT_COLUMNS,
    TABLE_COLUMNS,
    TABLE_COLUMNS_2020,
    TABLE_COLUMNS_2021,
    EvaluationResult,
    Formula,
    SectionResult,
    auc,
    evaluate,
    join_by_name,
    official_score,
    partial_score,
    pauc,
    section_metrics,
)

EPS = sys.float_info.epsilon


def clip(name, label, domain="source", machine="fan", section="00"):
    return Clip(Path("data") / machine / "test" / name, machine, section, "test", domain, label)


def make_section(rows, machine="fan", section="00", suffix=""):
    """rows: (domain, label, score) -> (clips, [(name, score)])."""
    clips, scores = [], []
    for i, (domain, label, score) in enumerate(rows):
        kind = "anomaly" if label else "normal"
        name = f"section_{section}_{domain}_test_{kind}_{i:04d}{suffix}.wav"
        clips.append(clip(name, label, domain, machine, section))
        scores.append((name, score))
    return clips, scores


# ------------------------------------------------------------------------------------------
# auc / pauc
# ------------------------------------------------------------------------------------------


def test_auc_hand_values():
    # anomalies 0.35, 0.8 vs normals 0.1, 0.4: pairs 0.35>0.1 yes, 0.35>0.4 no, 0.8>both yes -> 3/4
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # a tie counts one half: anomaly 0.5 vs normals 0.2 (1) and 0.5 (1/2) -> 1.5/2
    assert auc([0, 0, 1], [0.2, 0.5, 0.5]) == pytest.approx(0.75)
    assert auc([0, 1], [0.9, 0.1]) == pytest.approx(0.0)


def test_pauc_hand_values():
    # McClish: 0.5 * (1 + (pa - min_area) / (max_area - min_area)), min_area = 0.1**2 / 2 = 0.005,
    # max_area = 0.1.
    # 2 normals, 2 anomalies; descending 0.8 A, 0.4 N, 0.35 A, 0.1 N: ROC goes (0,0) -> (0,0.5) ->
    # (0.5,0.5): TPR = 0.5 on FPR [0,0.1] -> pa = 0.05 -> 0.5 * (1 + 0.045/0.095) = 14/19.
    assert pauc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(14 / 19)
    # 5 normals, 2 anomalies; top scores tie (A and N at 0.9): the ROC is the straight line
    # (0,0) -> (0.2,0.5), so TPR(0.1) = 0.25 and pa = 0.1 * 0.25 / 2 = 0.0125
    # -> 0.5 * (1 + 0.0075/0.095) = 41/76.
    y = [0, 0, 0, 0, 0, 1, 1]
    s = [0.9, 0.1, 0.2, 0.3, 0.4, 0.9, 0.35]
    assert pauc(y, s) == pytest.approx(41 / 76)
    # a perfect ranking is 1, the worst is pa = 0 -> 0.5 * (1 - 0.005/0.095) = 9/19
    assert pauc([0, 1], [0.0, 1.0]) == pytest.approx(1.0)
    assert pauc([0, 1], [1.0, 0.0]) == pytest.approx(9 / 19)
    # another max_fpr: 0.5; the 2+2 example: pa = 0.5*0.5 = 0.25, min 0.125, max 0.5 -> 2/3
    assert pauc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], max_fpr=0.5) == pytest.approx(2 / 3)


def test_auc_pauc_match_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(10, 200))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        s = rng.normal(size=n) + y * rng.uniform(0, 2)
        assert auc(y, s) == pytest.approx(roc_auc_score(y, s))
        assert pauc(y, s) == pytest.approx(roc_auc_score(y, s, max_fpr=0.1))
        assert pauc(y, s, 0.3) == pytest.approx(roc_auc_score(y, s, max_fpr=0.3))


def test_single_class_is_nan_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="stetho.metrics"):
        assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert "only" in caplog.text or "both classes" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stetho.metrics"):
        assert math.isnan(pauc([0, 0], [0.1, 0.2]))
    assert "pAUC" in caplog.text and "NaN" in caplog.text


def test_invalid_inputs_raise():
    with pytest.raises(EvaluationError):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(EvaluationError):
        auc([0, 1], [0.1])
    with pytest.raises(EvaluationError):
        pauc([0, 1], [0.1, 0.2], max_fpr=0.0)


# ------------------------------------------------------------------------------------------
# section metrics: which files enter which AUC
# ------------------------------------------------------------------------------------------

# source normals 0.1, 0.4; target normals 0.3, 0.6; source anomaly 0.5; target anomaly 0.2
SUBSET_ROWS = [
    ("source", 0, 0.1),
    ("source", 0, 0.4),
    ("target", 0, 0.3),
    ("target", 0, 0.6),
    ("source", 1, 0.5),
    ("target", 1, 0.2),
]


def test_auc_source_and_target_use_own_normals_and_all_anomalies():
    d, y, s = zip(*SUBSET_ROWS)
    m = section_metrics(y, s, d)
    assert set(m) == set(METRIC_KEYS)
    # AUC (source): anomalies {0.5, 0.2} vs source normals {0.1, 0.4}: 0.5 beats 2, 0.2 beats 1 -> 3/4.
    # (Wrong subsets give other values: source anomalies only -> 1.0; plus target normals -> 4/8.)
    assert m["AUC (source)"] == pytest.approx(0.75)
    # AUC (target): anomalies {0.5, 0.2} vs target normals {0.3, 0.6}: 0.5 beats 0.3 only -> 1/4.
    # (target anomalies only -> 0.0; all normals -> 0.5.)
    assert m["AUC (target)"] == pytest.approx(0.25)
    # AUC over all files: {0.5, 0.2} vs {0.1, 0.4, 0.3, 0.6}: 3 + 1 of 8 -> 0.5
    assert m["AUC"] == pytest.approx(0.5)
    # pAUC (source): 0.5 A, 0.4 N, 0.1 N -> TPR 1 at FPR 0 -> 1.0
    assert m["pAUC (source)"] == pytest.approx(1.0)
    # pAUC (target): 0.6 N, 0.3 N, 0.2 A -> TPR 0 on [0, 0.1] -> 9/19
    assert m["pAUC (target)"] == pytest.approx(9 / 19)
    # The 2021 within-domain AUCs see their own domain's anomaly only:
    # source: 0.5 vs {0.1, 0.4} -> 1 (not 3/4); target: 0.2 vs {0.3, 0.6} -> 0 (not 1/4).
    assert m["AUC (source only)"] == pytest.approx(1.0)
    assert m["AUC (target only)"] == pytest.approx(0.0)
    # no decisions -> precision/recall/F1 NaN
    for k in TABLE_COLUMNS[6:]:
        assert math.isnan(m[k])


def test_pauc_uses_both_domains():
    # 5 source normals, 5 target normals (FPR step 0.1 over all files, 0.2 within a domain)
    rows = [("source", 0, v) for v in (0.1, 0.2, 0.3, 0.4, 0.5)]
    rows += [("target", 0, v) for v in (0.15, 0.25, 0.35, 0.45, 0.8)]
    rows += [("source", 1, 0.9), ("target", 1, 0.7)]
    d, y, s = zip(*rows)
    m = section_metrics(y, s, d)
    # all files, descending 0.9 A, 0.8 N, 0.7 A: ROC (0,0)->(0,0.5)->(0.1,0.5)->(0.1,1)
    # -> pa = 0.05 -> 14/19 (differs from both within-domain values below)
    assert m["pAUC"] == pytest.approx(14 / 19)
    assert m["pAUC (source)"] == pytest.approx(1.0)  # 0.9 A on top
    assert m["pAUC (target)"] == pytest.approx(9 / 19)  # 0.8 N on top: pa = 0


def test_precision_recall_f1_per_domain_hand_example():
    rows = [  # (domain, label, score); decisions below
        ("source", 0, 0.1), ("source", 0, 0.2), ("source", 1, 0.9), ("source", 1, 0.8), ("source", 1, 0.3),
        ("target", 0, 0.1), ("target", 0, 0.2), ("target", 0, 0.3), ("target", 1, 0.9), ("target", 1, 0.8),
    ]
    decisions = [0, 0, 1, 1, 0, 1, 1, 0, 1, 1]
    d, y, s = zip(*rows)
    m = section_metrics(y, s, d, decisions)
    # source: TP 2, FP 0, FN 1 -> precision 1, recall 2/3, F1 = 2*1*(2/3)/(1+2/3) = 0.8
    assert m["precision (source)"] == pytest.approx(1.0)
    assert m["recall (source)"] == pytest.approx(2 / 3)
    assert m["F1 score (source)"] == pytest.approx(0.8)
    # target: TP 2, FP 2, FN 0 -> precision 0.5, recall 1, F1 = 2*0.5/1.5 = 2/3
    assert m["precision (target)"] == pytest.approx(0.5)
    assert m["recall (target)"] == pytest.approx(1.0)
    assert m["F1 score (target)"] == pytest.approx(2 / 3)
    # zero_division=0: no positive decision in a domain -> precision 0, not a crash
    m0 = section_metrics(y, s, d, [0] * 10)
    assert m0["precision (source)"] == 0.0 and m0["F1 score (target)"] == 0.0


def test_section_metrics_rejects_mixed_domains():
    with pytest.raises(EvaluationError, match="no domain"):
        section_metrics([0, 1], [0.1, 0.2], ["source", None])
    with pytest.raises(EvaluationError, match="domains must be"):
        section_metrics([0, 1], [0.1, 0.2], ["source", "tgt"])


# ------------------------------------------------------------------------------------------
# official score
# ------------------------------------------------------------------------------------------


def test_official_score_hand_values(caplog):
    assert official_score([0.5, 1.0]) == pytest.approx(2 / 3)  # 2 / (1/0.5 + 1/1)
    # a 0 is floored at eps instead of crashing: 2 / (1/eps + 1)
    v = official_score([0.0, 1.0])
    assert v == pytest.approx(2 / (1 / EPS + 1)) and 0 < v < 1e-10
    # an undefined term leaves no official score (the evaluators need every term) ...
    with caplog.at_level(logging.WARNING, logger="stetho.metrics"):
        assert math.isnan(official_score([0.5, float("nan"), 1.0]))
    assert "official score undefined: 1 of 3" in caplog.text
    caplog.clear()
    # ... only a partial score over the defined ones, said to be so
    with caplog.at_level(logging.WARNING, logger="stetho.metrics"):
        assert partial_score([0.5, float("nan"), 1.0]) == pytest.approx(2 / 3)
    assert "left out" in caplog.text and "not the official score" in caplog.text
    assert partial_score([0.5, 1.0]) == official_score([0.5, 1.0])


def random_truth(machines=("bearing", "fan", "valve"), sections=("00",), seed=0):
    rng = np.random.default_rng(seed)
    clips, scores = [], []
    for m in machines:
        for sec in sections:
            rows = []
            for domain, n in (("source", 30), ("target", 10)):
                for label in (0, 1):
                    for _ in range(n // (2 if label else 1)):
                        rows.append((domain, label, float(rng.normal() + label * rng.uniform(0.3, 1.5))))
            c, s = make_section(rows, m, sec, suffix=f"_{m}")  # file names unique across machines
            clips += c
            scores += s
    return clips, scores


def test_official_score_equals_hmean_over_machines_with_one_section_each():
    clips, scores = random_truth()
    res = evaluate(scores, clips)
    per_machine = []
    for m in res.machines():
        (sec,) = [s for s in res.sections if s.machine == m]
        per_machine.append(hmean([sec.metrics["AUC (source)"], sec.metrics["AUC (target)"], sec.metrics["pAUC"]]))
    assert res.official_score == pytest.approx(hmean(per_machine), rel=1e-12)
    # the flat definition, recomputed from sklearn directly
    flat = []
    for m in res.machines():
        cs = [c for c in clips if c.machine == m]
        sc = dict(scores)
        y = np.array([c.label for c in cs])
        s = np.array([sc[c.name] for c in cs])
        dom = np.array([c.domain for c in cs])
        for d in ("source", "target"):
            keep = (dom == d) | (y == 1)
            flat.append(roc_auc_score(y[keep], s[keep]))
        flat.append(roc_auc_score(y, s, max_fpr=0.1))
    assert res.official_score == pytest.approx(hmean(flat), rel=1e-12)
    summary = res.machine_summary()
    assert [r["machine"] for r in summary] == ["bearing", "fan", "valve"]
    assert [r["hmean"] for r in summary] == pytest.approx(per_machine)
    assert res.formula == "dcase2022"


def test_unknown_formula_lists_known_ones():
    clips, scores = random_truth(("fan",))
    with pytest.raises(EvaluationError, match="dcase2022") as err:
        evaluate(scores, clips, formula="dcase2019")
    for name in ("dcase2020", "dcase2021", "dcase2022", "dcase2023", "dcase2024", "dcase2025"):
        assert name in str(err.value)
    assert evaluate(scores, clips, formula="dcase2024").official_score == evaluate(scores, clips).official_score
    res = EvaluationResult([], partial_score=0.5, formula="dcase2019")
    with pytest.raises(EvaluationError, match="dcase2021"):
        res.formula_description


def test_formulas_have_names_descriptions_and_namings():
    assert list(FORMULAS) == ["dcase2020", "dcase2021", "dcase2022", "dcase2023", "dcase2024", "dcase2025"]
    for name, f in FORMULAS.items():
        assert isinstance(f, Formula) and f.name == name
        # one sentence naming the year and what is averaged
        assert f.description.startswith(f"DCASE {name[-4:]}: ") and "mean" in f.description
        assert ". " not in f.description  # one sentence
    assert "harmonic" in FORMULAS["dcase2021"].description and "within-domain" in FORMULAS["dcase2021"].description
    assert "arithmetic" in FORMULAS["dcase2020"].description
    assert [FORMULAS[n].naming for n in FORMULAS] == ["id", "section_domain"] + ["section"] * 4
    # 2023-2025 compute exactly what 2022 computes
    for y in (2023, 2024, 2025):
        assert FORMULAS[f"dcase{y}"].score is FORMULAS["dcase2022"].score
        assert FORMULAS[f"dcase{y}"].table is FORMULAS["dcase2022"].table
    with pytest.raises(dataclasses.FrozenInstanceError):
        FORMULAS["dcase2022"].name = "x"  # type: ignore[misc]
    clips, scores = random_truth(("fan",))
    for name in FORMULAS:
        res = evaluate(scores, clips, formula=name)
        assert res.formula == name and res.formula_description == FORMULAS[name].description


# ------------------------------------------------------------------------------------------
# joining by name
# ------------------------------------------------------------------------------------------


def test_shuffled_scores_give_identical_results():
    clips, scores = random_truth(sections=("00", "01"))
    shuffled = list(scores)
    random.Random(1).shuffle(shuffled)
    a = evaluate(sorted(scores), clips)
    b = evaluate(shuffled, clips)
    assert a.official_score == b.official_score
    assert [s.metrics for s in a.sections] == [s.metrics for s in b.sections]
    # pairing by position would have given a different answer
    fan = [i for i, c in enumerate(clips) if c.machine == "fan" and c.section == "00"]
    y = [clips[i].label for i in fan]
    by_position = auc(y, [shuffled[i][1] for i in fan])
    assert by_position != pytest.approx(a.sections[2].metrics["AUC"])
    # join_by_name returns truth order and aligned values
    got_clips, values = join_by_name(shuffled, clips)
    assert got_clips == clips
    assert values.dtype == np.float64
    assert values.tolist() == [dict(scores)[c.name] for c in clips]


def test_missing_extra_duplicated_names_are_reported():
    clips, scores = make_section([("source", 0, 0.1), ("source", 1, 0.9), ("target", 0, 0.2), ("target", 1, 0.8)])
    names = [n for n, _ in scores]

    with pytest.raises(EvaluationError) as err:  # missing
        join_by_name(scores[1:], clips)
    assert names[0] in str(err.value) and "1 missing" in str(err.value)

    with pytest.raises(EvaluationError) as err:  # extra
        evaluate(scores + [("section_00_source_test_normal_9999.wav", 0.3)], clips)
    assert "section_00_source_test_normal_9999.wav" in str(err.value) and "1 extra" in str(err.value)

    with pytest.raises(EvaluationError) as err:  # duplicated in the scores (even with same value)
        join_by_name(scores + [scores[2]], clips, what="decisions")
    assert names[2] in str(err.value) and "duplicated in the decisions" in str(err.value)

    with pytest.raises(EvaluationError) as err:  # duplicated in the truth
        join_by_name(scores, clips + [clips[1]])
    assert names[1] in str(err.value) and "duplicated in the ground truth" in str(err.value)

    with pytest.raises(EvaluationError) as err:  # NaN / inf score
        join_by_name([(n, float("nan") if i == 3 else v) for i, (n, v) in enumerate(scores)], clips)
    assert names[3] in str(err.value) and "NaN" in str(err.value)


def test_long_problem_lists_are_truncated_with_counts():
    clips, scores = make_section([("source", 0, float(i)) for i in range(50)])
    with pytest.raises(EvaluationError) as err:
        join_by_name([], clips)
    msg = str(err.value)
    assert "50 missing" in msg and "and 30 more" in msg


def test_per_machine_mapping_handles_names_shared_across_machines():
    # DCASE evaluation sets name every machine's files alike
    rows = [("source", 0, 0.1), ("source", 1, 0.9), ("target", 0, 0.2), ("target", 1, 0.8)]
    fan, fan_scores = make_section(rows, "fan")
    pump, _ = make_section(rows, "pump")
    pump_scores = [(n, 1 - v) for n, v in fan_scores]
    with pytest.raises(EvaluationError, match="duplicated in the ground truth"):
        evaluate(fan_scores + pump_scores, fan + pump)
    res = evaluate({"fan": fan_scores, "pump": pump_scores}, fan + pump)
    assert res.machines() == ["fan", "pump"]
    assert res.sections[0].metrics["AUC"] == 1.0 and res.sections[1].metrics["AUC"] == 0.0
    with pytest.raises(EvaluationError, match="pump"):
        evaluate({"fan": fan_scores}, fan + pump)


def test_decisions_joined_strictly_and_must_be_binary():
    clips, scores = make_section([("source", 0, 0.1), ("source", 1, 0.9), ("target", 0, 0.2), ("target", 1, 0.8)])
    names = [n for n, _ in scores]
    good = [(n, int(v > 0.5)) for n, v in scores]
    res = evaluate(scores, clips, decisions=list(reversed(good)))
    assert res.sections[0].metrics["F1 score (source)"] == 1.0
    with pytest.raises(EvaluationError, match="decisions"):
        evaluate(scores, clips, decisions=good[:-1])
    with pytest.raises(EvaluationError) as err:
        evaluate(scores, clips, decisions=[(n, 2 if n == names[0] else d) for n, d in good])
    assert names[0] in str(err.value)


def test_unlabeled_truth_is_rejected():
    clips, scores = make_section([("source", 0, 0.1), ("source", 1, 0.9)])
    unlabeled = clip("section_00_0001.wav", None)
    with pytest.raises(EvaluationError, match="section_00_0001.wav"):
        evaluate(scores + [("section_00_0001.wav", 0.5)], clips + [unlabeled])


# ------------------------------------------------------------------------------------------
# result tables, edge cases
# ------------------------------------------------------------------------------------------


def test_table_mean_rows_on_two_section_hand_example():
    # section 00: source normal 0.1, target normal 0.5, source anomaly 0.3, target anomaly 0.6
    #   AUC (source) = {0.3, 0.6} vs {0.1} = 1;  AUC (target) = {0.3, 0.6} vs {0.5} = 1/2
    #   pAUC: 0.6 A, 0.5 N, ... -> TPR 0.5 on FPR [0, 0.1] -> pa 0.05 -> 14/19
    # section 01: every anomaly above every normal -> all 1
    c0, s0 = make_section([("source", 0, 0.1), ("target", 0, 0.5), ("source", 1, 0.3), ("target", 1, 0.6)], section="00")
    c1, s1 = make_section([("source", 0, 0.1), ("target", 0, 0.2), ("source", 1, 0.9), ("target", 1, 0.8)], section="01")
    res = evaluate(s1 + s0, c1 + c0)
    assert [s.section for s in res.sections] == ["00", "01"]
    rows = res.table("fan")
    assert [r["section"] for r in rows] == ["00", "01", ARITHMETIC_MEAN, HARMONIC_MEAN]
    assert all(tuple(r) == TABLE_COLUMNS for r in rows)
    am, hm = rows[2], rows[3]
    assert rows[0]["AUC (target)"] == pytest.approx(0.5) and rows[0]["pAUC"] == pytest.approx(14 / 19)
    assert am["AUC (source)"] == pytest.approx(1.0) and hm["AUC (source)"] == pytest.approx(1.0)
    assert am["AUC (target)"] == pytest.approx(0.75)  # (0.5 + 1) / 2
    assert hm["AUC (target)"] == pytest.approx(2 / 3)  # 2 / (2 + 1)
    assert am["pAUC"] == pytest.approx(33 / 38)  # (14/19 + 1) / 2
    assert hm["pAUC"] == pytest.approx(28 / 33)  # 2 / (19/14 + 1)
    for k in TABLE_COLUMNS[6:]:  # no decisions: these columns stay NaN
        assert math.isnan(am[k]) and math.isnan(hm[k])
    # official: hmean(1, 1/2, 14/19, 1, 1, 1) = 6 / (5 + 2 + 19/14 - 1) = 84/103
    assert res.official_score == pytest.approx(84 / 103)
    (summary,) = res.machine_summary()
    assert summary["AUC (target)"] == pytest.approx(0.75) and summary["hmean"] == pytest.approx(84 / 103)
    assert "precision (source)" not in summary
    with pytest.raises(EvaluationError, match="fan"):
        res.table("pump")


def test_table_harmonic_mean_row_floors_zero():
    metrics = {k: 1.0 for k in METRIC_KEYS}
    zero = dict(metrics, **{"AUC (source)": 0.0})
    res = EvaluationResult(
        [SectionResult("fan", "00", metrics, 4), SectionResult("fan", "01", zero, 4)], partial_score=0.0,
        formula="dcase2022",
    )
    hm = res.table("fan")[-1]
    assert 0 < hm["AUC (source)"] < 1e-10
    assert hm["AUC (target)"] == 1.0


def test_section_without_anomalies_makes_the_result_partial(caplog):
    # Section 00: AUC (source) = 1 (0.1 below both anomalies 0.9, 0.3); AUC (target) = 1/2 (0.5
    # below 0.9, above 0.3); pAUC: descending 0.9 A, 0.5 N, 0.3 A, 0.1 N -> TPR 1/2 on FPR
    # [0, 0.1] -> 14/19. Section 01 has no anomaly: its three terms are undefined.
    c0, s0 = make_section([("source", 0, 0.1), ("source", 1, 0.9), ("target", 0, 0.5), ("target", 1, 0.3)],
                          section="00")
    c1, s1 = make_section([("source", 0, 0.1), ("target", 0, 0.2)], section="01")
    with caplog.at_level(logging.WARNING, logger="stetho.metrics"):
        res = evaluate(s0 + s1, c0 + c1)
    sec1 = res.sections[1].metrics
    assert math.isnan(sec1["AUC (source)"]) and math.isnan(sec1["AUC (target)"]) and math.isnan(sec1["pAUC"])
    assert res.partial and res.status == "partial"
    assert math.isnan(res.official_score)  # the evaluators would not print this number
    # the partial score: hmean(1, 1/2, 14/19) over the defined terms = 3 / (1 + 2 + 19/14) = 42/61
    assert res.partial_score == pytest.approx(42 / 61)
    assert res.missing == ["fan section 01: no anomalies, so AUC (source), AUC (target) and pAUC are undefined"]
    assert "partial result, not the official score" in caplog.text and "left out" in caplog.text
    # with anomalies in section 01 too, the same files give the official score
    c1b, s1b = make_section([("source", 0, 0.1), ("target", 0, 0.2), ("source", 1, 0.6)], section="01")
    full = evaluate(s0 + s1b, c0 + c1b)
    assert not full.partial and full.missing == [] and full.status == "official"
    assert full.official_score == full.partial_score
    assert full.official_score == pytest.approx(hmean([1, 1 / 2, 14 / 19, 1, 1, 1]))


def test_domain_without_anomalies_is_partial_under_2021_only():
    # The 2022 AUC (target) takes every anomaly of the section, so a target domain without
    # anomalies still has one; the 2021 within-domain target AUC and pAUC (target) do not.
    clips, scores = make_section([("source", 0, 0.1), ("source", 1, 0.9), ("target", 0, 0.2), ("target", 0, 0.4)])
    assert not evaluate(scores, clips).partial
    res = evaluate(scores, clips, formula="dcase2021")
    assert res.partial and math.isnan(res.official_score)
    assert res.missing == [
        "fan section 00: no anomalies in the target domain, so AUC (target only) and pAUC (target) are undefined"
    ]
    assert res.partial_score == pytest.approx(1.0)  # the source AUC and pAUC are 1
    # 2020 names the unit an ID
    one_class, s = make_section([(None, 0, 0.1), (None, 0, 0.4)], section="02")
    ok, s_ok = make_section([(None, 0, 0.1), (None, 1, 0.4)], section="00")
    res = evaluate(s_ok + s, ok + one_class, formula="dcase2020")
    assert res.missing == ["fan ID 02: no anomalies, so AUC and pAUC are undefined"]
    assert res.partial_score == pytest.approx(1.0)


def test_scores_covering_part_of_the_test_split_are_partial():
    # The data holds fan sections 00 and 01 and pump; the scores cover fan section 00 but one file.
    c0, s0 = make_section([("source", 0, 0.1), ("source", 1, 0.9), ("target", 0, 0.5), ("target", 1, 0.3)],
                          section="00")
    c1, _ = make_section([("source", 0, 0.1), ("source", 1, 0.2)], section="01")
    pump, _ = make_section([("source", 0, 0.1), ("source", 1, 0.2)], machine="pump", suffix="_p")
    unscored = clip("section_00_source_test_normal_0099.wav", 0)
    split = c0 + c1 + pump + [unscored]
    res = evaluate(s0, c0, test_split=split)
    assert res.partial and math.isnan(res.official_score)
    assert res.missing == [
        "fan section 00: 1 of 5 test files not scored",
        "section 01 of fan not scored (2 test files)",
        "machine type pump not scored (2 test files)",
    ]
    assert res.partial_score == pytest.approx(42 / 61)  # what was scored, as without test_split
    assert evaluate(s0, c0).official_score == pytest.approx(42 / 61)
    assert not evaluate(s0, c0, test_split=c0).partial  # the whole test split scored


def test_target_domain_without_anomalies_gives_nan_ptarget(caplog):
    rows = [("source", 0, 0.1), ("source", 1, 0.9), ("target", 0, 0.2), ("target", 0, 0.4)]
    d, y, s = zip(*rows)
    with caplog.at_level(logging.WARNING, logger="stetho.metrics"):
        m = section_metrics(y, s, d, where="fan section 00")
    assert math.isnan(m["pAUC (target)"])
    assert m["AUC (target)"] == pytest.approx(1.0)  # all anomalies enter: 0.9 vs {0.2, 0.4}
    assert "fan section 00: pAUC (target)" in caplog.text


def test_dataset_without_domains():
    # AUC: {0.35, 0.8} vs {0.1, 0.4} -> 3/4; pAUC -> 14/19; official = hmean(3/4, 14/19)
    clips, scores = make_section([(None, 0, 0.1), (None, 0, 0.4), (None, 1, 0.35), (None, 1, 0.8)])
    res = evaluate(scores, clips)
    m = res.sections[0].metrics
    assert m["AUC"] == pytest.approx(0.75) and m["pAUC"] == pytest.approx(14 / 19)
    assert math.isnan(m["AUC (source)"]) and math.isnan(m["pAUC (target)"])
    assert res.official_score == pytest.approx(hmean([0.75, 14 / 19]))
    rows = res.table("fan")
    assert all(tuple(r) == NO_DOMAIN_COLUMNS for r in rows)
    (summary,) = res.machine_summary()
    assert summary["AUC"] == pytest.approx(0.75) and summary["hmean"] == pytest.approx(hmean([0.75, 14 / 19]))


# ------------------------------------------------------------------------------------------
# DCASE 2020: per machine ID, averaged per machine type, then over machine types
# ------------------------------------------------------------------------------------------


def id_section(rows, machine, machine_id):
    """rows: (label, score) of one machine ID, DCASE2020 names -> (clips, [(name, score)])."""
    clips, scores = [], []
    for i, (label, score) in enumerate(rows):
        name = f"{'anomaly' if label else 'normal'}_id_{machine_id}_{i:08d}.wav"
        clips.append(clip(name, label, None, machine, machine_id))
        scores.append((name, score))
    return clips, scores


# fan id 00: normals 0.1, 0.4, anomalies 0.35, 0.8 -> AUC 3/4, pAUC 14/19 (test_pauc_hand_values)
# fan id 02: normals 0.1, 0.2, anomalies 0.8, 0.9 -> AUC 1, pAUC 1
# pump id 00: normals 0.2, 0.6, anomalies 0.4, 0.1 -> AUC: 0.4 beats 0.2 only -> 1/4;
#   pAUC: 0.6 N is on top -> TPR 0 on FPR [0, 0.1] -> pa 0 -> 9/19
ROWS_2020 = {
    ("fan", "00"): [(0, 0.1), (0, 0.4), (1, 0.35), (1, 0.8)],
    ("fan", "02"): [(0, 0.1), (0, 0.2), (1, 0.8), (1, 0.9)],
    ("pump", "00"): [(0, 0.2), (0, 0.6), (1, 0.4), (1, 0.1)],
}


def truth_2020():
    clips, scores = {}, {}
    for (machine, mid), rows in ROWS_2020.items():
        c, s = id_section(rows, machine, mid)
        clips.setdefault(machine, []).extend(c)
        scores.setdefault(machine, []).extend(s)  # pump and fan share file names: per machine
    return [c for m in sorted(clips) for c in clips[m]], scores


def test_dcase2020_official_score_averages_ids_within_each_machine_type():
    clips, scores = truth_2020()
    res = evaluate(scores, clips, formula="dcase2020")
    # per ID, against sklearn directly
    for sec in res.sections:
        y, s = zip(*ROWS_2020[(sec.machine, sec.section)])
        assert sec.metrics["AUC"] == pytest.approx(roc_auc_score(y, s))
        assert sec.metrics["pAUC"] == pytest.approx(roc_auc_score(y, s, max_fpr=0.1))
        assert not sec.has_domains
    # fan: AUC (3/4 + 1)/2 = 7/8, pAUC (14/19 + 1)/2 = 33/38; pump: 1/4, 9/19.
    # official = mean(7/8, 33/38, 1/4, 9/19) = (9/8 + 51/38) / 4 = (375/152) / 4 = 375/608
    assert res.official_score == pytest.approx(375 / 608)
    # Averaging over the three IDs directly would weigh fan twice:
    # (3/4 + 1 + 1/4 + 14/19 + 1 + 9/19) / 6 = (3 + 23/19) / 6 = 40/57 = 0.70, not 375/608 = 0.62.
    per_id = np.mean([s.metrics[k] for s in res.sections for k in ("AUC", "pAUC")])
    assert per_id == pytest.approx(40 / 57) and abs(res.official_score - per_id) > 0.08

    fan = res.table("fan")
    assert res.columns("fan") == TABLE_COLUMNS_2020 == ("id", "AUC", "pAUC")
    assert all(tuple(r) == TABLE_COLUMNS_2020 for r in fan)
    assert [r["id"] for r in fan] == ["00", "02", ARITHMETIC_MEAN]  # the evaluator's "Average" row
    assert fan[-1]["AUC"] == pytest.approx(7 / 8) and fan[-1]["pAUC"] == pytest.approx(33 / 38)
    assert [r["id"] for r in res.table("pump")] == ["00", ARITHMETIC_MEAN]

    summary = res.machine_summary()
    assert [tuple(r) for r in summary] == [("machine", "AUC", "pAUC", "score")] * 2
    assert summary[0]["machine"] == "fan" and summary[0]["score"] == pytest.approx((7 / 8 + 33 / 38) / 2)
    assert summary[1]["AUC"] == pytest.approx(1 / 4) and summary[1]["pAUC"] == pytest.approx(9 / 19)
    # the official score is the mean over machine types of their (AUC + pAUC) / 2
    assert res.official_score == pytest.approx(np.mean([r["score"] for r in summary]))


def test_dcase2020_section_with_domains_uses_all_its_files():
    d, y, s = zip(*SUBSET_ROWS)
    clips, scores = make_section(SUBSET_ROWS)
    res = evaluate(scores, clips, formula="dcase2020")
    # AUC over all files = 1/2 (test_auc_source_and_target_...); pAUC over all files: the top
    # score 0.6 is a normal -> TPR 0 on [0, 0.1] -> 9/19. Score = (1/2 + 9/19) / 2 = 37/76.
    assert res.sections[0].metrics["pAUC"] == pytest.approx(roc_auc_score(y, s, max_fpr=0.1))
    assert res.official_score == pytest.approx(37 / 76)


# ------------------------------------------------------------------------------------------
# DCASE 2021: within-domain AUC and pAUC per section and domain, one harmonic mean
# ------------------------------------------------------------------------------------------

# section 00: source normals 0.1, 0.4, anomalies 0.5, 0.2; target normals 0.3, 0.6, anomalies 0.7, 0.05
# section 01: source normals 0.1, 0.2, anomalies 0.9, 0.8; target normals 0.5, 0.85, anomalies 0.95, 0.6
ROWS_2021 = {
    "00": [("source", 0, 0.1), ("source", 0, 0.4), ("source", 1, 0.5), ("source", 1, 0.2),
           ("target", 0, 0.3), ("target", 0, 0.6), ("target", 1, 0.7), ("target", 1, 0.05)],
    "01": [("source", 0, 0.1), ("source", 0, 0.2), ("source", 1, 0.9), ("source", 1, 0.8),
           ("target", 0, 0.5), ("target", 0, 0.85), ("target", 1, 0.95), ("target", 1, 0.6)],
}
THRESHOLD_2021 = 0.45  # decisions: score > 0.45


def truth_2021():
    clips, scores = [], []
    for sec, rows in ROWS_2021.items():
        c, s = make_section(rows, section=sec)
        clips += c
        scores += s
    decisions = [(n, int(v > THRESHOLD_2021)) for n, v in scores]
    return clips, scores, decisions


def test_dcase2021_official_score_uses_within_domain_values():
    clips, scores, decisions = truth_2021()
    res = evaluate(scores, clips, decisions, formula="dcase2021")
    s00, s01 = (s.metrics for s in res.sections)
    # section 00, within source: {0.5, 0.2} vs {0.1, 0.4}: 0.5 beats 2, 0.2 beats 1 -> 3/4;
    #   descending 0.5 A, 0.4 N -> TPR 1/2 on FPR [0, 0.1] -> pAUC 14/19.
    # within target: {0.7, 0.05} vs {0.3, 0.6}: 2 + 0 -> 1/2; 0.7 A on top -> pAUC 14/19.
    assert s00["AUC (source only)"] == pytest.approx(3 / 4) and s00["pAUC (source)"] == pytest.approx(14 / 19)
    assert s00["AUC (target only)"] == pytest.approx(1 / 2) and s00["pAUC (target)"] == pytest.approx(14 / 19)
    # The 2022 AUCs differ because the other domain's anomalies enter:
    # AUC (source) = {0.5, 0.2, 0.7, 0.05} vs {0.1, 0.4}: 2 + 1 + 2 + 0 -> 5/8;
    # AUC (target) = {0.5, 0.2, 0.7, 0.05} vs {0.3, 0.6}: 1 + 0 + 2 + 0 -> 3/8.
    assert s00["AUC (source)"] == pytest.approx(5 / 8) and s00["AUC (target)"] == pytest.approx(3 / 8)
    # section 01: source perfect -> 1, 1; target {0.95, 0.6} vs {0.5, 0.85}: 2 + 1 -> 3/4, 0.95 A on
    # top then 0.85 N -> 14/19.
    assert s01["AUC (source only)"] == 1.0 and s01["pAUC (source)"] == 1.0
    assert s01["AUC (target only)"] == pytest.approx(3 / 4) and s01["pAUC (target)"] == pytest.approx(14 / 19)
    # against sklearn on each domain's own files
    for sec, m in zip(("00", "01"), (s00, s01)):
        for dom in ("source", "target"):
            y, s = zip(*[(lab, v) for d, lab, v in ROWS_2021[sec] if d == dom])
            assert m[f"AUC ({dom} only)"] == pytest.approx(roc_auc_score(y, s))
            assert m[f"pAUC ({dom})"] == pytest.approx(roc_auc_score(y, s, max_fpr=0.1))

    # official = hmean(3/4, 14/19, 1/2, 14/19, 1, 1, 3/4, 14/19)
    #          = 8 / (4/3 + 19/14 + 2 + 19/14 + 1 + 1 + 4/3 + 19/14) = 8 / (20/3 + 57/14) = 336/451
    assert res.official_score == pytest.approx(336 / 451)
    within = [3 / 4, 14 / 19, 1 / 2, 14 / 19, 1, 1, 3 / 4, 14 / 19]
    assert res.official_score == pytest.approx(hmean(within))
    # = hmean(hmean of the AUCs, hmean of the pAUCs): the evaluator's last row, combined
    assert res.official_score == pytest.approx(hmean([hmean(within[0::2]), hmean(within[1::2])]))
    assert res.official_score != pytest.approx(evaluate(scores, clips, formula="dcase2022").official_score)


def test_dcase2021_table_and_machine_summary():
    clips, scores, decisions = truth_2021()
    res = evaluate(scores, clips, decisions, formula="dcase2021")
    rows = res.table("fan")
    assert res.columns("fan") == TABLE_COLUMNS_2021
    assert TABLE_COLUMNS_2021 == ("section", "domain", "AUC", "pAUC", "precision", "recall", "F1 score")
    assert all(tuple(r) == TABLE_COLUMNS_2021 for r in rows)
    # the 2021 evaluator's order: every section's source rows, then the target rows
    assert [(r["section"], r["domain"]) for r in rows] == [
        ("00", "source"), ("01", "source"), ("00", "target"), ("01", "target"),
        (ARITHMETIC_MEAN, ""), (HARMONIC_MEAN, ""),
    ]
    assert [r["AUC"] for r in rows[:4]] == pytest.approx([3 / 4, 1, 1 / 2, 3 / 4])
    assert [r["pAUC"] for r in rows[:4]] == pytest.approx([14 / 19, 1, 14 / 19, 14 / 19])
    # decisions (score > 0.45):
    # 00 source: anomalies 0.5 -> 1, 0.2 -> 0, normals 0 -> TP 1, FP 0, FN 1: P 1, R 1/2, F1 2/3
    # 01 source: perfect -> 1, 1, 1
    # 00 target: normal 0.6 -> 1, anomaly 0.7 -> 1, 0.05 -> 0 -> TP 1, FP 1, FN 1: P 1/2, R 1/2, F1 1/2
    # 01 target: both normals 0.5, 0.85 -> 1, both anomalies -> 1: TP 2, FP 2: P 1/2, R 1, F1 2/3
    assert [r["precision"] for r in rows[:4]] == pytest.approx([1, 1, 1 / 2, 1 / 2])
    assert [r["recall"] for r in rows[:4]] == pytest.approx([1 / 2, 1, 1 / 2, 1])
    assert [r["F1 score"] for r in rows[:4]] == pytest.approx([2 / 3, 1, 1 / 2, 2 / 3])
    am, hm = rows[4], rows[5]
    assert am["AUC"] == pytest.approx(3 / 4)  # (3/4 + 1 + 1/2 + 3/4) / 4
    assert hm["AUC"] == pytest.approx(12 / 17)  # 4 / (4/3 + 1 + 2 + 4/3)
    assert am["pAUC"] == pytest.approx(61 / 76)  # (3 * 14/19 + 1) / 4
    assert hm["pAUC"] == pytest.approx(56 / 71)  # 4 / (3 * 19/14 + 1)
    assert am["F1 score"] == pytest.approx(17 / 24)  # (2/3 + 1 + 1/2 + 2/3) / 4
    assert hm["precision"] == pytest.approx(2 / 3)  # 4 / (1 + 1 + 2 + 2)

    (summary,) = res.machine_summary()
    assert list(summary) == [
        "machine", "AUC (source)", "pAUC (source)", "AUC (target)", "pAUC (target)", "hmean",
        "precision (source)", "precision (target)", "recall (source)", "recall (target)",
        "F1 score (source)", "F1 score (target)",
    ]
    assert summary["AUC (source)"] == pytest.approx(7 / 8)  # mean of the within-source AUCs 3/4, 1
    assert summary["pAUC (source)"] == pytest.approx(33 / 38)  # (14/19 + 1) / 2
    assert summary["AUC (target)"] == pytest.approx(5 / 8)  # (1/2 + 3/4) / 2
    assert summary["pAUC (target)"] == pytest.approx(14 / 19)
    assert summary["hmean"] == pytest.approx(336 / 451)  # one machine type: its share is the score
    assert summary["precision (target)"] == pytest.approx(1 / 2) and summary["F1 score (target)"] == pytest.approx(7 / 12)
    # without decisions the precision/recall/F1 columns stay NaN in the table and leave the summary
    plain = evaluate(scores, clips, formula="dcase2021")
    assert math.isnan(plain.table("fan")[4]["precision"]) and math.isnan(plain.table("fan")[5]["F1 score"])
    assert list(plain.machine_summary()[0])[-1] == "hmean"


def test_dcase2021_eps_floor():
    # SUBSET_ROWS: within source 0.5 vs {0.1, 0.4} -> AUC 1, pAUC 1; within target 0.2 vs
    # {0.3, 0.6} -> AUC 0, pAUC 9/19. The 0 is floored at eps: 4 / (1 + 1 + 1/eps + 19/9).
    clips, scores = make_section(SUBSET_ROWS)
    res = evaluate(scores, clips, formula="dcase2021")
    assert res.official_score == pytest.approx(4 / (2 + 1 / EPS + 19 / 9))
    assert 0 < res.official_score < 1e-10
    assert 0 < res.table("fan")[-1]["AUC"] < 1e-10  # the harmonic-mean row floors too


def test_dcase2021_needs_domains():
    clips, scores = make_section([(None, 0, 0.1), (None, 0, 0.4), (None, 1, 0.35), (None, 1, 0.8)])
    with pytest.raises(EvaluationError, match=r"dcase2021.*no domains: fan section 00.*dcase2020"):
        evaluate(scores, clips, formula="dcase2021")
    # a result built by hand fails the same way in its tables
    res = evaluate(scores, clips, formula="dcase2020")
    res.formula = "dcase2021"
    with pytest.raises(EvaluationError, match="no domains"):
        res.table("fan")
    with pytest.raises(EvaluationError, match="no domains"):
        res.machine_summary()


def test_machine_summary_columns_per_formula_are_printable():
    clips, scores, decisions = truth_2021()
    expected = {
        "dcase2022": ["machine", "AUC (source)", "AUC (target)", "pAUC", "hmean"],
        "dcase2021": ["machine", "AUC (source)", "pAUC (source)", "AUC (target)", "pAUC (target)", "hmean"],
        "dcase2020": ["machine", "AUC", "pAUC", "score"],
    }
    for formula, keys in expected.items():
        (row,) = evaluate(scores, clips, formula=formula).machine_summary()
        assert list(row) == keys
        assert set(keys) <= set(SUMMARY_PRINT_COLUMNS)
        # the mean rows exist in every formula's table
        assert ARITHMETIC_MEAN in [next(iter(r.values())) for r in evaluate(scores, clips, formula=formula).table("fan")]
    # what stetho/cli.py printed before must stay printable
    for c in ("machine", "AUC (source)", "AUC (target)", "pAUC", "AUC", "hmean", "precision (source)",
              "recall (source)", "F1 score (source)", "F1 score (target)"):
        assert c in SUMMARY_PRINT_COLUMNS
    # 2022 tables are unchanged by the other formulas
    assert evaluate(scores, clips).columns("fan") == TABLE_COLUMNS


# ---------------------------------------------------------------------------------------------
# PR-AUC (average precision)
# ---------------------------------------------------------------------------------------------


def test_pr_auc_by_hand_and_in_section_metrics(caplog):
    from stetho.metrics import pr_auc

    # Scores in decreasing order: 0.9 (anomaly), 0.8 (normal), 0.7 (anomaly), 0.1 (normal).
    # Recall steps 0 → 1/2 at precision 1/1, then 1/2 → 1 at precision 2/3:
    # AP = 1/2 · 1 + 1/2 · 2/3 = 5/6.
    y, s = [1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]
    assert pr_auc(y, s) == pytest.approx(5 / 6)
    assert pr_auc([0, 1], [0.2, 0.9]) == 1.0
    m = section_metrics(y, s, [None] * 4)
    assert m["PR-AUC"] == pytest.approx(5 / 6) and m["AUC"] == pytest.approx(0.75)
    with caplog.at_level(logging.WARNING):
        assert math.isnan(pr_auc([1, 1], [0.1, 0.2]))
    assert "PR-AUC is undefined" in caplog.text
