"""The clip-statistics baselines (``--model stats``): vectors and scores against direct numpy
computations, persistence, and end-to-end AUC on toy data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf
from sklearn.mixture import GaussianMixture

from stetho.datasets.clip import Clip
from stetho.errors import ConfigError, StethoError
from stetho.models import Detector, get_model
from stetho.models.stats import StatsDetector, clip_statistics


def _clips(n: int, machine: str = "fan", domain: str = "source", start: int = 0) -> list[Clip]:
    return [Clip(Path(f"{machine}_{domain}_{i:03d}.wav"), machine, "00", "train", domain)
            for i in range(start, start + n)]


def _logmels(n: int, seed: int, shift: float = 0.0, frames: int = 40, mels: int = 8) -> list[np.ndarray]:
    g = np.random.default_rng(seed)
    base = np.linspace(-60, -20, mels)
    return [base + shift + g.normal(0, 1, (frames, mels)) * (1 + 0.1 * g.random(mels)) for _ in range(n)]


def test_clip_statistics_are_per_band_means_and_stds_and_of_the_time_derivative():
    x = np.array([[0.0, 10.0], [2.0, 10.0], [6.0, 13.0]])
    np.testing.assert_allclose(clip_statistics(x), [8 / 3, 11.0, np.std([0, 2, 6]), np.std([10, 10, 13])])
    d = np.array([[2.0, 0.0], [3.0, 1.5], [4.0, 3.0]])  # np.gradient along time, by hand
    want = [8 / 3, 11.0, np.std([0, 2, 6]), np.std([10, 10, 13]), 3.0, 1.5, np.std(d[:, 0]), np.std(d[:, 1])]
    np.testing.assert_allclose(clip_statistics(x, "mean_std_delta"), want)
    with pytest.raises(ValueError, match="frames >= 2"):
        clip_statistics(np.zeros((1, 4)))


def test_scores_equal_direct_computations_per_backend():
    train, test = _logmels(30, 0), _logmels(5, 1, shift=0.5)
    det = StatsDetector(n_mels=8, k=2, threshold="official").fit(_clips(30), train)
    v = np.stack([clip_statistics(f) for f in train])
    mean, std = v.mean(0), v.std(0)
    z = (v - mean) / std
    zt = (np.stack([clip_statistics(f) for f in test]) - mean) / std
    scores = det.score_all(_clips(5, start=100), test)
    # knn: mean Euclidean distance to the 2 nearest standardised training vectors
    d = np.linalg.norm(zt[:, None, :] - z[None, :, :], axis=2)
    np.testing.assert_allclose(scores["knn"], np.sort(d, axis=1)[:, :2].mean(1), rtol=1e-9)
    # mahalanobis: squared distance with the Ledoit-Wolf covariance of the standardised vectors
    diff = zt - z.mean(0)
    precision = np.linalg.inv(LedoitWolf().fit(z).covariance_)
    np.testing.assert_allclose(scores["mahalanobis"], np.einsum("ij,jk,ik->i", diff, precision, diff), rtol=1e-6)
    # density: nearest-neighbour distance over that neighbour's own nearest-neighbour distance
    dt = np.linalg.norm(z[:, None, :] - z[None, :, :], axis=2)
    np.fill_diagonal(dt, np.inf)
    nn = d.argmin(1)
    np.testing.assert_allclose(scores["density"], d.min(1) / dt.min(1)[nn], rtol=1e-6)
    # gmm: negative log-likelihood under a 2-component diagonal mixture of the standardised vectors
    gm = GaussianMixture(n_components=2, covariance_type="diag", reg_covar=1e-6, random_state=det.seed).fit(z)
    np.testing.assert_allclose(scores["gmm"], -gm.score_samples(zt), rtol=1e-9)
    one = StatsDetector(n_mels=8, gmm_components=1, threshold="official").fit(_clips(30), train)
    mu, var = z.mean(0), z.var(0) + 1e-6  # one diagonal Gaussian, by hand
    nll = 0.5 * (np.log(2 * np.pi * var).sum() + (((zt - mu) ** 2) / var).sum(1))
    np.testing.assert_allclose(one.score(_clips(5, start=100), test, mode="gmm"), nll, rtol=1e-8)
    # score_mode="gmm": the default of score(), threshold_ and predict()
    by_gmm = StatsDetector(n_mels=8, score_mode="gmm", threshold="official").fit(_clips(30), train)
    np.testing.assert_allclose(by_gmm.score(_clips(5, start=100), test), -gm.score_samples(zt), rtol=1e-9)
    assert by_gmm.threshold_ == {"fan": by_gmm.thresholds_["gmm"]["fan"]}
    assert StatsDetector().score_mode == "density"


def test_registered_saves_loads_and_separates_shifted_clips(tmp_path):
    assert get_model("stats") is StatsDetector
    train = _logmels(40, 2) + _logmels(6, 3, shift=0.2)
    clips = _clips(40) + _clips(6, domain="target")
    det = StatsDetector(n_mels=8, statistics="mean_std_delta").fit(clips, train)
    normal, anomalous = _logmels(20, 4), _logmels(20, 5, shift=1.5)
    test = _clips(40, start=200)
    s = det.score_all(test, normal + anomalous)
    from sklearn.metrics import roc_auc_score

    labels = [0] * 20 + [1] * 20
    for mode in det.score_modes:
        assert roc_auc_score(labels, s[mode]) > 0.9, mode
    det.save(tmp_path / "stats.pt")
    back = Detector.load(tmp_path / "stats.pt")
    again = back.score_all(test, normal + anomalous)
    for mode in det.score_modes:
        np.testing.assert_array_equal(again[mode], s[mode])
    assert back.thresholds_ == det.thresholds_


def test_the_gmm_is_stored_in_the_model_file_not_refitted_on_load(tmp_path, monkeypatch):
    train, test = _logmels(30, 6) + _logmels(4, 7, shift=0.2), _logmels(6, 8)
    clips = _clips(30) + _clips(4, domain="target")
    det = StatsDetector(n_mels=8, gmm_components=3, calibration="holdout").fit(clips, train)
    assert det.backends_["fan"]["gmm"].n_components_ == 2  # 27 training clips after the held-out ones
    det.save(tmp_path / "stats.pt")
    blob = torch.load(tmp_path / "stats.pt", weights_only=True)
    assert blob["state"]["gmm"]["fan"]["means"].shape == (2, 16)

    def no_refit(*args, **kwargs):
        raise AssertionError("the GMM was refitted on load")

    monkeypatch.setattr(GaussianMixture, "fit", no_refit)
    back = Detector.load(tmp_path / "stats.pt")
    np.testing.assert_array_equal(back.score(_clips(6, start=300), test, mode="gmm"),
                                  det.score(_clips(6, start=300), test, mode="gmm"))


def test_bad_parameters_and_unknown_machines_are_clear_errors():
    with pytest.raises(ConfigError, match="statistics"):
        StatsDetector(statistics="median").check_params()
    with pytest.raises(ConfigError, match="gmm_components"):
        StatsDetector(gmm_components=0).check_params()
    with pytest.raises(ConfigError, match="score_mode"):
        StatsDetector(score_mode="lof").check_params()
    det = StatsDetector(n_mels=8, threshold="official").fit(_clips(10), _logmels(10, 0))
    with pytest.raises(StethoError, match="no training clips of machine type\\(s\\) valve; trained on fan"):
        det.score(_clips(2, machine="valve"), _logmels(2, 1))


def test_thresholds_are_cross_fitted_by_default_and_every_clip_stays_in_the_memory():
    train = _logmels(30, 6) + _logmels(4, 7, shift=0.2)
    clips = _clips(30) + _clips(4, domain="target")
    assert StatsDetector.param_defaults()["calibration"] == "cv" and StatsDetector().calibration == "cv"
    det = StatsDetector(n_mels=8, gmm_components=3).fit(clips, train)
    assert det.train_vectors_.shape[0] == 34 and det.backends_["fan"]["gmm"].n_components_ == 3
    assert all(len(s) == 34 and np.isfinite(s).all() for s in det.decision_scores_.values())
    held = StatsDetector(n_mels=8, calibration="holdout").fit(clips, train)
    assert held.train_vectors_.shape[0] < 34 and len(held.decision_scores_["knn"]) == 34 - held.train_vectors_.shape[0]
