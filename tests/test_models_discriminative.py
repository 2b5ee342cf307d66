"""Unit tests of the discriminative model: network, SCAdaCos, mixup, FeatEx, wave bank, detector."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from stetho.backends import gamma_threshold, make_backend
from stetho.datasets.clip import Clip
from stetho.errors import ConfigError, StethoError
from stetho.models import Detector
from stetho.models.base import COMMON_PARAMS, FitContext
from stetho.models.discriminative import DiscriminativeDetector, MultiResolutionNet, SCAdaCosHead, WaveBank
from stetho.models.discriminative.augment import feature_exchange, mixup
from stetho.models.discriminative.pseudo_labels import (
    cluster_machine, gmm_bic, read_pseudo_labels, write_pseudo_labels,
)
from stetho.models.discriminative.torch_model import BranchSpec, FFTBranch, STFTBranch
from stetho.models.training import Trainer

# -- network ------------------------------------------------------------------------------------


def test_paper_network_shapes_and_no_biases():
    net = MultiResolutionNet(18 * 16000)  # FFT + STFT 4096/2048 + STFT 256/128, 18 s tiles
    assert net.dim == 384 and [str(s) for s in net.specs] == ["fft", "stft:4096:2048", "stft:256:128"]
    fft, s4096, s256 = net.branches
    # the seed's sizes: 144,001 FFT bins -> 2247 -> 69 -> 14 after the conv stack (1792 flattened)
    assert fft.dense[0].in_features == 14 * 128
    assert (s4096.hi - s4096.lo, s256.hi - s256.lo) == (1997, 125)  # bins of 200-8000 Hz
    assert s4096.out_shape == (128, 63, 5) and s256.out_shape == (128, 4, 71)
    assert s4096.head[1].in_features == 8064 and s256.head[1].in_features == 512
    layers = [m for m in net.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d))]
    assert layers and all(m.bias is None for m in layers)


def test_small_network_forward_and_minimum_tile():
    assert FFTBranch.min_samples() == 70014
    with pytest.raises(ValueError, match="at least 70014 samples"):
        FFTBranch(70000)
    net = MultiResolutionNet(72000, ["fft", "stft:1024:512"], channels=(4, 8, 8, 8), fft_channels=8, emb_dim=16)
    joint, parts = net(torch.randn(3, 72000))
    assert joint.shape == (3, 32) and [p.shape for p in parts] == [(3, 16), (3, 16)]
    assert torch.equal(joint, torch.cat(parts, 1))
    with pytest.raises(ValueError, match="not 'fft' or 'stft"):
        BranchSpec.parse("mel:64")
    with pytest.raises(ValueError, match="too small for the ResNet"):
        STFTBranch(2000, 1024, 512)


# -- SCAdaCos -----------------------------------------------------------------------------------


def test_scadacos_fixed_scale_probabilities_and_loss():
    head = SCAdaCosHead(8, n_classes=5, n_subclusters=16)
    assert float(head.scale) == pytest.approx(math.sqrt(2) * math.log(16 * 5 - 1))
    assert not head.W.requires_grad and SCAdaCosHead(8, 5, 16, trainable=True).W.requires_grad
    x = torch.randn(4, 8)
    p = head.probabilities(x)
    assert p.shape == (4, 5) and torch.allclose(p.sum(dim=1), torch.ones(4))
    # by hand: softmax over all 80 scaled cosines, summed per class (columns c*16 .. c*16+15)
    cos = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(head.W, dim=0)
    soft = torch.softmax(head.scale * cos, dim=1)
    assert torch.allclose(p[:, 2], soft[:, 32:48].sum(dim=1))
    y = torch.tensor([[1, 0, 0, 0, 0], [0, 0.3, 0.7, 0, 0], [0, 0, 0, 0, 1], [0.5, 0, 0, 0.5, 0]])
    expected = -(y * torch.log(p)).sum(dim=1).mean()
    assert torch.allclose(head(x, y), expected)


# -- augmentation -------------------------------------------------------------------------------


def test_mixup_mixes_inputs_and_labels_with_the_same_lambda_and_partner():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(8.0).view(8, 1) * 10 + torch.zeros(8, 3)
    y = torch.eye(8)
    xm, ym = mixup(x, y, prob=1.0, generator=g)
    for i in range(8):
        row = ym[i]
        assert torch.isclose(row.sum(), torch.tensor(1.0))
        nz = torch.nonzero(row).flatten().tolist()
        if nz == [i]:
            assert torch.allclose(xm[i], x[i])  # its own partner (or λ = 1)
            continue
        lam = float(row[i])
        partner = [j for j in nz if j != i][0]
        assert torch.allclose(xm[i], lam * x[i] + (1 - lam) * x[partner])
        assert row[partner] == pytest.approx(1 - lam)
    same_x, same_y = mixup(x, y, prob=0.0, generator=g)
    assert torch.equal(same_x, x) and torch.equal(same_y, y)
    # probability 0.5: about half the rows change
    g = torch.Generator().manual_seed(1)
    _, y2 = mixup(torch.randn(2000, 1), torch.eye(2000)[:, :2000], prob=0.5, generator=g)
    assert 0.42 < float((torch.diagonal(y2) < 1).float().mean()) < 0.52


def test_feature_exchange_labels_and_embeddings():
    g = torch.Generator().manual_seed(0)
    parts = [torch.arange(6.0).view(6, 1) + 100 * b for b in range(3)]
    y = torch.eye(6)[:, :4] + 0  # 4 classes; rows 4, 5 have no class: use 6 classes instead
    y = torch.eye(6)
    joint, t = feature_exchange(parts, y, prob=1.0, generator=g)
    assert joint.shape == (6, 3) and t.shape == (6, 4 * 6)
    assert torch.allclose(t.sum(dim=1), torch.ones(6))
    assert torch.all(t[:, :6] == 0)  # every sample exchanged: the original block is empty
    for b in range(3):
        block = t[:, 6 * (b + 1): 6 * (b + 2)]
        assert torch.allclose(block.sum(dim=1), torch.full((6,), 1 / 3))
        partner = block.argmax(dim=1)
        assert torch.equal(joint[:, b], parts[b][partner, 0])  # branch b comes from that partner
    joint0, t0 = feature_exchange(parts, y, prob=0.0, generator=g)
    assert torch.equal(joint0, torch.cat(parts, 1)) and torch.equal(t0[:, :6], y) and t0[:, 6:].sum() == 0


# -- wave bank ----------------------------------------------------------------------------------


def test_wave_bank_tiles_crops_and_is_exact_for_16_bit_audio():
    a = (np.arange(5) - 2) / 32768.0
    b = np.linspace(-0.5, 0.5, 12, dtype=np.float32)
    bank = WaveBank([a, b])
    assert len(bank) == 2 and bank.length(0) == 5 and bank.data.dtype == np.int16
    assert np.array_equal(bank.crop(0, 12), np.tile(a, 3)[:12].astype(np.float32))
    assert np.allclose(bank.crop(1, 4, start=3), b[3:7], atol=1 / 32768)


# -- pseudo-labels -------------------------------------------------------------------------------


def test_gmm_bic_finds_the_number_of_blobs():
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(c, 0.3, size=(40, 2)) for c in ((0, 0), (5, 0), (0, 5))])
    labels, k, bics = gmm_bic(pts, max_components=6, seed=0)
    assert k == 3 and len(bics) == 6 and int(np.argmin(bics)) == 2
    assert adjusted_rand_score(np.repeat([0, 1, 2], 40), labels) == pytest.approx(1.0)


def test_gmm_with_a_fixed_count_fits_that_count_only():
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(c, 0.3, size=(40, 2)) for c in ((0, 0), (5, 0), (0, 5))])
    labels, k, bics = gmm_bic(pts, max_components=16, seed=0, fixed=5)
    assert k == 5 and len(bics) == 1 and len(set(labels)) == 5
    assert gmm_bic(pts[:6], max_components=16, fixed=5)[1] == 3  # at most half the points
    result = cluster_machine(pts, ["source"] * 120, seed=0, source_components=2)
    assert result.n_components == {"source": 2}


def test_cluster_machine_recovers_hidden_groups_per_domain(tmp_path):
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 16)) * 4
    truth = np.repeat([0, 1, 2], 30)
    emb = centres[truth] + rng.normal(size=(90, 16))
    target = centres[0] + 5 + rng.normal(size=(8, 16))
    result = cluster_machine(np.concatenate([emb, target]), ["source"] * 90 + ["target"] * 8, seed=0)
    assert result.n_components["source"] == 3 and result.n_components["target"] in (1, 2)  # at most 2
    assert adjusted_rand_score(truth, result.labels[:90]) > 0.95
    rows = [(str(tmp_path / f"{i}.wav"), "fan", "source", str(k)) for i, k in enumerate(result.labels[:3])]
    got = read_pseudo_labels(write_pseudo_labels(tmp_path / "p.csv", rows))
    assert got == {r[0]: r[3] for r in rows}


# -- detector -----------------------------------------------------------------------------------

TINY = dict(branches=["stft:512:256"], tile_seconds=1.0, channels=[4, 4, 8, 8], emb_dim=8, n_subclusters=2,
            epochs=4, batch_size=8, ensemble_epochs=[2, 4], n_clusters=2, device="cpu", seed=3)


def _tiny_data(n_per=12):
    """Two machine types with two attributes each; tones whose pitch is the attribute."""
    rng = np.random.default_rng(0)
    clips, waves = [], []
    for m, base in (("fan", 300.0), ("pump", 900.0)):
        for i in range(n_per):
            attr = i % 2
            domain = "target" if i >= n_per - 2 else "source"
            t = np.arange(12000) / 16000
            w = 0.3 * np.sin(2 * np.pi * base * (1 + 0.5 * attr) * t) + 0.05 * rng.normal(size=t.size)
            clips.append(Clip(Path(f"/x/{m}/train/{i}.wav"), m, "00", "train", domain, 0, (("a", str(attr)),)))
            waves.append(w.astype(np.float32))
    return clips, waves


def test_detector_fits_scores_saves_and_loads(tmp_path):
    clips, waves = _tiny_data()
    det = DiscriminativeDetector(**TINY).fit(clips, waves, context=FitContext(work_dir=tmp_path / "work"))
    assert det.machines_ == ["fan", "pump"] and len(det.classes_) == 8  # 2 machines x 2 attributes x 2 domains
    assert sorted(det.nets_) == [2, 4] and len(det.history_["epoch"]) == 4
    assert not list((tmp_path / "work").glob("*.ckpt"))  # checkpoints are deleted once fit succeeds
    scores = det.score_all(clips[:5], waves[:5])
    assert set(scores) == {"kmeans", "knn", "mahalanobis", "density", "kmeans_norm", "knn_norm"}
    assert all(np.isfinite(s).all() for s in scores.values())
    # a threshold per score mode and machine type: `stetho test --backend X` for every backend
    assert all(set(det.thresholds_[mode]) == {"fan", "pump"} for mode in det.score_modes)
    pred = det.predict(clips[:5], waves[:5], mode="knn")
    assert np.array_equal(pred, (scores["knn"] > det.threshold_for("knn", "fan")).astype(int))
    det.save(tmp_path / "d.pt")
    again = Detector.load(tmp_path / "d.pt")
    for mode in det.score_modes:
        assert np.array_equal(again.score(clips[:5], waves[:5], mode=mode), scores[mode])
        assert np.array_equal(again.decision_scores_[mode], det.decision_scores_[mode])
    assert again.thresholds_ == det.thresholds_ and again.calibration_ == det.calibration_
    assert again.threshold_for("kmeans", "pump") == det.threshold_for("kmeans", "pump")
    assert again.machines_ == det.machines_ and again.classes_ == det.classes_
    # the method's state holds no decisions: the base saves them (model format 2)
    assert not {"thresholds", "train_scores", "machines"} & set(det._get_state())
    odd = Clip(Path("/x/valve/test/0.wav"), "valve", "00", "test")
    with pytest.raises(StethoError, match="no training clips of machine type.*valve"):
        det.score([odd], [waves[0]])


def test_calibrated_decision_scores_are_of_clips_the_network_did_not_train_on(monkeypatch):
    clips, waves = _tiny_data()
    seen: list[list[str]] = []
    fit = DiscriminativeDetector._fit

    def spy(self, clips, feats, context):
        seen.append([str(c.path) for c in clips])
        return fit(self, clips, feats, context)

    monkeypatch.setattr(DiscriminativeDetector, "_fit", spy)
    det = DiscriminativeDetector(**TINY).fit(clips, waves)
    (trained,) = seen
    held = det.calibration_["file"]
    # 2 of the 10 source clips of each machine type held out (the 2 target clips are too few)
    assert len(held) == 4 and sorted(det.calibration_["machine"]) == ["fan", "fan", "pump", "pump"]
    assert not set(held) & set(trained) and sorted(held + trained) == sorted(str(c.path) for c in clips)
    assert len(det.train_machine_of_) == len(trained) == 20  # the backends know only the trained clips
    # the decision scores are the fitted detector's scores of the held-out clips
    idx = [[str(c.path) for c in clips].index(f) for f in held]
    again = det.score_all([clips[i] for i in idx], [waves[i] for i in idx])
    for mode in det.score_modes:
        assert det.decision_scores_[mode].shape == (4,)
        assert np.allclose(det.decision_scores_[mode], again[mode])


def test_official_thresholds_are_gamma_fits_of_cross_fitted_backend_scores(monkeypatch):
    """threshold="official" is the original: the network trains on every clip and each machine
    type's threshold is the Gamma 0.9 quantile of its training clips' backend scores, each
    cross-fitted over its domain (EmbeddingBackend.train_scores), averaged over the epochs."""
    clips, waves = _tiny_data()
    seen: list[int] = []
    fit = DiscriminativeDetector._fit
    monkeypatch.setattr(DiscriminativeDetector, "_fit", lambda self, c, f, x: (seen.append(len(c)), fit(self, c, f, x)))
    det = DiscriminativeDetector(**TINY, threshold="official").fit(clips, waves)
    assert seen == [len(clips)] and det.calibration_["file"] == [str(c.path) for c in clips]
    for m in ("fan", "pump"):
        idx = [i for i, c in enumerate(clips) if c.machine == m]
        for mode in ("kmeans", "knn", "knn_norm"):
            per_epoch = []
            for epoch, emb in det.train_embeddings_.items():
                rows = {d: [i for i in idx if (clips[i].domain or "source") == d] for d in ("source", "target")}
                be = make_backend(mode, seed=TINY["seed"], n_clusters=TINY["n_clusters"]).fit(
                    {d: emb[r] for d, r in rows.items()})
                s = be.train_scores({d: emb[r] for d, r in rows.items()}, seed=TINY["seed"])
                per_epoch.append(np.concatenate([s["source"], s["target"]]))
            expected = np.mean(per_epoch, axis=0)
            got = det.decision_scores_[mode][idx]  # clip order: the 10 source clips, then the 2 target ones
            assert np.allclose(got, expected)
            assert det.thresholds_[mode][m] == pytest.approx(gamma_threshold(expected, 0.9), rel=1e-9)
            # cross-fitted, not in-sample: a kNN memory would score its own clips 0
            assert mode != "knn" or (got > 1e-9).all()


class Killed(RuntimeError):
    pass


def test_detector_is_deterministic_and_resumes_a_killed_training(tmp_path, monkeypatch, caplog):
    clips, waves = _tiny_data(8)
    before = torch.get_rng_state().clone(), np.random.get_state()[1].copy()
    a = DiscriminativeDetector(**TINY).fit(clips, waves, context=FitContext(work_dir=tmp_path / "a"))
    # the training draws from its own seeded generators: the caller's global RNGs are untouched
    assert torch.equal(torch.get_rng_state(), before[0]) and np.array_equal(np.random.get_state()[1], before[1])
    b = DiscriminativeDetector(**TINY).fit(clips, waves)
    assert np.array_equal(a.score(clips, waves), b.score(clips, waves))
    assert a.history_["train_loss"] == b.history_["train_loss"]

    # killed after epoch 3 (its checkpoint of epoch 2 written, checkpoint_every=2), then run again
    run = Trainer.run

    def dying(self, step, batches, epochs, *, on_epoch=None, **kw):
        def die(epoch, hist):
            on_epoch(epoch, hist)
            if epoch == 3:
                raise Killed("killed")
        return run(self, step, batches, epochs, on_epoch=die, **kw)

    monkeypatch.setattr(Trainer, "run", dying)
    context = FitContext(work_dir=tmp_path / "c")
    with pytest.raises(Killed):
        DiscriminativeDetector(**TINY).fit(clips, waves, context=context)
    assert [p.name for p in (tmp_path / "c").glob("*.ckpt")] == ["discriminative_fan+pump.ckpt"]
    monkeypatch.setattr(Trainer, "run", run)
    with caplog.at_level(logging.INFO, logger="stetho.models.training"):
        c = DiscriminativeDetector(**TINY).fit(clips, waves, context=context)
    assert "discriminative main epochs: resuming after epoch 2 of 4" in caplog.text
    assert c.history_["epoch"] == [1, 2, 3, 4] and c.history_["train_loss"] == a.history_["train_loss"]
    for mode in a.score_modes:
        assert np.array_equal(c.score(clips, waves, mode=mode), a.score(clips, waves, mode=mode))
    assert c.thresholds_ == a.thresholds_
    assert not list((tmp_path / "c").glob("*.ckpt"))
    # other settings never resume another training's checkpoint
    other = DiscriminativeDetector(**{**TINY, "lr": 2e-3})
    assert other._fingerprint("main", clips) != a._fingerprint("main", clips)
    runtime = DiscriminativeDetector(**{**TINY, "progress": True, "checkpoint_every": 1})
    assert runtime._fingerprint("main", clips) == a._fingerprint("main", clips)


def test_detector_checks_its_settings():
    clips, waves = _tiny_data(4)
    with pytest.raises(ConfigError, match=r"ensemble_epochs=\[5\] must be within 1..4"):
        DiscriminativeDetector(**{**TINY, "ensemble_epochs": [5]}).fit(clips, waves)
    with pytest.raises(ConfigError, match="FFT branch needs at least 4.38 s"):
        DiscriminativeDetector(**{**TINY, "branches": ["fft"]}).fit(clips, waves)
    with pytest.raises(ConfigError, match="too small for the ResNet"):
        DiscriminativeDetector(**{**TINY, "branches": ["stft:512:4096"]}).check_params()
    bad = {
        "labels": ("sections", "expected one of attributes, machine_domain"),
        "epochs": (0, "expected an integer >= 1"),
        "score_mode": ("cosine", "expected one of kmeans, knn, mahalanobis, density, kmeans_norm, knn_norm"),
        "branches": (["mel:64"], "expected a list of 1\\+ items, each fft or stft:<n_fft>:<hop>"),
        "pseudo_label_clusters": (0, "expected an integer >= 1 or null"),
        "pseudo_label_embedding": ("pca", "expected one of classifier, triplet"),
        "checkpoint_every": (-1, "expected an integer >= 0"),
        "mixup_prob": (1.5, r"expected a number in \[0, 1\]"),
        "ensemble_epochs": ([], "expected a list of 1\\+ items, each an integer >= 1"),
    }
    for name, (value, allowed) in bad.items():
        with pytest.raises(ConfigError, match=rf"discriminative: params.{name}=.* is not allowed; {allowed}"):
            DiscriminativeDetector(**{**TINY, name: value}).check_params()
    declared = set(DiscriminativeDetector._parameter_constraints)
    assert declared == set(DiscriminativeDetector.param_defaults()) - set(COMMON_PARAMS)
    with pytest.raises(TypeError, match="resume"):  # resuming is automatic now
        DiscriminativeDetector(resume=True)


def test_classes_without_attributes_and_machine_domain_mode():
    clips, _ = _tiny_data(4)
    plain = [Clip(c.path, c.machine, c.section, c.split, c.domain, 0) for c in clips]
    det = DiscriminativeDetector(**TINY)
    assert set(det._class_names(plain)) == {"fan|source", "fan|target", "pump|source", "pump|target"}
    assert set(det._class_names(clips)) == {f"{m}|a_{a}|{d}" for m in ("fan", "pump") for a in "01"
                                           for d in ("source", "target")}
    det.labels = "machine_domain"
    assert set(det._class_names(clips)) == {"fan|source", "fan|target", "pump|source", "pump|target"}
    assert det._pseudo_targets(plain + clips[:0]) == {"fan", "pump"}
    assert det._pseudo_targets(clips) == set()


def test_signal_features_are_the_waveform_extract_reads(tmp_path):
    import soundfile as sf

    det = DiscriminativeDetector(**TINY)
    y = np.random.default_rng(2).uniform(-0.5, 0.5, 3000).astype(np.float32)
    sf.write(str(tmp_path / "a.wav"), y, det.sr, subtype="FLOAT")
    (from_file,) = det.extract([Clip(tmp_path / "a.wav", "fan", "00", "test")]).features
    assert det.signal_spec == (det.sr, 1024)
    np.testing.assert_array_equal(det.signal_features(y.astype(np.float64)), from_file)
