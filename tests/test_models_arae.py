"""ARAE (stetho.models.arae): network, attacks, losses, detector, and `stetho train --model arae`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from stetho.backends import fpr_threshold, gamma_threshold
from stetho.datasets.clip import Clip
from stetho.errors import ConfigError
from stetho.models import Detector, get_model
from stetho.models.arae import ARAEDetector, ARAENet, arae_loss, union_loss
from stetho.models.base import FitContext
from stetho.models.arae.attacks import (
    transform_images,
    l2_pgd, latent_distance, linf_pgd, linf_random_start, spatial_attack, spatial_grid,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _net(dim: int = 64, activation: str = "sigmoid", seed: int = 0) -> ARAENet:
    torch.manual_seed(seed)
    net = ARAENet(dim, (32, 16), 8, activation).eval()
    return net.requires_grad_(False)  # attacks differentiate with respect to the input only


def _images(n: int = 16, dim: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, dim, generator=g)
    x[:, :8] = 0.0  # pixels at the box edges, where clipping must act
    x[:, 8:16] = 1.0
    return x


# -- network --------------------------------------------------------------------------------------
def test_network_has_the_spec_shape_glorot_normal_weights_and_each_originals_output_layer():
    torch.manual_seed(0)
    net = ARAENet()  # METHODS.md §7 defaults
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 512), (512, 256), (256, 128), (128, 256), (256, 512), (512, 784)]
    for m in linears:  # Glorot-normal (both originals): std sqrt(2 / (fan_in + fan_out)), not uniform
        w = m.weight.detach().numpy().ravel()
        std = np.sqrt(2.0 / (m.in_features + m.out_features))
        assert abs(w.std() / std - 1) < 0.05 and abs(w.mean()) < 0.05 * std
        assert np.abs(w).max() > np.sqrt(3) * std  # beyond a uniform distribution's limit of the same std
        assert float(m.bias.detach().abs().max()) == 0.0
    assert all(isinstance(net.encoder[i], torch.nn.Sigmoid) for i in (1, 3, 5))
    out = net(torch.rand(4, 784)).detach()
    assert out.shape == (4, 784) and float(out.min()) > 0 and float(out.max()) < 1
    union = ARAENet(activation="relu", output="linear")  # MNIST-union/code.py: ReLU, linear output
    assert isinstance(union.encoder[1], torch.nn.ReLU) and isinstance(union.decoder[-1], torch.nn.Linear)
    with pytest.raises(ValueError, match="output must be one of sigmoid, linear"):
        ARAENet(output="tanh")


# -- attacks --------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.05, 0.2])
def test_linf_pgd_stays_in_the_eps_ball_and_the_unit_box(eps):
    net, x = _net(), _images()
    adv = linf_pgd(net.encode, x, eps, steps=15, generator=torch.Generator().manual_seed(1))
    assert float((adv - x).abs().max()) <= eps + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert float((adv - x).abs().max()) > 0.9 * eps  # the attack does use its budget


def test_linf_pgd_increases_the_latent_distance_over_its_random_start():
    net, x = _net(), _images()
    z = net.encode(x).detach()
    start = linf_random_start(x, 0.1, torch.Generator().manual_seed(3))
    adv = linf_pgd(net.encode, x, 0.1, steps=20, generator=torch.Generator().manual_seed(3))
    d_start = latent_distance(net.encode(start), z).detach()
    d_adv = latent_distance(net.encode(adv), z).detach()
    assert bool((d_adv > d_start).all())
    assert float(d_adv.mean()) > 2 * float(d_start.mean())


def _manual_linf_pgd(net, x, eps, steps, step, seed):
    z = net.encode(x).detach()
    cur = linf_random_start(x, eps, torch.Generator().manual_seed(seed))
    for _ in range(steps):
        c = cur.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(((net.encode(c) - z) ** 2).sum(), c)
        cur = torch.minimum(torch.maximum(cur + step * g.sign(), x - eps), x + eps).clamp(0, 1)
    return cur


@pytest.mark.parametrize("steps,step_size,step", [(1, None, 0.25), (4, None, 0.0625), (3, 0.01, 0.01)])
def test_linf_pgd_matches_a_hand_loop_with_the_seed_step_rule(steps, step_size, step):
    # step = 2.5 · eps / K by default (eps 0.1 here), else the given step size
    net, x = _net(), _images(n=4)
    got = linf_pgd(net.encode, x, 0.1, steps=steps, step_size=step_size, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(got, _manual_linf_pgd(net, x, 0.1, steps, step, 5), atol=1e-6)


def test_linf_pgd_without_random_start_cannot_move():
    # the latent distance has a zero gradient at x itself: the reason for the random start
    net, x = _net(), _images(n=4)
    assert torch.equal(linf_pgd(net.encode, x, 0.1, steps=3, random_start=False), x)


def test_l2_pgd_stays_in_the_l2_ball_and_box_and_beats_no_attack():
    net, x = _net(), _images()
    z = net.encode(x).detach()
    adv = l2_pgd(net.encode, x, eps=1.0, steps=20, step_size=0.1, generator=torch.Generator().manual_seed(0))
    assert float((adv - x).norm(dim=1).max()) <= 1.0 + 1e-5
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    noise = (x + 1.0 * torch.nn.functional.normalize(torch.randn(x.shape), dim=1)).clamp(0, 1)
    assert float(latent_distance(net.encode(adv), z).mean()) > 2 * float(latent_distance(net.encode(noise), z).mean())


def test_spatial_attack_picks_the_worst_transform_of_a_known_set():
    net = _net(dim=64)
    x = _images(n=6, seed=4)
    transforms = spatial_grid([-20, 0, 15], [-1, 0, 2])
    adv, chosen = spatial_attack(net.encode, x, (8, 8), transforms)
    z = net.encode(x).detach()
    for i in range(len(x)):
        img = x[i].numpy().reshape(8, 8)
        # brute force: each transform on the single image, one at a time (the attack batches and chunks)
        dists = []
        for angle, (dy, dx) in transforms:
            t = torch.from_numpy(np.clip(transform_images(img[None], angle, (dy, dx))[0], 0, 1)).reshape(1, -1)
            dists.append(float(latent_distance(net.encode(t), z[i:i + 1])))
        assert chosen[i] == int(np.argmax(dists))
        assert float(latent_distance(net.encode(adv[i:i + 1]), z[i:i + 1])) == pytest.approx(max(dists), rel=1e-5)
    assert len(set(chosen.tolist())) > 1  # not one transform for everything
    adv_small, chosen_small = spatial_attack(net.encode, x, (8, 8), transforms, chunk=7)  # one transform a chunk
    assert np.array_equal(chosen_small, chosen) and torch.equal(adv_small, adv)


def test_the_spatial_grid_is_the_originals_279_transforms_and_rotation_agrees_with_scipy():
    grid = spatial_grid()  # MNIST-union/code.py: linspace(-30, 30, 31) x 3 x 3 translations
    assert len(grid) == 279 and grid[0] == (-30.0, (-4.0, -4.0)) and grid[-1] == (30.0, (4.0, 4.0))
    assert sorted({a for a, _ in grid})[:3] == [-30.0, -28.0, -26.0]
    img = np.zeros((1, 28, 28), dtype=np.float32)
    img[0, 6:22, 12:16] = 1.0  # a bar
    for angle in (-30.0, 14.0):
        ours = transform_images(img, angle, (0.0, 0.0))[0]
        # scipy rotates the other way round in (row, col) axes; the same bilinear interpolation
        ref = ndimage.rotate(img[0], -angle, reshape=False, order=1, mode="constant", cval=0.0)
        assert np.abs(ours - ref).mean() < 0.01 and ours.sum() == pytest.approx(img.sum(), rel=0.02)


def test_spatial_transform_moves_a_pixel_where_expected():
    img = np.zeros((1, 8, 8), dtype=np.float32)
    img[0, 2, 3] = 1.0
    from stetho.models.arae.attacks import transform_images

    moved = transform_images(img, 0.0, (1.0, 2.0))
    assert moved[0, 3, 5] == pytest.approx(1.0, abs=1e-5) and moved.sum() == pytest.approx(1.0, abs=1e-5)
    turned = transform_images(img, 90.0, (0.0, 0.0))
    assert turned.sum() == pytest.approx(1.0, abs=1e-5) and turned[0, 2, 3] < 0.5


# -- losses ---------------------------------------------------------------------------------------
def test_arae_and_union_losses_match_a_hand_computation():
    g = np.random.default_rng(0)
    x, r, r2 = (g.random((5, 6)) for _ in range(3))
    z, za, za2 = (g.random((5, 3)) for _ in range(3))
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    want = np.mean((r - x) ** 2) + 0.1 * np.mean((z - za) ** 2)
    assert float(arae_loss(t(r), t(x), t(z), t(za), 0.1)) == pytest.approx(want, rel=1e-12)
    # the original: MSE over the adversarial batches stacked = the mean of the per-attack terms
    want_u = (np.mean((r - x) ** 2) + np.mean((r2 - x) ** 2)) / 2 \
        + 0.2 * (np.mean((z - za) ** 2) + np.mean((z - za2) ** 2)) / 2
    stacked = np.mean((np.concatenate([r, r2]) - np.concatenate([x, x])) ** 2) + \
        0.2 * np.mean((np.concatenate([za, za2]) - np.concatenate([z, z])) ** 2)
    assert want_u == pytest.approx(stacked, rel=1e-12)
    assert float(union_loss([t(r), t(r2)], t(x), t(z), [t(za), t(za2)], 0.2)) == pytest.approx(want_u, rel=1e-12)


# -- detector -------------------------------------------------------------------------------------
def _digits(cls: int = 0):
    from stetho.datasets.images import load_digits_set

    d = load_digits_set()
    return d.x[(d.y == cls) & (d.split == "train")], d


def test_registered_and_fits_scores_saves_and_loads(tmp_path):
    assert get_model("arae") is ARAEDetector
    x, d = _digits(0)
    det = ARAEDetector(variant="linf", hidden=(32, 16), latent=8, eps=0.1, steps=3, epochs=3, batch_size=32,
                       seed=0, device="cpu").fit_arrays(x)
    s = det.score_arrays(d.x[:20])
    manual = ((det.net_(torch.from_numpy(d.x[:20])) - torch.from_numpy(d.x[:20])) ** 2).sum(1).detach().numpy()
    assert np.allclose(s, manual, rtol=1e-5)
    det.save(tmp_path / "m.pt")
    back = Detector.load(tmp_path / "m.pt")
    assert isinstance(back, ARAEDetector) and np.allclose(back.score_arrays(d.x[:20]), s, rtol=1e-6)
    assert back.threshold_ == det.threshold_ and set(det.thresholds_["recon"]) == {"images"}
    assert len(det.history_["train_loss"]) == 3


def test_official_array_fit_trains_on_every_row_with_gamma_thresholds_of_their_scores():
    x, _ = _digits(0)
    det = ARAEDetector(variant="plain", hidden=(16,), latent=4, epochs=2, batch_size=32, seed=0, device="cpu",
                       threshold="official").fit_arrays(x)
    s = det.score_arrays(x)
    np.testing.assert_array_equal(det.decision_scores_["recon"], s)
    assert det.calibration_["file"] == [f"row_{i:06d}" for i in range(len(x))]
    assert det.threshold_for("recon", "images") == pytest.approx(gamma_threshold(s, 0.9), rel=1e-12)


def test_union_variant_trains_with_all_three_attacks_per_batch(monkeypatch):
    import stetho.models.arae.detector as mod

    x, d = _digits(1)
    calls: dict[str, list] = {"l2_pgd": [], "linf_pgd": [], "spatial_attack": []}
    for name in calls:
        real = getattr(mod, name)

        def counted(encode, xb, *a, _real=real, _name=name, **k):
            calls[_name].append((encode.__self__, len(xb)))
            return _real(encode, xb, *a, **k)
        monkeypatch.setattr(mod, name, counted)
    det = ARAEDetector(variant="union", hidden=(32, 16), latent=8, eps=0.1, steps=2, l2_eps=1.0, l2_steps=2,
                       angles=[-10, 10], shifts=[0, 1], image_shape=(8, 8), epochs=2, batch_size=64,
                       seed=0, device="cpu", threshold="official").fit_arrays(x)
    assert (det.activation_, det.output_, det.craft_) == ("relu", "linear", "batch")
    assert (det.gamma_, det.step_size_) == (0.2, 0.01)
    assert isinstance(det.net_.decoder[-1], torch.nn.Linear)  # linear output, as MNIST-union/code.py
    assert np.isfinite(det.history_["train_loss"]).all()
    n_batches = 2 * -(-len(x) // 64)
    for name, seen in calls.items():  # every attack on every batch, against the network being trained
        assert len(seen) == n_batches, name
        assert all(net is det.net_ for net, _ in seen)


def test_linf_arae_crafts_against_the_weights_of_the_epochs_start(monkeypatch):
    import stetho.models.arae.detector as mod

    x, _ = _digits(2)
    crafted_with: list[torch.Tensor] = []
    real = mod.linf_pgd

    def spy(encode, xb, *a, **k):
        crafted_with.append(torch.cat([p.detach().flatten().clone() for p in encode.__self__.parameters()]))
        return real(encode, xb, *a, **k)
    monkeypatch.setattr(mod, "linf_pgd", spy)
    det = ARAEDetector(hidden=(32, 16), latent=8, eps=0.1, steps=2, epochs=2, batch_size=32, seed=0,
                       device="cpu", threshold="official").fit_arrays(x)
    assert (det.output_, det.craft_) == ("sigmoid", "epoch") and isinstance(det.net_.decoder[-1], torch.nn.Sigmoid)
    per_epoch = -(-len(x) // 32)
    assert len(crafted_with) == 2 * per_epoch
    first, second = crafted_with[:per_epoch], crafted_with[per_epoch:]
    assert all(torch.equal(w, first[0]) for w in first) and all(torch.equal(w, second[0]) for w in second)
    assert not torch.equal(first[0], second[0])  # refreshed at the epoch's start
    crafted_with.clear()
    ARAEDetector(hidden=(32, 16), latent=8, eps=0.1, steps=2, epochs=1, batch_size=32, seed=0, craft="batch",
                 device="cpu", threshold="official").fit_arrays(x)
    assert not torch.equal(crafted_with[0], crafted_with[1])  # craft=batch: the current weights


def test_bad_parameters_and_inputs_are_clear_errors():
    with pytest.raises(ConfigError, match="arae: params.variant='l3' is not allowed; expected one of linf, union"):
        ARAEDetector(variant="l3").check_params()
    with pytest.raises(ConfigError, match="image_shape"):
        ARAEDetector(variant="union").check_params()
    with pytest.raises(ConfigError, match=r"params.epochs=0 is not allowed; expected an integer >= 1"):
        ARAEDetector(epochs=0).check_params()
    with pytest.raises(ConfigError, match=r"params.scale='max' is not allowed; expected one of auto, none, minmax"):
        ARAEDetector(scale="max").check_params()
    with pytest.raises(ConfigError, match=r"params.eps=0 is not allowed"):
        ARAEDetector(eps=0).fit_arrays(np.full((4, 6), 0.5))
    with pytest.raises(ConfigError, match=r"params.hidden='64' is not allowed"):
        ARAEDetector(hidden="64").check_params()
    with pytest.raises(TypeError, match="decision_quantilee"):
        ARAEDetector(decision_quantilee=0.9)
    assert set(ARAEDetector.param_defaults()) == set(ARAEDetector.parameter_constraints())
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        ARAEDetector(epochs=1).fit_arrays(np.full((4, 6), 3.0))
    det = ARAEDetector(scale="minmax", hidden=(8,), latent=2, epochs=2, device="cpu").fit_arrays(
        np.random.default_rng(0).normal(50, 10, (40, 6)))
    assert det.score_arrays(np.zeros((1, 6))).shape == (1,)


# -- the detector contract on clips: calibration, persistence, resume, logs -------------------------
TOY = {"hidden": (32,), "latent": 4, "steps": 2, "eps": 0.05, "epochs": 4, "batch_size": 64, "n_mels": 16,
       "seed": 3, "device": "cpu"}


def _toy_clips(n_source: int = 20, n_target: int = 5):
    rng = np.random.default_rng(0)
    clips = [Clip(Path(f"/toy/fan/train/section_00_{d}_train_normal_{i:04d}.wav"), "fan", "00", "train", d)
             for d, n in (("source", n_source), ("target", n_target)) for i in range(n)]
    feats = [(rng.normal(size=(40, 16)) + (1.5 if c.domain == "target" else 0.0)).astype(np.float32) for c in clips]
    return clips, feats


def _spy_fit(monkeypatch) -> list[list[str]]:
    """Record the clips every ``_fit`` call trains on."""
    seen: list[list[str]] = []
    original = ARAEDetector._fit

    def spy(self, clips, feats, context):
        seen.append([str(c.path) for c in clips])
        return original(self, clips, feats, context)

    monkeypatch.setattr(ARAEDetector, "_fit", spy)
    return seen


def test_calibrated_decision_scores_are_of_clips_the_network_did_not_train_on(monkeypatch):
    clips, feats = _toy_clips()
    seen = _spy_fit(monkeypatch)
    det = ARAEDetector(**TOY).fit(clips, feats)
    (trained,) = seen
    held = det.calibration_["file"]
    assert held and not set(held) & set(trained)
    assert sorted(held + trained) == sorted(str(c.path) for c in clips)
    assert set(det.calibration_["domain"]) == {"source", "target"}  # a share of every domain
    idx = [[str(c.path) for c in clips].index(f) for f in held]
    np.testing.assert_array_equal(det.decision_scores_["recon"],
                                  det.score([clips[i] for i in idx], [feats[i] for i in idx]))
    assert det.threshold_for("recon", "fan") == fpr_threshold(det.decision_scores_["recon"],
                                                              np.array(det.calibration_["domain"]), 0.1)
    assert det.thresholds_ == {"recon": {"fan": det.threshold_for()}}


def test_calibrated_array_fit_holds_rows_out_and_cross_fitting_scores_every_row(monkeypatch, tmp_path):
    x, _ = _digits(3)
    seen = _spy_fit(monkeypatch)
    small = {"variant": "plain", "hidden": (16,), "latent": 4, "epochs": 2, "batch_size": 32, "device": "cpu"}
    det = ARAEDetector(**small).fit_arrays(x)
    rows = [int(f.removeprefix("row_")) for f in det.calibration_["file"]]
    assert len(rows) == round(0.2 * len(x)) and not set(det.calibration_["file"]) & set(seen[0])
    np.testing.assert_array_equal(det.decision_scores_["recon"], det.score_arrays(x[rows]))
    # checkpointed in the work dir (removed after the fit): the same training
    again = ARAEDetector(**small).fit_arrays(x, FitContext(work_dir=tmp_path / "work"))
    np.testing.assert_array_equal(again.decision_scores_["recon"], det.decision_scores_["recon"])
    assert again.history_["train_loss"] == det.history_["train_loss"] and not list((tmp_path / "work").iterdir())
    del seen[1:]
    cv = ARAEDetector(**small, calibration="cv", calibration_folds=3).fit_arrays(x)
    assert len(seen) == 1 + 3 + 1  # the held-out fit above, three folds, then the final fit on every row
    assert len(seen[-1]) == len(x) and cv.calibration_["file"] == [f"row_{i:06d}" for i in range(len(x))]
    assert np.isfinite(cv.decision_scores_["recon"]).all() and set(cv.thresholds_["recon"]) == {"images"}


def test_save_load_round_trip_gives_identical_scores_and_thresholds(tmp_path):
    clips, feats = _toy_clips()
    det = ARAEDetector(**TOY).fit(clips, feats)
    det.save(tmp_path / "fan.pt")
    back = Detector.load(tmp_path / "fan.pt")
    assert isinstance(back, ARAEDetector) and back.get_params() == det.get_params()
    np.testing.assert_array_equal(back.score(clips, feats), det.score(clips, feats))
    assert back.thresholds_ == det.thresholds_ and back.calibration_ == det.calibration_
    np.testing.assert_array_equal(back.decision_scores_["recon"], det.decision_scores_["recon"])
    assert back.history_["train_loss"] == det.history_["train_loss"] and back.machines_ == ["fan"]
    np.testing.assert_array_equal(back.predict(clips, feats), det.predict(clips, feats))
    blob = torch.load(tmp_path / "fan.pt", weights_only=True)
    assert not {"thresholds", "train_scores", "machines"} & set(blob["state"])  # the base saves those


class Killed(RuntimeError):
    """Stands in for a training killed mid-way."""


def test_a_killed_training_resumes_from_its_checkpoint_and_gives_the_same_scores(tmp_path, monkeypatch, caplog):
    clips, feats = _toy_clips()
    calls = {"n": 0, "kill_at": None}
    original = ARAEDetector._loss

    def counting(self, *args):
        calls["n"] += 1
        if calls["kill_at"] is not None and calls["n"] == calls["kill_at"]:
            raise Killed("killed")
        return original(self, *args)

    monkeypatch.setattr(ARAEDetector, "_loss", counting)
    whole = ARAEDetector(**TOY).fit(clips, feats)  # no work dir: no checkpoints
    per_epoch = calls["n"] // TOY["epochs"]
    assert per_epoch * TOY["epochs"] == calls["n"]

    context = FitContext(work_dir=tmp_path / "work")
    ckpt = tmp_path / "work" / "arae_fan.ckpt"
    calls.update(n=0, kill_at=2 * per_epoch + 1)  # first step of epoch 3
    with pytest.raises(Killed):
        ARAEDetector(**TOY).fit(clips, feats, context)
    assert ckpt.is_file()

    calls.update(n=0, kill_at=None)
    with caplog.at_level("INFO", logger="stetho.models.training"):
        resumed = ARAEDetector(**TOY).fit(clips, feats, context)
    assert "resuming after epoch 2 of 4" in caplog.text
    assert calls["n"] == 2 * per_epoch  # epochs 3 and 4 only
    assert resumed.history_["epoch"] == [1, 2, 3, 4] and resumed.history_["train_loss"] == whole.history_["train_loss"]
    np.testing.assert_array_equal(resumed.score(clips, feats), whole.score(clips, feats))
    np.testing.assert_array_equal(resumed.decision_scores_["recon"], whole.decision_scores_["recon"])
    assert resumed.thresholds_ == whole.thresholds_
    assert not ckpt.exists()  # removed after the successful fit

    # other settings never resume from a checkpoint of these
    calls.update(n=0, kill_at=2 * per_epoch + 1)
    with pytest.raises(Killed):
        ARAEDetector(**TOY).fit(clips, feats, context)
    calls.update(n=0, kill_at=None)
    ARAEDetector(**{**TOY, "lr": 2e-3}).fit(clips, feats, context)
    assert calls["n"] == TOY["epochs"] * per_epoch


def test_training_logs_epochs_without_a_terminal_and_without_nan(caplog):
    clips, feats = _toy_clips()
    with caplog.at_level("INFO", logger="stetho.models.training"):
        det = ARAEDetector(**{**TOY, "progress": False}).fit(clips, feats)
    lines = [r.getMessage() for r in caplog.records if "ARAE (linf) epochs: epoch" in r.getMessage()]
    assert lines[0].startswith("ARAE (linf) epochs: epoch 1/4 loss") and "epoch 4/4" in lines[-1]
    assert "nan" not in caplog.text.lower()
    assert np.isnan(det.history_["val_loss"]).all()  # no validation loss: NaN in the history only


def test_fit_leaves_the_callers_random_state_alone():
    clips, feats = _toy_clips()
    torch.manual_seed(123)
    np.random.seed(123)
    want_t, want_n = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    ARAEDetector(**{**TOY, "epochs": 1}).fit(clips, feats)
    assert torch.equal(torch.rand(3), want_t) and np.array_equal(np.random.rand(3), want_n)


# -- `stetho train --model arae` on DCASE-style data --------------------------------------------
@pytest.mark.slow
def test_stetho_train_and_test_with_arae_write_the_dcase_outputs(tmp_path):
    from stetho.cli import main
    from stetho.synth import make_toy_dataset

    root = tmp_path / "toy"
    make_toy_dataset(root, machines=["fan"], train_clips=12, target_train_clips=2, test_clips=5, duration=2.0, seed=0)
    run = tmp_path / "run"
    assert main(["-q", "train", "--data", str(root), "--model", "arae", "--out", str(run), "--epochs", "1",
                 "--param", "steps=2", "--param", "hidden=[32]", "--param", "latent=8",
                 "--param", "batch_size=512", "--device", "cpu", "--no-progress"]) == 0
    det = Detector.load(run / "models" / "fan.pt")
    assert isinstance(det, ARAEDetector) and det.net_.encoder[0].in_features == 640
    assert det.scale_min_.shape == (640,)
    assert main(["-q", "test", "--run", str(run), "--device", "cpu", "--no-progress"]) == 0
    files = sorted(p.name for p in (run / "results" / "recon").iterdir())
    assert "anomaly_score_fan_section_00_test.csv" in files and "decision_result_fan_section_00_test.csv" in files
    with open(run / "results" / "recon" / "anomaly_score_fan_section_00_test.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert len(rows) == 20 and all(float(r[1]) >= 0 for r in rows)
    # clip score = mean frame score, recomputed independently from the stored network
    from stetho.datasets import scan_dcase

    clips = [c for c in scan_dcase(root, splits=("test",)).clips if c.path.name == rows[0][0]]
    feats = det.extract(clips).features[0]
    frames = np.stack([feats[i:i + 5].reshape(-1) for i in range(len(feats) - 4)])
    assert float(rows[0][1]) == pytest.approx(float(det.score_arrays(frames).mean()), rel=1e-4)
