"""BiGAN / EGBAD (stetho.models.bigan): network shapes, EMA arithmetic, the score formula by hand,
the normalisation round trip, training stability and mode collapse, save/load, resume."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stetho.datasets.clip import Clip
from stetho.errors import ConfigError, NotFittedError, StethoError
from stetho.models import BiGANDetector, Detector, get_model
from stetho.models.bigan import (
    BiGAN, Discriminator, Encoder, Generator, anomaly_scores, denormalise, ema_update, generator_diversity,
    norm_stats, normalise,
)

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
    det = BiGANDetector(epochs=20, seed=3, **TINY).fit(train, _logmels(rng, 12))
    return det, train, rng


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
    (dict(score_mode="mse"), "unknown score mode"), (dict(patch_reduce="median"), "patch_reduce"),
    (dict(patch_frames=62), "multiples of 4"), (dict(weight=1.5), "weight"), (dict(degree=0), "degree"),
    (dict(ema_decay=1.0), "ema_decay"), (dict(batch_size=1), "batch_size"),
])
def test_bad_params_are_refused(bad, match):
    with pytest.raises(StethoError, match=match) as err:  # ConfigError, or the base's score-mode error
        BiGANDetector(**bad).check_params()
    assert isinstance(err.value, ConfigError) or "score mode" in match


def test_training_is_stable_and_the_generator_is_not_collapsed(trained, caplog):
    det, _, _ = trained
    h = det.history_
    assert h["epoch"] == list(range(1, 21))
    for key in ("d_loss", "ge_loss", "train_loss"):
        assert len(h[key]) == 20 and np.isfinite(h[key]).all()
    np.testing.assert_allclose(h["train_loss"], np.add(h["d_loss"], h["ge_loss"]), rtol=1e-9)
    assert det.diversity_ > det.collapse_threshold
    assert det.histories() == {"": h}
    assert all(np.isfinite(s).all() and (s > 0).all() for s in det.train_scores_.values())
    assert set(det.thresholds_) == {"fm", "cross-e"}


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
    import stetho.models.bigan.detector as bigan_detector
    from stetho.models.training import seed_everything

    steps = []  # (decay, live state after the step) for every EMA update
    real_update = bigan_detector.ema_update

    def spy(ema, live, decay):
        steps.append((decay, {k: v.detach().clone() for k, v in live.state_dict().items()}))
        real_update(ema, live, decay)

    monkeypatch.setattr(bigan_detector, "ema_update", spy)
    rng = np.random.default_rng(4)
    clips, feats = [_clip(i) for i in range(12)], _logmels(rng, 12)  # 48 patches: 3 batches of 16
    det = BiGANDetector(epochs=10, seed=7, **{**TINY, "lr": 1e-3}).fit(clips, feats)
    assert [d for d, _ in steps] == pytest.approx([(1 + t) / (10 + t) for t in range(30)])  # warm-up decays
    seed_everything(7)
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
    det_max._set_state(det._get_state())
    np.testing.assert_allclose(det_max.score(clips, feats, "fm"),
                               [float(per_patch["fm"][owner == i].max()) for i in range(3)], rtol=1e-9)


def test_anomalies_score_higher_and_predict_uses_the_threshold(trained):
    det, _, rng = trained
    normal, anomalous = _logmels(rng, 6), _logmels(rng, 6, anomalous=True)
    clips = [_clip(i, "test") for i in range(12)]
    s = det.score(clips, normal + anomalous)
    assert s[6:].min() > s[:6].max()
    assert det.predict(clips, normal + anomalous).tolist() == (s > det.threshold_).astype(int).tolist()


def test_short_clips_are_refused_naming_the_file(trained):
    det, _, _ = trained
    with pytest.raises(StethoError, match=r"test_0_0001.wav \(10 frames\)"):
        det.score([_clip(0, "test"), _clip(1, "test")], [np.zeros((16, 32), np.float32), np.zeros((10, 32), np.float32)])
    assert det.audio_options.min_frames == 16  # extraction refuses them too, naming the file


def test_save_load_round_trip_gives_identical_scores(trained, tmp_path):
    det, _, rng = trained
    feats = _logmels(rng, 4)
    clips = [_clip(i, "test") for i in range(4)]
    det.save(tmp_path / "m.pt")
    back = Detector.load(tmp_path / "m.pt")
    assert isinstance(back, BiGANDetector)
    for m in det.score_modes:
        np.testing.assert_array_equal(back.score(clips, feats, m), det.score(clips, feats, m))
    np.testing.assert_array_equal(back.mean_, det.mean_)
    assert back.thresholds_ == det.thresholds_ and back.diversity_ == det.diversity_
    assert back.history_.keys() == det.history_.keys()
    for k, v in det.history_.items():
        np.testing.assert_array_equal(back.history_[k], v)  # NaN val_loss included


def test_resume_continues_at_the_right_epoch_and_matches_an_uninterrupted_run(tmp_path):
    rng = np.random.default_rng(2)
    clips, feats = [_clip(i) for i in range(6)], _logmels(rng, 6)
    test = _logmels(rng, 3)
    full = BiGANDetector(epochs=4, seed=5, **TINY).fit(clips, feats)
    work = tmp_path / "work"
    BiGANDetector(epochs=2, seed=5, checkpoint_every=2, **TINY).fit(clips, feats, work_dir=work)
    saved = sorted((work / "checkpoints" / "bigan_fan").glob("epoch_*.pt"))
    assert [p.name for p in saved] == ["epoch_0002.pt"]
    blob = torch.load(saved[0], weights_only=True)
    assert blob["epoch"] == 2 and blob["history"]["epoch"] == [1, 2]
    resumed = BiGANDetector(epochs=4, seed=5, checkpoint_every=2, resume=True, **TINY).fit(clips, feats, work_dir=work)
    assert resumed.history_["epoch"] == [1, 2, 3, 4]
    assert resumed.history_["d_loss"][:2] == blob["history"]["d_loss"]
    np.testing.assert_allclose(resumed.history_["d_loss"], full.history_["d_loss"], rtol=1e-5)
    tc = [_clip(i, "test") for i in range(3)]
    np.testing.assert_allclose(resumed.score(tc, test), full.score(tc, test), rtol=1e-5)
    assert [p.name for p in (work / "checkpoints" / "bigan_fan").glob("epoch_*.pt")] == ["epoch_0004.pt"]
