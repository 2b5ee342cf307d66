"""Tests of stetho.backends: streaming Ledoit-Wolf, Mahalanobis scoring, Gamma thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from sklearn.covariance import empirical_covariance, ledoit_wolf

from stetho.backends import (
    StreamingLedoitWolf,
    gamma_threshold,
    mahalanobis_sq,
    precision_from_covariance,
    selective_mahalanobis,
)


def correlated(rng: np.random.Generator, n: int, d: int, offset: float = 3.0) -> np.ndarray:
    mix = rng.standard_normal((d, d)) / np.sqrt(d) + np.diag(np.linspace(0.5, 2.0, d))
    return rng.standard_normal((n, d)) @ mix + offset * rng.standard_normal(d)


def streamed(x: np.ndarray, sizes: list[int]) -> StreamingLedoitWolf:
    bounds = np.cumsum([0, *sizes])
    assert bounds[-1] == len(x)
    batches = [x[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    est = StreamingLedoitWolf(x.shape[1])
    for b in batches:
        est.update(b)
    return est


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ---------------------------------------------------------------- streaming Ledoit-Wolf


@pytest.mark.parametrize(
    "n, d, sizes",
    [
        (20, 50, [7, 7, 6]),  # n < d: strong shrinkage
        (5000, 8, [1000, 1, 2499, 1500]),  # n >> d: little shrinkage
        (300, 30, [300]),  # one batch
    ],
)
def test_streaming_ledoit_wolf_equals_sklearn(n, d, sizes):
    rng = np.random.default_rng(n + d)
    x = correlated(rng, n, d)
    est = streamed(x, sizes)
    cov, shrinkage = est.covariance()
    ref_cov, ref_shrinkage = ledoit_wolf(x)
    assert est.n == n
    np.testing.assert_allclose(est.mean_, x.mean(axis=0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(est.empirical(), empirical_covariance(x), rtol=1e-8, atol=1e-9)
    assert shrinkage == pytest.approx(ref_shrinkage, rel=1e-7, abs=1e-10)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-7, atol=1e-9)
    assert 0.0 <= shrinkage <= 1.0
    if n < d:
        assert shrinkage > 0.1
    elif n >= 100 * d:
        assert shrinkage < 0.05


def test_streaming_ledoit_wolf_clips_shrinkage_at_one():
    # isotropic white noise: the estimated intensity exceeds 1 and sklearn clips it to 1
    x = np.random.default_rng(1).standard_normal((1000, 5))
    ref_cov, ref_shrinkage = ledoit_wolf(x)
    assert ref_shrinkage == 1.0
    cov, shrinkage = streamed(x, [400, 600]).covariance()
    assert shrinkage == 1.0
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-9)
    np.testing.assert_allclose(cov, np.trace(empirical_covariance(x)) / 5 * np.eye(5), rtol=1e-9)


def test_streaming_ledoit_wolf_float32_batches():
    rng = np.random.default_rng(5)
    x = correlated(rng, 400, 16).astype(np.float32)
    cov, shrinkage = streamed(x, [100, 300]).covariance()
    ref_cov, ref_shrinkage = ledoit_wolf(x.astype(np.float64))
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-6, atol=1e-8)
    assert shrinkage == pytest.approx(ref_shrinkage, rel=1e-6)


def test_streaming_ledoit_wolf_far_from_the_origin():
    # The one-pass fourth moment expands |x - m|^4; the first-batch shift keeps it exact when the
    # mean is huge compared with the spread (unshifted, the terms cancel to noise).
    rng = np.random.default_rng(3)
    x = correlated(rng, 2000, 10, offset=0.0) + 1e6
    cov, shrinkage = streamed(x, [500, 1500]).covariance()
    ref_cov, ref_shrinkage = ledoit_wolf(x)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-6, atol=1e-9)
    assert shrinkage == pytest.approx(ref_shrinkage, rel=1e-5, abs=1e-9)


def test_streaming_ledoit_wolf_empty_batches_and_misuse():
    est = StreamingLedoitWolf(3)
    with pytest.raises(ValueError, match="no samples"):
        est.covariance()
    est.update(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="no samples"):
        est.empirical()
    x = np.random.default_rng(4).standard_normal((50, 3))
    est.update(x)
    np.testing.assert_allclose(est.covariance()[0], ledoit_wolf(x)[0], rtol=1e-9)


# ---------------------------------------------------------------- precision and Mahalanobis


def test_precision_inverts_spd():
    rng = np.random.default_rng(2)
    c = random_spd(rng, 12)
    p = precision_from_covariance(c)
    np.testing.assert_allclose(p @ c, np.eye(12), atol=1e-9)
    np.testing.assert_allclose(p, p.T, atol=0)
    np.testing.assert_allclose(p, np.linalg.inv(c), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
    "cov",
    [
        np.array([[1.0, 1.0], [1.0, 1.0]]),
        np.diag([1.0, 0.0, 2.0]),
        np.zeros((3, 3)),
    ],
    ids=["rank1", "zero-variance", "all-zero"],
)
def test_precision_singular_falls_back_to_pinv(cov):
    p = precision_from_covariance(cov)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p, np.linalg.pinv(cov), atol=1e-12)
    np.testing.assert_allclose(cov @ p @ cov, cov, atol=1e-12)


def test_precision_rank_deficient_sample_covariance():
    # 4 samples in 10 dimensions: rank 3, Cholesky must not return a huge pseudo-inverse
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 10))
    c = empirical_covariance(x)
    p = precision_from_covariance(c)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(c @ p @ c, c, atol=1e-8)
    np.testing.assert_allclose(p @ c @ p, p, atol=1e-6)


def test_mahalanobis_sq_matches_direct():
    rng = np.random.default_rng(4)
    c = random_spd(rng, 6)
    inv = np.linalg.inv(c)
    e = rng.standard_normal((25, 6))
    ours = mahalanobis_sq(e, precision_from_covariance(c))
    direct = np.array([row @ inv @ row for row in e])
    assert ours.shape == (25,)
    np.testing.assert_allclose(ours, direct, rtol=1e-9)
    # same as scipy's distance, squared
    assert ours[0] == pytest.approx(scipy.spatial.distance.mahalanobis(e[0], np.zeros(6), inv) ** 2)
    # one vector gives a scalar
    assert np.ndim(mahalanobis_sq(e[3], inv)) == 0
    assert float(mahalanobis_sq(e[3], inv)) == pytest.approx(direct[3])
    # identity precision: squared Euclidean norm
    np.testing.assert_allclose(mahalanobis_sq(e, np.eye(6)), (e**2).sum(axis=1))


def test_selective_mahalanobis_is_min_over_domains():
    rng = np.random.default_rng(6)
    d = 5
    # source: large variance in dim 0; target: large variance in dim 1
    c_src = np.diag([25.0, 0.1, 1.0, 1.0, 1.0])
    c_tgt = np.diag([0.1, 25.0, 1.0, 1.0, 1.0])
    e = rng.standard_normal((40, d))
    e[:20, 0] *= 5.0  # look like source
    e[20:, 1] *= 5.0  # look like target
    precisions = {"source": precision_from_covariance(c_src), "target": precision_from_covariance(c_tgt)}
    ours = selective_mahalanobis(e, precisions)
    s = np.array([row @ np.linalg.inv(c_src) @ row for row in e])
    t = np.array([row @ np.linalg.inv(c_tgt) @ row for row in e])
    np.testing.assert_allclose(ours, np.minimum(s, t), rtol=1e-9)
    # both domains are actually selected for some clips
    assert (s < t).sum() > 10 and (t < s).sum() > 10
    # a single domain reduces to plain Mahalanobis
    np.testing.assert_allclose(
        selective_mahalanobis(e, {"source": precisions["source"]}), s, rtol=1e-9
    )


# ---------------------------------------------------------------- Gamma threshold


def test_gamma_threshold_recovers_true_quantile():
    dist = scipy.stats.gamma(a=3, scale=2)
    scores = dist.rvs(size=20000, random_state=np.random.default_rng(0))
    thr = gamma_threshold(scores, 0.9)
    assert isinstance(thr, float)
    assert thr == pytest.approx(dist.ppf(0.9), rel=0.03)
    assert gamma_threshold(scores, 0.99) == pytest.approx(dist.ppf(0.99), rel=0.03)


def test_gamma_threshold_quantile_order():
    scores = scipy.stats.gamma(a=2, scale=1.5).rvs(size=500, random_state=np.random.default_rng(1))
    t50, t90 = gamma_threshold(scores, 0.5), gamma_threshold(scores, 0.9)
    assert t50 < t90
    # a threshold that flags roughly the top 10 % of normal scores
    assert 0.05 < np.mean(scores > t90) < 0.15


@pytest.mark.parametrize("values", [[5.0], [1.0, 3.0]])
def test_gamma_threshold_empirical_fallback_for_few_values(values, caplog):
    with caplog.at_level("WARNING"):
        thr = gamma_threshold(np.array(values), 0.9)
    assert thr == pytest.approx(float(np.quantile(values, 0.9)))
    assert "empirical quantile" in caplog.text
    if len(values) == 2:
        assert thr == pytest.approx(2.8)


def test_gamma_threshold_constant_scores():
    assert gamma_threshold(np.full(50, 2.5), 0.9) == 2.5
    assert gamma_threshold(np.full((4, 5), 0.0), 0.5) == 0.0  # any shape, raveled


@pytest.mark.parametrize(
    "scores, quantile, match",
    [
        ([1.0, np.nan, 2.0, 3.0], 0.9, "finite"),
        ([1.0, np.inf, 2.0, 3.0], 0.9, "finite"),
        ([], 0.9, "non-empty"),
        ([1.0, 2.0, 3.0], 0.0, "quantile"),
        ([1.0, 2.0, 3.0], 1.0, "quantile"),
        ([1.0, 2.0, 3.0], 1.5, "quantile"),
        ([1.0, 2.0, 3.0], -0.1, "quantile"),
    ],
)
def test_gamma_threshold_errors(scores, quantile, match):
    with pytest.raises(ValueError, match=match):
        gamma_threshold(np.array(scores, dtype=float), quantile)
