"""BiGAN / EGBAD (stetho.models.bigan): network shapes, EMA arithmetic, the score formula by hand,
the normalisation round trip, training stability and mode collapse, the detector contract
(calibration on held-out clips, declared parameters, save/load), resuming a killed training."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stetho.datasets.clip import Clip
from stetho.errors import ConfigError, NotFittedError, StethoError
import stetho.models.bigan.detector as bigan_detector
from stetho.models import BiGANDetector, Detector, get_model
from stetho.models.base import FitContext
from stetho.models.bigan import (
    BiGAN, Discriminator, Encoder, Generator, anomaly_scores, denormalise, ema_update, generator_diversity,
    norm_stats, normalise,
)
from stetho.models.training import fork_global_rngs

#: A tiny BiGAN on 16-frame × 32-mel patches: the mechanics of the full one, in milliseconds.
TINY = dict(n_mels=32, patch_frames=16, patch_hop=8, latent=8, enc_channels=(4, 8, 8), gen_hidden=32,
            gen_channels=(8, 4), dis_channels=4, dis_z_hidden=16, dis_feature=32, batch_size=16, lr=1e-4,
            device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks: fastest on one thread


def _clip(i: int, split: str = "train", label: int = 0) -> Clip:
    return Clip(Path(f"/nowhere/{split}_{label}_{i:04d}.wav"), "fan", "00", split, "source", label)


def _logmels(rng, n, frames=40, mels=32, anomalous=False):
    base = np.linspace(-40, -10, mels)
    out = []
    for _ in range(n):
        m = base + rng.normal(scale=2.0, size=(frames, mels))
        if anomalous:
            m[:, 10:14] += 12.0
        out.append(m.astype(np.float32))
    return out


# ---------------------------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------------------------


def test_shapes_through_e_g_d_for_the_64x128_patch():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 64, 128) * 2 - 1
    enc, gen, dis = Encoder(), Generator(), Discriminator()
    z = enc(x)
    assert z.shape == (2, 200)
    convs = [(m.out_channels, m.kernel_size, m.stride) for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [(32, (3, 3), (1, 1)), (64, (3, 3), (2, 2)), (128, (3, 3), (2, 2))]
    assert enc.dense.in_features == 128 * 16 * 32
    gen.eval()
    out = gen(torch.randn(2, 200))
    assert out.shape == (2, 1, 64, 128)
    assert out.abs().max() <= 1.0  # tanh
    assert [m.out_features for m in gen.dense if isinstance(m, torch.nn.Linear)] == [1024, 16 * 32 * 128]
    deconvs = [(m.out_channels, m.kernel_size, m.stride) for m in gen.modules()
               if isinstance(m, torch.nn.ConvTranspose2d)]
    assert deconvs == [(64, (4, 4), (2, 2)), (1, (4, 4), (2, 2))]
    logit, f = dis(z, x)
    assert logit.shape == (2,) and f.shape == (2, 1024)
    assert dis.joint[0].in_features == 64 * 16 * 32 + 512
    assert [m.p for m in dis.modules() if isinstance(m, torch.nn.Dropout)] == [0.5] * 4
    # init N(0, 0.02): the big dense weights have that spread, biases are zero
    w = dis.joint[0].weight.detach()
    assert float(w.std()) == pytest.approx(0.02, rel=0.01)
    assert float(w.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(dis.joint[0].bias.detach().abs().max()) == 0.0


def test_patch_sides_must_be_multiples_of_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        Encoder(frames=62)


def test_ema_update_arithmetic_by_hand():
    ema, live = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    bn_ema, bn_live = torch.nn.BatchNorm1d(1), torch.nn.BatchNorm1d(1)
    with torch.no_grad():
        ema.weight.copy_(torch.tensor([[1.0, 2.0]]))
        ema.bias.fill_(0.0)
        live.weight.copy_(torch.tensor([[3.0, -2.0]]))
        live.bias.fill_(10.0)
        bn_live.running_mean.fill_(5.0)
    ema_update(ema, live, 0.9)
    # 0.9·1 + 0.1·3 = 1.2; 0.9·2 + 0.1·(−2) = 1.6; 0.9·0 + 0.1·10 = 1
    assert ema.weight[0].tolist() == pytest.approx([1.2, 1.6])
    assert ema.bias.tolist() == pytest.approx([1.0])
    ema_update(ema, live, 0.5)  # 0.5·1.2 + 0.5·3 = 2.1; 0.5·1.6 − 1 = −0.2; 0.5 + 5 = 5.5
    assert ema.weight[0].tolist() == pytest.approx([2.1, -0.2])
    assert ema.bias.tolist() == pytest.approx([5.5])
    ema_update(bn_ema, bn_live, 0.9)  # buffers are copied, not averaged
    assert bn_ema.running_mean.tolist() == [5.0]


class _Fixed(torch.nn.Module):
    """E(x) = 0, G(z) = 0, D(z, x) = (logit 0.5, f = 2·x): every score term by hand."""

    latent = 1

    def __init__(self):
        super().__init__()
        self.encoder = lambda x: torch.zeros(len(x), 1)
        self.generator = lambda z: torch.zeros(len(z), 1, 2, 2)
        self.discriminator = lambda z, x: (torch.full((len(x),), 0.5), 2 * x.flatten(1))


def test_score_formula_by_hand():
    x = torch.tensor([[[[1.0, -2.0], [0.5, 0.0]]], [[[0.0, 0.0], [0.0, 3.0]]]])
    s = anomaly_scores(_Fixed(), x, weight=0.1, degree=1)
    # residual ‖x − 0‖₁ = 3.5 and 3; features ‖2x − 0‖₁ = 7 and 6; BCE(0.5, 1) = ln(1 + e^−0.5)
    ce = math.log1p(math.exp(-0.5))
    assert s["fm"].tolist() == pytest.approx([0.9 * 3.5 + 0.1 * 7, 0.9 * 3 + 0.1 * 6])
    assert s["cross-e"].tolist() == pytest.approx([0.9 * 3.5 + 0.1 * ce, 0.9 * 3 + 0.1 * ce])
    s2 = anomaly_scores(_Fixed(), x, weight=0.5, degree=2)
    r = math.sqrt(1 + 4 + 0.25)
    assert s2["fm"][0].item() == pytest.approx(0.5 * r + 0.5 * 2 * r)


def test_score_formula_matches_a_direct_computation_on_a_real_network():
    torch.manual_seed(1)
    net = BiGAN(frames=8, mels=8, latent=3, enc_channels=(2, 2, 2), gen_hidden=4, gen_channels=(2, 2),
                dis_channels=2, dis_z_hidden=4, dis_feature=5).eval()
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    s = anomaly_scores(net, x, weight=0.1, degree=1)
    with torch.no_grad():
        z = net.encoder(x)
        rec = net.generator(z)
        logit, f1 = net.discriminator(z, x)
        _, f2 = net.discriminator(z, rec)
    xn, rn, f1n, f2n, ln = (t.numpy().astype(np.float64) for t in (x, rec, f1, f2, logit))
    residual = np.abs(xn - rn).reshape(3, -1).sum(1)
    fm = np.abs(f1n - f2n).sum(1)
    bce = -np.log(1 / (1 + np.exp(-ln)))
    np.testing.assert_allclose(s["fm"].detach().numpy(), 0.9 * residual + 0.1 * fm, rtol=1e-5)
    np.testing.assert_allclose(s["cross-e"].detach().numpy(), 0.9 * residual + 0.1 * bce, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# normalisation
# ---------------------------------------------------------------------------------------------


def test_normalisation_round_trip_and_statistics():
    rng = np.random.default_rng(0)
    mels = [rng.normal(-30, 5, size=(50, 8)).astype(np.float32) + np.arange(8) for _ in range(3)]
    mean, std = norm_stats(mels)
    allf = np.concatenate(mels)
    np.testing.assert_allclose(mean, allf.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, allf.std(0), rtol=1e-4)  # population std, per mel bin
    x = mean + std * rng.uniform(-2.9, 2.9, size=(20, 8)).astype(np.float32)  # inside ±3σ
    n = normalise(x, mean, std, 3.0)
    assert n.min() >= -1 and n.max() <= 1
    np.testing.assert_allclose(denormalise(n, mean, std, 3.0), x, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(normalise(mean[None], mean, std), 0.0, atol=1e-6)
    np.testing.assert_allclose(normalise(mean + 1.5 * std, mean, std, 3.0), 0.5, atol=1e-6)
    # beyond ±3σ: clipped to the generator's range, back as mean ± 3σ
    far = normalise(mean + 10 * std, mean, std, 3.0)
    np.testing.assert_allclose(far, 1.0)
    np.testing.assert_allclose(denormalise(far, mean, std, 3.0), mean + 3 * std, rtol=1e-5)
    const = norm_stats([np.full((4, 2), -7.0, np.float32)])
    assert const[1].tolist() == [1.0, 1.0]  # a constant bin maps to 0, not to NaN


# ---------------------------------------------------------------------------------------------
# the detector
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    train = [_clip(i) for i in range(12)]
    # threshold="official": every clip trains (the networks of the measurements below) and the
    # thresholds are the Gamma fit of in-sample scores
    det = BiGANDetector(epochs=20, seed=3, threshold="official", **TINY).fit(train, _logmels(rng, 12))
    return det, train, rng


@pytest.fixture(scope="module")
def calibrated():
    """The default fit (held-out calibration), with the clips ``_fit`` received."""
    rng = np.random.default_rng(5)
    clips, feats = [_clip(i) for i in range(15)], _logmels(rng, 15)
    seen: list[list[str]] = []
    real_fit = BiGANDetector._fit

    def spy(self, clips, feats, context):
        seen.append([str(c.path) for c in clips])
        return real_fit(self, clips, feats, context)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BiGANDetector, "_fit", spy)
        det = BiGANDetector(epochs=10, seed=3, **TINY).fit(clips, feats)
    return det, clips, feats, seen


def test_registered_and_paper_defaults():
    assert get_model("bigan") is BiGANDetector
    d = BiGANDetector()
    assert (d.n_mels, d.patch_frames, d.patch_hop, d.latent) == (128, 64, 8, 200)
    assert (d.lr, d.beta1, d.ema_decay, d.weight, d.degree, d.score_mode) == (1e-5, 0.5, 0.999, 0.1, 1.0, "fm")
    assert d.patch_reduce == "mean" and BiGANDetector.score_modes == ("fm", "cross-e")
    assert not BiGANDetector.joint
    with pytest.raises(NotFittedError):
        d.score([_clip(0)], [np.zeros((64, 128), np.float32)])


@pytest.mark.parametrize("bad, match", [
    (dict(score_mode="mse"), "score_mode='mse' is not allowed; expected one of fm, cross-e"),
    (dict(patch_reduce="median"), "patch_reduce='median' is not allowed; expected one of mean, max"),
    (dict(patch_frames=62), "patch_frames=62 is not allowed; expected a positive multiple of 4"),
    (dict(n_mels=30), "n_mels=30 is not allowed; expected a positive multiple of 4"),
    (dict(weight=1.5), r"weight=1.5 is not allowed; expected a number in \[0, 1\]"),
    (dict(degree=0), "degree=0 is not allowed; expected a number > 0"),
    (dict(ema_decay=1.0), r"ema_decay=1.0 is not allowed; expected a number in \[0, 1\)"),
    (dict(batch_size=1), "batch_size=1 is not allowed; expected an integer >= 2"),
    (dict(epochs=0), "epochs=0 is not allowed; expected an integer >= 1"),
    (dict(enc_channels=(4, 8)), "enc_channels=\\(4, 8\\) is not allowed; expected a list of 3-3 items"),
    (dict(checkpoint_every=-1), "checkpoint_every=-1 is not allowed; expected an integer >= 0"),
    (dict(calibration_split=0.7), "calibration_split=0.7 is not allowed"),
])
def test_bad_params_are_one_line_config_errors(bad, match):
    with pytest.raises(ConfigError, match="^bigan: params." + match) as err:
        BiGANDetector(**bad).check_params()
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=match):  # before any training
        BiGANDetector(**{**TINY, **bad}).fit([_clip(i) for i in range(4)], _logmels(np.random.default_rng(0), 4))


def test_every_parameter_is_declared_and_the_defaults_are_allowed():
    assert set(BiGANDetector.param_defaults()) <= set(BiGANDetector.parameter_constraints())
    assert "resume" not in BiGANDetector.param_defaults()  # resuming is automatic (the Trainer)
    assert "decision_quantile" in BiGANDetector.param_defaults()  # a common parameter now
    BiGANDetector().check_params()
    BiGANDetector(**TINY).check_params()
    with pytest.raises(TypeError, match="resume"):
        BiGANDetector(resume=True)


def test_training_is_stable_and_the_generator_is_not_collapsed(trained, caplog):
    det, _, _ = trained
    h = det.history_
    assert h["epoch"] == list(range(1, 21))
    for key in ("d_loss", "ge_loss", "train_loss"):
        assert len(h[key]) == 20 and np.isfinite(h[key]).all()
    np.testing.assert_allclose(h["train_loss"], np.add(h["d_loss"], h["ge_loss"]), rtol=1e-9)
    assert det.diversity_ > det.collapse_threshold
    assert det.histories() == {"": h}
    assert all(np.isfinite(s).all() and (s > 0).all() for s in det.decision_scores_.values())
    assert set(det.thresholds_) == {"fm", "cross-e"} and all(set(t) == {"fan"} for t in det.thresholds_.values())
    assert list(h) == ["epoch", "train_loss", "val_loss", "d_loss", "ge_loss"]


def test_no_nan_in_the_training_log_lines(caplog):
    # no validation loss: the per-epoch log lines must not show it as "nan"
    with caplog.at_level(logging.INFO, logger="stetho"):
        BiGANDetector(epochs=2, **TINY).fit([_clip(i) for i in range(4)], _logmels(np.random.default_rng(1), 4))
    lines = [r.getMessage() for r in caplog.records if "epoch" in r.getMessage()]
    assert lines and not any("nan" in line.lower() for line in lines), lines


def test_the_collapse_detector_fires_on_a_collapsed_generator_only(trained):
    det, _, rng = trained
    data = torch.from_numpy(np.stack([normalise(m[:16], det.mean_, det.std_) for m in _logmels(rng, 32)]))[:, None]
    g = torch.Generator().manual_seed(0)
    assert generator_diversity(det.net_, data, 32, g) == pytest.approx(det.diversity_, rel=0.5)
    assert generator_diversity(det.net_, data, 32, g) > det.collapse_threshold
    collapsed = BiGAN(**{k: v for k, v in dict(frames=16, mels=32, latent=8, enc_channels=(4, 8, 8), gen_hidden=32,
                                               gen_channels=(8, 4), dis_channels=4, dis_z_hidden=16,
                                               dis_feature=32).items()})
    collapsed.load_state_dict(det.net_.state_dict())
    with torch.no_grad():  # the last layer ignores its input: G(z) = tanh(bias) for every z
        collapsed.generator.deconvs[-2].weight.zero_()
        collapsed.generator.deconvs[-2].bias.fill_(0.3)
    assert generator_diversity(collapsed, data, 32, g) < 1e-6


def test_the_fit_warns_of_collapse(caplog):
    rng = np.random.default_rng(1)
    det = BiGANDetector(epochs=1, collapse_threshold=1e9, **TINY)
    with caplog.at_level(logging.WARNING, logger="stetho.models.bigan.detector"):
        det.fit([_clip(i) for i in range(4)], _logmels(rng, 4))
    assert "collapsed" in caplog.text


def test_scoring_uses_the_ema_weights_not_the_live_ones(monkeypatch):
    """The stored network is the EMA of the live weights (recomputed here from the initial weights
    and the live weights after every step), and the scores are that network's, not the last-step
    live network's."""
    steps = []  # (decay, live state after the step) for every EMA update
    real_update = bigan_detector.ema_update

    def spy(ema, live, decay):
        steps.append((decay, {k: v.detach().clone() for k, v in live.state_dict().items()}))
        real_update(ema, live, decay)

    monkeypatch.setattr(bigan_detector, "ema_update", spy)
    rng = np.random.default_rng(4)
    clips, feats = [_clip(i) for i in range(12)], _logmels(rng, 12)  # 48 patches: 3 batches of 16
    det = BiGANDetector(epochs=10, seed=7, threshold="official", **{**TINY, "lr": 1e-3}).fit(clips, feats)
    assert [d for d, _ in steps] == pytest.approx([(1 + t) / (10 + t) for t in range(30)])  # warm-up decays
    with fork_global_rngs(7):  # the Trainer seeds the global RNGs so for the networks' initialisation
        expected = {k: v.clone() for k, v in det._new_net().state_dict().items()}  # the initial weights
    params = {k for k, _ in det.net_.named_parameters()}
    for decay, live in steps:
        for k in params:
            expected[k] = decay * expected[k] + (1 - decay) * live[k]
    last = steps[-1][1]
    expected.update({k: v for k, v in last.items() if k not in params})  # BatchNorm statistics: live
    got = det.net_.state_dict()
    for k in params:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-7)
    gap = max(float((got[k] - last[k]).abs().max()) for k in params)
    assert gap > 1e-3  # EMA and live weights really differ (measured 0.008)

    test_clips, test = [_clip(i, "test") for i in range(4)], _logmels(rng, 4)  # 4 patches per clip
    x = det._view(det._patches(test_clips, test).gather(torch.arange(16)))

    def direct(state):  # clip scores computed here with a network holding ``state``
        net = det._new_net()
        net.load_state_dict(state)
        with torch.no_grad():
            s = anomaly_scores(net.eval(), x, det.weight, det.degree)
        return {m: v.double().view(4, 4).mean(1).numpy() for m, v in s.items()}

    with_ema, with_live = direct(expected), direct(last)
    scores = det.score_all(test_clips, test)
    for m in det.score_modes:
        np.testing.assert_allclose(scores[m], with_ema[m], rtol=1e-6)
        # live-network scores: fm measured 0.3-0.8 % away per clip, thousands of times the rtol above
        assert (np.abs(scores[m] - with_live[m]) / scores[m]).min() > 1e-3, m


def test_clip_scores_are_the_mean_or_max_of_patch_scores(trained):
    det, _, rng = trained
    feats = _logmels(rng, 3, frames=40)  # (40 − 16) // 8 + 1 = 4 patches each
    clips = [_clip(i, "test") for i in range(3)]
    patches = det._patches(clips, feats)
    assert len(patches) == 12
    per_patch, owner = det.patch_scores(patches)
    scores = det.score_all(clips, feats)
    for m in det.score_modes:
        expected = [float(per_patch[m][owner == i].mean()) for i in range(3)]
        np.testing.assert_allclose(scores[m], expected, rtol=1e-9)
    det_max = BiGANDetector(**{**det.get_params(), "patch_reduce": "max"})
    det_max._set_state(det._get_state())  # the networks only: scores, no thresholds
    np.testing.assert_allclose(det_max._score_all(clips, feats)["fm"],
                               [float(per_patch["fm"][owner == i].max()) for i in range(3)], rtol=1e-9)


def test_anomalies_score_higher_and_predict_uses_the_threshold(trained):
    det, _, rng = trained
    normal, anomalous = _logmels(rng, 6), _logmels(rng, 6, anomalous=True)
    clips = [_clip(i, "test") for i in range(12)]
    s = det.score(clips, normal + anomalous)
    assert s[6:].min() > s[:6].max()
    assert det.predict(clips, normal + anomalous).tolist() == (s > det.threshold_for()).astype(int).tolist()
    assert det.threshold_ == {"fan": det.threshold_for("fm", "fan")}


def test_short_clips_are_refused_naming_the_file(trained):
    det, _, _ = trained
    with pytest.raises(StethoError, match=r"test_0_0001.wav \(10 frames\)"):
        det.score([_clip(0, "test"), _clip(1, "test")], [np.zeros((16, 32), np.float32), np.zeros((10, 32), np.float32)])
    assert det.audio_options.min_frames == 16  # extraction refuses them too, naming the file


@pytest.mark.parametrize("which", ["trained", "calibrated"])
def test_save_load_round_trip_gives_identical_scores_and_thresholds(which, request, tmp_path):
    det = request.getfixturevalue(which)[0]
    rng = np.random.default_rng(8)
    feats = _logmels(rng, 3) + _logmels(rng, 3, anomalous=True)
    clips = [_clip(i, "test") for i in range(6)]
    det.save(tmp_path / "m.pt")
    back = Detector.load(tmp_path / "m.pt")
    assert isinstance(back, BiGANDetector) and back.get_params() == det.get_params()
    for m in det.score_modes:
        np.testing.assert_array_equal(back.score(clips, feats, m), det.score(clips, feats, m))
        np.testing.assert_array_equal(back.predict(clips, feats, m), det.predict(clips, feats, m))
        np.testing.assert_array_equal(back.decision_scores_[m], det.decision_scores_[m])
    np.testing.assert_array_equal(back.mean_, det.mean_)
    assert back.thresholds_ == det.thresholds_ and back.diversity_ == det.diversity_
    assert back.machines_ == det.machines_ == ["fan"] and back.calibration_ == det.calibration_
    assert back.history_.keys() == det.history_.keys()
    for k, v in det.history_.items():
        np.testing.assert_array_equal(back.history_[k], v)  # NaN val_loss included
    # format 2: the base saves thresholds, calibration scores and machine types, not the method
    assert not {"thresholds", "train_scores", "machines", "decision_scores"} & set(det._get_state())


# ---------------------------------------------------------------------------------------------
# calibration: thresholds from scores of clips the networks did not train on
# ---------------------------------------------------------------------------------------------


def test_the_default_fit_calibrates_on_held_out_clips_only(calibrated):
    det, clips, feats, seen = calibrated
    assert len(seen) == 1  # one training
    held, trained_on = det.calibration_["file"], seen[0]
    assert len(held) == 3 and len(trained_on) == 12  # 20 % of the 15 clips
    assert not set(held) & set(trained_on)  # out-of-sample
    assert sorted(held + trained_on) == sorted(str(c.path) for c in clips)
    idx = [i for i, c in enumerate(clips) if str(c.path) in held]
    assert [str(clips[i].path) for i in idx] == held
    scores = det.score_all([clips[i] for i in idx], [feats[i] for i in idx])
    for m in det.score_modes:
        np.testing.assert_array_equal(det.decision_scores_[m], scores[m])
    # the normalisation statistics are those of the training clips only
    mean, _ = norm_stats([feats[i] for i in range(len(clips)) if i not in idx])
    np.testing.assert_array_equal(det.mean_, mean)
    assert set(det.thresholds_) == set(det.score_modes) and all(list(t) == ["fan"] for t in det.thresholds_.values())


def test_cross_fitted_calibration_scores_every_clip_out_of_sample(monkeypatch):
    rng = np.random.default_rng(6)
    clips, feats = [_clip(i) for i in range(8)], _logmels(rng, 8)
    seen: list[list[str]] = []
    real_fit = BiGANDetector._fit

    def spy(self, clips, feats, context):
        seen.append([str(c.path) for c in clips])
        return real_fit(self, clips, feats, context)

    monkeypatch.setattr(BiGANDetector, "_fit", spy)
    det = BiGANDetector(epochs=2, seed=3, calibration="cv", calibration_folds=2, **TINY).fit(clips, feats)
    names = [str(c.path) for c in clips]
    assert det.calibration_["file"] == names and len(seen) == 3 and sorted(seen[2]) == sorted(names)
    for fold in seen[:2]:  # each fold trains on 4 clips and scores the other 4
        assert len(fold) == 4
    assert not set(seen[0]) & set(seen[1])
    assert all(np.isfinite(s).all() for s in det.decision_scores_.values())


# ---------------------------------------------------------------------------------------------
# checkpoints: a killed training resumes where it stopped
# ---------------------------------------------------------------------------------------------


class Crash(Exception):
    """Stands for a killed process."""


def test_a_killed_training_resumes_from_its_checkpoint_and_matches_an_uninterrupted_fit(
        tmp_path, monkeypatch, caplog):
    rng = np.random.default_rng(2)
    clips, feats = [_clip(i) for i in range(6)], _logmels(rng, 6)  # 5 train (20 patches: 2 steps/epoch)
    tc, test = [_clip(i, "test") for i in range(4)], _logmels(rng, 2) + _logmels(rng, 2, anomalous=True)
    params = dict(epochs=6, seed=5, checkpoint_every=2, **TINY)
    full = BiGANDetector(**params).fit(clips, feats)  # no work dir: no checkpoints

    work = tmp_path / "work"
    real_update, calls = bigan_detector.ema_update, []

    def killed_in_epoch_4(ema, live, decay):  # the 7th step is the first of epoch 4
        calls.append(decay)
        if len(calls) == 7:
            raise Crash
        real_update(ema, live, decay)

    monkeypatch.setattr(bigan_detector, "ema_update", killed_in_epoch_4)
    with pytest.raises(Crash):
        BiGANDetector(**params).fit(clips, feats, FitContext(work_dir=work))
    ckpt = work / "bigan_fan.ckpt"
    assert ckpt.exists()  # written after epoch 2 (every 2 epochs), kept after the crash
    blob = torch.load(ckpt, weights_only=True)
    assert blob["epoch"] == 2 and blob["history"]["epoch"] == [1, 2]
    assert blob["state"]["counters"]["step"] == 4  # the EMA warm-up step count is saved
    assert {"net", "ema", "opt_d", "opt_ge", "counters"} <= set(blob["state"])
    monkeypatch.setattr(bigan_detector, "ema_update", real_update)

    with caplog.at_level(logging.INFO, logger="stetho.models.training"):  # checkpoint_every may change
        resumed = BiGANDetector(**{**params, "checkpoint_every": 1}).fit(clips, feats, FitContext(work_dir=work))
    assert "resuming after epoch 2 of 6" in caplog.text
    assert "epoch 1/6" not in caplog.text and "epoch 3/6" in caplog.text  # epochs 1-2 not retrained
    assert resumed.history_["epoch"] == [1, 2, 3, 4, 5, 6]
    assert resumed.history_["d_loss"][:2] == blob["history"]["d_loss"]
    for k in ("train_loss", "d_loss", "ge_loss"):  # one thread: bit-identical
        assert resumed.history_[k] == full.history_[k], k
    for m in full.score_modes:
        np.testing.assert_array_equal(resumed.score(tc, test, m), full.score(tc, test, m))
        np.testing.assert_array_equal(resumed.decision_scores_[m], full.decision_scores_[m])
    assert resumed.thresholds_ == full.thresholds_ and resumed.diversity_ == full.diversity_
    assert not ckpt.exists()  # deleted once the fit finished


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path, monkeypatch, caplog):
    rng = np.random.default_rng(3)
    clips, feats = [_clip(i) for i in range(6)], _logmels(rng, 6)
    params = dict(epochs=4, seed=5, checkpoint_every=1, **TINY)
    real_update = bigan_detector.ema_update
    calls = []

    def crash(ema, live, decay):
        calls.append(decay)
        if len(calls) == 5:
            raise Crash
        real_update(ema, live, decay)

    monkeypatch.setattr(bigan_detector, "ema_update", crash)
    with pytest.raises(Crash):
        BiGANDetector(**params).fit(clips, feats, FitContext(work_dir=tmp_path))
    monkeypatch.setattr(bigan_detector, "ema_update", real_update)
    assert (tmp_path / "bigan_fan.ckpt").exists()
    with caplog.at_level(logging.INFO, logger="stetho.models.training"):
        other = BiGANDetector(**{**params, "lr": 2e-4}).fit(clips, feats, FitContext(work_dir=tmp_path))
    assert "other settings" in caplog.text and "resuming" not in caplog.text
    straight = BiGANDetector(**{**params, "lr": 2e-4}).fit(clips, feats)
    assert other.history_["d_loss"] == straight.history_["d_loss"]
