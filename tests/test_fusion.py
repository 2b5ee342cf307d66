"""Tests of score fusion: stetho.backends.fusion (standardiser, weighted mean) and
stetho.pipeline.ensemble / `stetho ensemble` on a tiny toy data set."""

from __future__ import annotations

import csv
import json
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
