"""The DCASE2023 baseline AE: architecture, training, both score modes, thresholds, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.metrics import roc_auc_score

from stetho.datasets.clip import Clip
from stetho.errors import NotFittedError, StethoError
from stetho.models import AEDetector, Detector, get_model
from stetho.models.ae import AENet
from stetho.models.training import FrameVectors


def test_aenet_architecture_matches_the_baseline():
    net = AENet()
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (640, 128), (128, 128), (128, 128), (128, 128), (128, 8),
        (8, 128), (128, 128), (128, 128), (128, 128), (128, 640),
    ]
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(bns) == 9  # every Linear but the last, bottleneck included
    assert all(b.momentum == 0.01 and b.eps == 1e-3 for b in bns)
    assert sum(isinstance(m, torch.nn.ReLU) for m in net.modules()) == 9
    assert isinstance(list(net.decoder)[-1], torch.nn.Linear)  # linear output
    # Linear weights+biases 265,832 (by hand: 640·128+128 + 3·(128·128+128) + 128·8+8 + 8·128+128
    # + 3·(128·128+128) + 128·640+640) plus BatchNorm γ, β: 2·(8·128 + 8) = 2,064.
    assert sum(p.numel() for p in net.parameters()) == 267_928
    assert net(torch.randn(4, 640)).shape == (4, 640)


def _clip(i: int, split: str = "train", domain: str = "source", label: int = 0) -> Clip:
    return Clip(Path(f"/nowhere/{split}_{domain}_{label}_{i:04d}.wav"), "fan", "00", split, domain, label)


def _logmels(rng, n, anomalous=False, shift=0.0, frames=60):
    base = np.linspace(-40, -10, 128)
    out = []
    for _ in range(n):
        m = base + shift + rng.normal(scale=1.0, size=(frames, 128))
        if anomalous:
            m[:, 60:70] += 4.0  # a steady tonal bump: the clip-mean error sees it
        out.append(m.astype(np.float32))
    return out


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    train = _logmels(rng, 30) + _logmels(rng, 4, shift=3.0)
    clips = [_clip(i) for i in range(30)] + [_clip(i, domain="target") for i in range(4)]
    # threshold="official": every clip trains and the thresholds are the baseline's in-sample fit
    det = AEDetector(epochs=20, batch_size=64, device="cpu", seed=1, threshold="official").fit(clips, train)
    test_feats = _logmels(rng, 15) + _logmels(rng, 15, anomalous=True)
    test_clips = [_clip(i, "test", label=0) for i in range(15)] + [_clip(i, "test", label=1) for i in range(15)]
    return det, clips, train, test_clips, test_feats


def test_fit_learns_and_scores_separate_anomalies(fitted):
    det, _, _, test_clips, test_feats = fitted
    hist = det.history_
    assert len(hist["train_loss"]) == 20 and hist["train_loss"][-1] < hist["train_loss"][0]
    assert all(np.isfinite(hist["val_loss"]))
    y = [c.label for c in test_clips]
    scores = det.score_all(test_clips, test_feats)
    assert set(scores) == {"mse", "mahalanobis"}
    for mode, s in scores.items():
        assert s.shape == (30,)
        assert roc_auc_score(y, s) > 0.9, mode


def test_mse_score_is_the_mean_squared_reconstruction_error(fitted):
    det, _, _, test_clips, test_feats = fitted
    from stetho.features import stack_frames

    x = torch.from_numpy(stack_frames(test_feats[0], 5).copy())
    with torch.no_grad():
        direct = float(((det.net_(x) - x) ** 2).mean())
    assert det.score(test_clips[:1], test_feats[:1], mode="mse")[0] == pytest.approx(direct, rel=1e-5)


def test_mahalanobis_score_equals_a_direct_numpy_computation(fitted):
    det, _, _, test_clips, test_feats = fitted
    from stetho.features import stack_frames

    got = det.score(test_clips[:3], test_feats[:3], mode="mahalanobis")
    for k in range(3):
        x = torch.from_numpy(stack_frames(test_feats[k], 5).copy())
        with torch.no_grad():
            err = (x - det.net_(x)).numpy().astype(np.float64)
        e_bar = err.reshape(-1, 5, 128).mean(axis=(0, 1))  # clip-mean 128-d error block
        per_domain = [e_bar @ np.linalg.inv(det.covariances_[d]) @ e_bar for d in ("source", "target")]
        assert got[k] == pytest.approx(min(per_domain), rel=1e-6)


def test_covariances_are_ledoit_wolf_of_training_error_blocks_per_domain(fitted):
    det, clips, train, _, _ = fitted
    from sklearn.covariance import ledoit_wolf

    from stetho.features import stack_frames

    tgt = [f for c, f in zip(clips, train) if c.domain == "target"]
    x = torch.from_numpy(np.concatenate([stack_frames(f, 5) for f in tgt]))
    with torch.no_grad():
        blocks = (x - det.net_(x)).numpy().astype(np.float64).reshape(-1, 128)
    cov, shrink = ledoit_wolf(blocks)
    np.testing.assert_allclose(det.covariances_["target"], cov, rtol=1e-4, atol=1e-7)
    assert det.shrinkage_["target"] == pytest.approx(shrink, rel=1e-4)
    assert not np.allclose(det.covariances_["source"], det.covariances_["target"])


def test_thresholds_are_gamma_quantiles_of_training_clip_scores(fitted):
    det, clips, train, _, _ = fitted
    for mode in ("mse", "mahalanobis"):
        s = det.score(clips, train, mode=mode)
        np.testing.assert_allclose(s, det.decision_scores_[mode], rtol=1e-6)
        a, loc, scale = scipy.stats.gamma.fit(s)
        thr = det.thresholds_[mode]["fan"]
        assert thr == pytest.approx(scipy.stats.gamma.ppf(0.9, a, loc, scale), rel=1e-6)
        # About 10 % of normal training clips lie above a 0.9 quantile.
        assert 0.0 <= np.mean(s > thr) <= 0.3
    assert det.threshold_ == det.thresholds_["mahalanobis"] == {"fan": det.threshold_for()}  # default mode
    assert det.calibration_["file"] == [str(c.path) for c in clips]  # in-sample: every clip
    pred = det.predict(clips, train, mode="mse")
    np.testing.assert_array_equal(pred, (det.decision_scores_["mse"] > det.thresholds_["mse"]["fan"]).astype(int))


def test_save_load_round_trip(fitted, tmp_path):
    det, _, _, test_clips, test_feats = fitted
    det.save(tmp_path / "fan.pt")
    back = Detector.load(tmp_path / "fan.pt")
    assert isinstance(back, AEDetector) and back.get_params() == det.get_params()
    before, after = det.score_all(test_clips, test_feats), back.score_all(test_clips, test_feats)
    for mode in before:
        np.testing.assert_allclose(before[mode], after[mode], rtol=1e-6)
    assert back.thresholds_ == det.thresholds_
    assert AEDetector.load(tmp_path / "fan.pt").history_ == det.history_


def test_load_rejects_files_that_are_not_stetho_models(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(StethoError, match="x.pt: not a stetho model file"):
        Detector.load(bad)
    with pytest.raises(StethoError, match="does not exist"):
        Detector.load(tmp_path / "missing.pt")


def test_training_is_deterministic_for_a_seed():
    rng = np.random.default_rng(3)
    feats = _logmels(rng, 6)
    clips = [_clip(i) for i in range(6)]
    a = AEDetector(epochs=2, seed=5, device="cpu").fit(clips, feats)
    b = AEDetector(epochs=2, seed=5, device="cpu").fit(clips, feats)
    c = AEDetector(epochs=2, seed=6, device="cpu").fit(clips, feats)
    assert a.history_ == b.history_
    np.testing.assert_array_equal(a.decision_scores_["mse"], b.decision_scores_["mse"])
    assert a.history_ != c.history_


def test_precise_bn_removes_the_lag_of_batchnorm_running_statistics(fitted):
    # 20 epochs of ~30 steps: BatchNorm running averages (momentum 0.01) still trail the weights,
    # so eval-mode reconstructions of the training data itself are poor unless recomputed.
    det, clips, train, _, _ = fitted
    lagging = AEDetector(epochs=20, batch_size=64, device="cpu", seed=1, precise_bn=False,
                         threshold="official").fit(clips, train)
    assert lagging.history_ == det.history_  # identical training ...
    final_train_loss = det.history_["train_loss"][-1]
    # ... but only recomputed statistics reproduce the training loss in eval mode.
    assert det.decision_scores_["mse"].mean() < 2 * final_train_loss
    assert lagging.decision_scores_["mse"].mean() > 3 * det.decision_scores_["mse"].mean()


def test_no_target_clips_uses_the_source_covariance():
    rng = np.random.default_rng(4)
    feats = _logmels(rng, 5)
    det = AEDetector(epochs=1, device="cpu").fit([_clip(i) for i in range(5)], feats)
    np.testing.assert_array_equal(det.covariances_["source"], det.covariances_["target"])


def test_unfitted_detector_and_bad_modes_raise():
    det = AEDetector()
    with pytest.raises(NotFittedError, match="not fitted"):
        det.score([_clip(0)], [np.zeros((10, 128), np.float32)])
    with pytest.raises(StethoError, match="ae: params.score_mode='l1' is not allowed; expected one of mahalanobis, mse"):
        AEDetector(score_mode="l1").fit([_clip(0)], [np.zeros((10, 128), np.float32)])
    assert get_model("ae") is AEDetector
    with pytest.raises(StethoError, match="unknown model 'vae'; available: ae"):
        get_model("vae")


def test_frame_vectors_gather_the_dcase_stacking_without_copies():
    a = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    b = 100 + np.arange(6 * 3, dtype=np.float32).reshape(6, 3)
    fv = FrameVectors([a, b], n_frames=5)
    assert len(fv) == 3 + 2 and fv.dim == 15
    assert fv.frames.dtype == torch.float32 and fv.frames.shape == (13, 3)
    np.testing.assert_array_equal(fv.gather(torch.tensor([0]))[0].numpy(), a[0:5].reshape(-1))
    np.testing.assert_array_equal(fv.gather(torch.tensor([4]))[0].numpy(), b[1:6].reshape(-1))
    assert fv.clip_index.tolist() == [0, 0, 0, 1, 1]
    sizes = [len(x) for x, _ in fv.batches(torch.arange(5), 2, min_batch=2)]
    assert sizes == [2, 2]  # a trailing batch of one is dropped (BatchNorm)
