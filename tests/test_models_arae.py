"""ARAE (stetho.models.arae): network, attacks, losses, detector, and `stetho train --model arae`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from stetho.errors import ConfigError
from stetho.models import Detector, get_model
from stetho.models.arae import ARAEDetector, ARAENet, arae_loss, union_loss
from stetho.models.arae.attacks import (
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
def test_network_has_the_spec_shape_glorot_weights_and_sigmoid_outputs():
    torch.manual_seed(0)
    net = ARAENet()  # METHODS.md §7 defaults
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 512), (512, 256), (256, 128), (128, 256), (256, 512), (512, 784)]
    for m in linears:
        bound = np.sqrt(6.0 / (m.in_features + m.out_features))  # Glorot-uniform limit
        w = float(m.weight.detach().abs().max())
        assert 0.9 * bound < w <= bound
        assert float(m.bias.detach().abs().max()) == 0.0
    assert all(isinstance(net.encoder[i], torch.nn.Sigmoid) for i in (1, 3, 5))
    out = net(torch.rand(4, 784)).detach()
    assert out.shape == (4, 784) and float(out.min()) > 0 and float(out.max()) < 1
    relu = ARAENet(activation="relu")
    assert isinstance(relu.encoder[1], torch.nn.ReLU) and isinstance(relu.decoder[-1], torch.nn.Sigmoid)


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
        # independent brute force: each transform with scipy on the single image
        dists = []
        for angle, (dy, dx) in transforms:
            t = ndimage.rotate(img, angle, reshape=False, order=1, mode="constant", cval=0.0) if angle else img
            t = ndimage.shift(t, (dy, dx), order=0, mode="constant", cval=0.0) if (dy or dx) else t
            t = torch.from_numpy(np.clip(t, 0, 1).astype(np.float32)).reshape(1, -1)
            dists.append(float(latent_distance(net.encode(t), z[i:i + 1])))
        assert chosen[i] == int(np.argmax(dists))
        assert float(latent_distance(net.encode(adv[i:i + 1]), z[i:i + 1])) == pytest.approx(max(dists), rel=1e-5)
    assert len(set(chosen.tolist())) > 1  # not one transform for everything


def test_spatial_transform_moves_a_pixel_where_expected():
    img = np.zeros((1, 8, 8), dtype=np.float32)
    img[0, 2, 3] = 1.0
    from stetho.models.arae.attacks import transform_images

    moved = transform_images(img, 0.0, (1.0, 2.0))
    assert moved[0, 3, 5] == 1.0 and moved.sum() == 1.0
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
    want_u = np.mean((r - x) ** 2) + np.mean((r2 - x) ** 2) + 0.2 * (np.mean((z - za) ** 2) + np.mean((z - za2) ** 2)) / 2
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
    assert back.threshold_ == det.threshold_
    assert len(det.history_["train_loss"]) == 3


def test_union_variant_trains_with_all_three_attacks():
    x, d = _digits(1)
    det = ARAEDetector(variant="union", hidden=(32, 16), latent=8, eps=0.1, steps=2, l2_eps=1.0, l2_steps=2,
                       angles=[-10, 10], shifts=[0, 1], image_shape=(8, 8), epochs=2, batch_size=64,
                       seed=0, device="cpu").fit_arrays(x)
    assert det.activation_ == "relu" and det.gamma_ == 0.2
    assert np.isfinite(det.history_["train_loss"]).all()
    # three reconstruction terms: the first epoch's loss is well above a plain AE's
    plain = ARAEDetector(variant="plain", activation="relu", hidden=(32, 16), latent=8, epochs=2, batch_size=64,
                         seed=0, device="cpu").fit_arrays(x)
    assert det.history_["train_loss"][0] > 2 * plain.history_["train_loss"][0]


def test_bad_parameters_and_inputs_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown variant"):
        ARAEDetector(variant="l3").check_params()
    with pytest.raises(ConfigError, match="image_shape"):
        ARAEDetector(variant="union").check_params()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ARAEDetector(epochs=1).fit_arrays(np.full((4, 6), 3.0))
    det = ARAEDetector(scale="minmax", hidden=(8,), latent=2, epochs=2, device="cpu").fit_arrays(
        np.random.default_rng(0).normal(50, 10, (40, 6)))
    assert det.score_arrays(np.zeros((1, 6))).shape == (1,)


# -- `stetho train --model arae` on DCASE-style data --------------------------------------------
@pytest.mark.slow
def test_stetho_train_and_test_with_arae_write_the_dcase_outputs(tmp_path):
    from stetho.cli import main
    from stetho.datasets.toy import make_toy_dataset

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
