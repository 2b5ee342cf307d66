"""CANDE-CP (stetho.models.cande): networks, FiLM placement, embedding table, per-file votes,
the weighted window, stream order, best epochs, and the method on synthetic contexts; the
detector contract (calibration on held-out clips, save/load, resuming a killed training)."""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from stetho.datasets.clip import VALIDATION_META, Clip
from stetho.errors import ConfigError, DatasetError, NotFittedError, StethoError
from stetho.features import stack_frames
from stetho.models import CANDEDetector, Detector, get_model
from stetho.models.base import FitContext
from stetho.models.cande import ContextPredictor, FiLMAE, FiLMBlock, PlainAE
from stetho.models.cande.context import (
    context_indices, context_of, embedding_table, file_modes, file_votes, resolve_context_column, stream_order,
    window_weights, windowed_predictions,
)
from stetho.models.training import BestState


def _linears(net: torch.nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, torch.nn.Linear)]


# ---------------------------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------------------------


def test_plain_ae_architecture():
    net = PlainAE()
    assert _linears(net) == [(320, 64), (64, 64), (64, 8), (8, 64), (64, 64), (64, 320)]
    layers = list(net.layers)
    assert sum(isinstance(m, torch.nn.ReLU) for m in layers) == 5  # bottleneck too, not the output
    assert isinstance(layers[-1], torch.nn.Linear)
    # 320·64+64 + 64·64+64 + 64·8+8 + 8·64+64 + 64·64+64 + 64·320+320
    assert sum(p.numel() for p in net.parameters()) == 20_544 + 4_160 + 520 + 576 + 4_160 + 20_800
    assert net(torch.randn(3, 320)).shape == (3, 320)


def test_film_ae_architecture():
    net = FiLMAE(320, context_dim=16)
    assert (net.first.in_features, net.first.out_features) == (320, 64)
    assert [(b.linear.in_features, b.linear.out_features) for b in net.blocks] == [(64, 64), (64, 8), (8, 64), (64, 64)]
    assert all((b.gamma.in_features, b.beta.in_features) == (16, 16) for b in net.blocks)
    assert [b.gamma.out_features for b in net.blocks] == [64, 8, 64, 64]
    assert (net.last.in_features, net.last.out_features) == (64, 320)
    x = torch.randn(4, 320)
    a, b = torch.eye(16)[[0, 0, 0, 0]], torch.eye(16)[[3, 3, 3, 3]]
    assert net(x, a).shape == (4, 320)
    assert not torch.allclose(net(x, a), net(x, b))  # the context changes the reconstruction


def test_film_block_modulates_the_activations_after_relu_then_relu():
    block = FiLMBlock(2, 2, context_dim=1)
    with torch.no_grad():
        block.linear.weight.copy_(torch.eye(2))
        block.linear.bias.zero_()
        block.gamma.weight.copy_(torch.tensor([[-1.0], [2.0]]))
        block.gamma.bias.zero_()
        block.beta.weight.copy_(torch.tensor([[1.0], [1.0]]))
        block.beta.bias.copy_(torch.tensor([0.5, 0.5]))
    x, c = torch.tensor([[2.0, -3.0]]), torch.tensor([[1.0]])
    # By hand: h = ReLU([2, -3]) = [2, 0]; γ = [-1, 2]; β = [1.5, 1.5];
    # out = ReLU(γ ⊙ h + β) = ReLU([-0.5, 1.5]) = [0, 1.5].
    out = block(x, c)
    # Modulating before the block's ReLU would give ReLU([-2 + 1.5, -6 + 1.5]) = [0, 0]; leaving out
    # the final ReLU would give [-0.5, 1.5]; swapping γ and β would give ReLU([1.5·2 - 1, 1.5·0 + 2]) = [2, 2]:
    # all differ from the output.
    assert out.tolist() == [[0.0, 1.5]]
    # c = 0 leaves the biases: γ = a_γ = [0, 0], β = a_β = [0.5, 0.5] → ReLU(0 ⊙ h + 0.5) = [0.5, 0.5]
    # (γ and β swapped would give ReLU(0.5 ⊙ [2, 0]) = [1, 0]).
    assert block(x, torch.zeros(1, 1)).tolist() == [[0.5, 0.5]]


def test_context_predictor_architecture_and_embedding_layer():
    net = ContextPredictor(320, 16)
    assert _linears(net) == [(320, 512), (512, 512), (512, 256), (256, 128), (128, 128), (128, 64), (64, 16)]
    assert net.embedding_dim == 64
    x = torch.randn(8, 320) * 10
    emb = net.embed(x)
    assert emb.shape == (8, 64) and (emb < 0).any()  # the pre-activation output, before its ReLU
    assert torch.allclose(net(x), net.head(torch.relu(emb)))
    small = ContextPredictor(10, 3, hidden=(6, 4))
    assert _linears(small) == [(10, 6), (6, 4), (4, 3)] and small.embed(torch.randn(2, 10)).shape == (2, 4)


# ---------------------------------------------------------------------------------------------
# contexts: table, votes, window, order
# ---------------------------------------------------------------------------------------------


def test_embedding_table_by_hand():
    emb = np.array([[1, 10, 7], [3, 10, 7], [4, 0, 7], [0, 5, 7], [0, 5, 7]], dtype=float)
    ctx = np.array([0, 0, 1, 2, 2])
    # means per context: [2, 10, 7], [4, 0, 7], [0, 5, 7]; per dimension min [0, 0, 7], max [4, 10, 7];
    # (mean - min) / (max - min), a dimension without range → 0.
    table = embedding_table(emb, ctx, 3)
    np.testing.assert_allclose(table, [[0.5, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    np.testing.assert_allclose(embedding_table(emb, np.zeros(5, dtype=int), 1), [[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match=r"contexts \[3\] have no frames"):
        embedding_table(emb, ctx, 4)


def test_file_votes_and_modes():
    frames = np.array([2, 2, 1, 0, 0, 1, 1, 3])
    owners = np.array([0, 0, 0, 1, 1, 1, 1, 2])
    votes = file_votes(frames, owners, 3, 4)
    assert votes.tolist() == [[0, 1, 2, 0], [2, 2, 0, 0], [0, 0, 0, 1]]
    assert file_modes(votes).tolist() == [2, 0, 3]  # file 1: a 2-2 tie goes to the lower index


def test_window_weights_by_hand():
    np.testing.assert_allclose(window_weights(3, 0.1), [0.81, 0.9, 1.0])  # oldest t = 1: 0.9^(3-1)
    np.testing.assert_allclose(window_weights(1, 0.5), [1.0])


def test_windowed_predictions_by_hand():
    # W = 3, λ = 0.5: weights of a full window 0.25, 0.5, 1 (oldest first).
    # n=1 [0]: 0 | n=2 [0,1]: 0.5 vs 1 → 1 | n=3 [0,1,1]: 0.25 vs 1.5 → 1
    # n=4 [1,1,0]: ctx1 0.75, ctx0 1 → 0 | n=5 [1,0,2]: 0.25, 0.5, 1 → 2
    assert windowed_predictions([0, 1, 1, 0, 2], 3, window=3, lam=0.5).tolist() == [0, 1, 1, 0, 2]
    # λ = 0.1, W = 50: one dissenting file after three agreeing ones: 0.729 + 0.81 + 0.9 > 1
    assert windowed_predictions([0, 0, 0, 1], 2, window=50, lam=0.1).tolist() == [0, 0, 0, 0]
    # the window holds W files only: at n=4 it is [1, 1] → 1; at n=3 [0, 1]: 0.9 vs 1 → 1
    assert windowed_predictions([0, 0, 0, 1, 1], 2, window=2, lam=0.1).tolist() == [0, 0, 0, 1, 1]
    # a tie (λ = 0, [0, 1]) goes to the newest prediction
    assert windowed_predictions([0, 1], 2, window=2, lam=0.0).tolist() == [0, 1]
    # reset per directory: the window restarts where the group changes
    preds, groups = [0, 0, 0, 1, 1], ["a", "a", "a", "b", "b"]
    assert windowed_predictions(preds, 2).tolist() == [0, 0, 0, 0, 0]  # 5th: 0.6561+0.729+0.81 > 0.9+1
    assert windowed_predictions(preds, 2, groups=groups).tolist() == [0, 0, 0, 1, 1]


def _clip(path: str, machine: str = "fan", section: str = "00_6dB", split: str = "test", label: int = 0,
          meta=(("id", "00"), ("snr", "6")), attributes=()) -> Clip:
    return Clip(Path(path), machine, section, split, label=label, meta=meta, attributes=attributes)


def test_stream_order_is_sorted_by_path_or_seeded():
    clips = [_clip(p) for p in ("/d/b/2.wav", "/d/a/9.wav", "/d/b/1.wav", "/d/a/10.wav")]
    assert stream_order(clips).tolist() == [3, 1, 2, 0]  # /d/a/10, /d/a/9, /d/b/1, /d/b/2
    shuffled = stream_order(clips, "shuffle", seed=5)
    assert sorted(shuffled.tolist()) == [0, 1, 2, 3] and shuffled.tolist() == stream_order(clips, "shuffle", 5).tolist()
    with pytest.raises(ConfigError, match="unknown stream order 'random'"):
        stream_order(clips, "random")


def test_context_columns():
    mimii = _clip("/m/6_dB_fan/fan/id_02/normal/0.wav", section="02_6dB", meta=(("id", "02"), ("snr", "6")))
    dcase = Clip(Path("/d/fan/test/section_01_x.wav"), "fan", "01", "test", attributes=(("spd", "20"), ("load", "1")))
    assert context_of(mimii, "machine_id") == "fan_id_02"  # the SNR is not part of it
    assert context_of(mimii, "machine_section") == "fan_section_02_6dB"
    assert context_of(dcase, "machine_section") == "fan_section_01"
    assert context_of(dcase, "attributes") == "fan_spd_20_load_1"
    assert context_of(replace(dcase, attributes=()), "attributes") == "fan"
    assert context_of(dcase, "machine") == "fan"
    assert resolve_context_column([mimii], "auto") == "machine_id"
    assert resolve_context_column([mimii, dcase], "auto") == "machine_section"
    with pytest.raises(ConfigError, match="unknown context column 'snr'; choose from auto, machine_id"):
        resolve_context_column([mimii], "snr")
    with pytest.raises(DatasetError, match=r"/d/fan/test/section_01_x.wav: no machine ID"):
        context_of(dcase, "machine_id")
    with pytest.raises(DatasetError, match=r"1 test clip\(s\) have a context \(machine_id\) that was never seen"
                                           r"(.|\n)*6_dB_fan/fan/id_02/normal/0.wav \(fan_id_02\)"):
        context_indices([mimii], "machine_id", ["fan_id_00", "pump_id_00"], "test")


def test_best_state_keeps_the_best_epoch():
    net = torch.nn.Linear(1, 1)
    best = BestState(net, higher_is_better=True)
    weights = {}
    for epoch, value in enumerate([0.5, 0.8, float("nan"), 0.8, 0.7], start=1):
        with torch.no_grad():
            net.weight.fill_(float(epoch))
        weights[epoch] = float(net.weight.detach())
        best.update(epoch, value)
    assert best.restore() == 2 and float(net.weight.detach()) == weights[2]  # a tie keeps the earlier epoch
    lowest = BestState(net, higher_is_better=False)
    for epoch, value in enumerate([3.0, 1.0, 2.0], start=1):
        lowest.update(epoch, value)
    assert lowest.epoch == 2 and lowest.value == 1.0
    assert BestState(net).restore() is None


# ---------------------------------------------------------------------------------------------
# synthetic contexts: normal sounds differ per context
# ---------------------------------------------------------------------------------------------

PEAKS = (8, 22, 36, 50)  # mel bin of each context's tone


def _frames(rng: np.random.Generator, k: int, n: int = 20) -> np.ndarray:
    """Log-mel-like frames (n, 64) of context k: a tilted noise floor, a tone at PEAKS[k] and a
    weaker partial 6 bins above, 3 dB frame noise."""
    mel = np.arange(64)
    shape = (-60.0 - 0.2 * mel + 30.0 * np.exp(-0.5 * ((mel - PEAKS[k]) / 1.5) ** 2)
             + 12.0 * np.exp(-0.5 * ((mel - PEAKS[k] - 6) / 1.5) ** 2))
    return (shape + rng.normal(scale=3.0, size=(n, 64))).astype(np.float32)


def synthetic(seed: int, n_train: int = 20, n_val: int = 4, n_test: int = 24):
    """Four contexts (machine "m", IDs 00-03). Test files of a context, interleaved in path order:
    normals, contextual anomalies (the normal sound of *another* context) and perturbations (a
    narrow-band bump). Returns (train clips, train features, test clips, test features)."""
    rng = np.random.default_rng(seed)
    tr, trf, te, tef = [], [], [], []
    for k in range(4):
        meta = (("id", f"{k:02d}"),)
        for i in range(n_train + n_val):
            extra = (VALIDATION_META,) if i >= n_train else ()
            tr.append(_clip(f"/syn/id_{k:02d}/train/{i:03d}.wav", "m", f"{k:02d}", "train", 0, meta + extra))
            trf.append(_frames(rng, k))
        for i in range(n_test):
            kind = i % 4  # 0, 1 normal; 2 contextual anomaly; 3 perturbation
            if kind == 2:
                f = _frames(rng, int((k + 1 + rng.integers(3)) % 4))
            else:
                f = _frames(rng, k)
                if kind == 3:
                    f[:, 28:31] += 8.0
            te.append(_clip(f"/syn/id_{k:02d}/test/{i:03d}.wav", "m", f"{k:02d}", "test", int(kind >= 2), meta))
            tef.append(f)
    return tr, trf, te, tef


FAST = dict(epochs=20, batch_size=64, lr=1e-3, predictor_epochs=8, predictor_batch_size=128, predictor_lr=1e-3,
            predictor_hidden=(64, 64, 32), window=10, device="cpu")


@pytest.fixture(scope="module", params=[0, 1], ids=["seed0", "seed1"])
def fitted(request):
    seed = request.param
    tr, trf, te, tef = synthetic(seed)
    y = np.array([c.label for c in te])
    out = {}
    for variant in ("film-onehot", "film-embedding", "separate", "unconditioned"):
        # threshold="official": every training clip trains (the measured AUCs below), thresholds in-sample
        det = CANDEDetector(variant=variant, seed=seed, threshold="official", **FAST).fit(tr, trf)
        rev = list(range(len(te)))[::-1]  # given in reverse: the stream must still run in path order
        scores = det.score_all([te[i] for i in rev], [tef[i] for i in rev])
        out[variant] = (det, {m: s[np.argsort(rev)] for m, s in scores.items()}, det.report_tables())
    return seed, (tr, trf, te, tef, y), out


def test_conditioned_ae_with_predicted_context_beats_the_unconditioned_one(fitted):
    _, (*_, y), out = fitted
    auc = {(v, m): roc_auc_score(y, s) for v, (_, scores, _) in out.items() for m, s in scores.items()}
    base = auc[("unconditioned", "oracle")]
    assert auc[("unconditioned", "predicted_window")] == base  # no context: the same in every mode
    for variant in ("film-onehot", "film-embedding", "separate"):
        # measured 0.90-0.91 for each of the three vs 0.642 (seed 0) and 0.706 (seed 1)
        assert auc[(variant, "predicted_window")] > base + 0.12, (variant, auc)
        assert auc[(variant, "oracle")] > 0.97
        # a contextual anomaly sounds like another context: without the window it is predicted
        # as that context and reconstructed well
        assert auc[(variant, "predicted")] < auc[(variant, "predicted_window")]


def test_windowed_context_accuracy_is_at_least_the_raw_one(fitted):
    _, _, out = fitted
    for variant in ("film-onehot", "film-embedding", "separate"):
        acc = out[variant][2]["context_accuracy"][0]
        assert acc["scope"] == "all" and acc["files"] == 96
        # raw: the 24 contextual anomalies are predicted as their sound's context (0.75);
        # windowed: only the first files after each context change are wrong (measured 0.906)
        assert acc["accuracy"] == pytest.approx(0.75, abs=0.03)
        assert acc["accuracy (window)"] >= acc["accuracy"] + 0.1
    assert out["unconditioned"][2] == {}  # no predictor, no context tables


def test_context_stream_is_recorded_in_sorted_order(fitted):
    _, (_, _, te, tef, _), out = fitted
    det, _, tables = out["film-onehot"]
    rows = tables["context_stream"]
    assert [r["order"] for r in rows] == list(range(len(te)))
    assert [r["file"] for r in rows] == sorted(str(c.path) for c in te)
    assert {r["context"] for r in rows} == {"m_id_00", "m_id_01", "m_id_02", "m_id_03"}
    raw = [det.contexts_.index(r["predicted"]) for r in rows]
    assert [det.contexts_[k] for k in windowed_predictions(raw, 4, 10, 0.1)] == [r["predicted_window"] for r in rows]
    # the prediction is the mode of the predictor's frame argmaxes; the frame share is its share of frames
    feats = {str(c.path): f for c, f in zip(te, tef)}

    def frame_argmax(logmel):
        with torch.no_grad():
            return det.predictor_(torch.from_numpy(np.array(stack_frames(logmel, 5)))).argmax(1).numpy()

    argmax = [frame_argmax(feats[r["file"]]) for r in rows]
    assert [det.contexts_[np.bincount(a, minlength=4).argmax()] for a in argmax] == [r["predicted"] for r in rows]
    np.testing.assert_allclose([r["frame share"] for r in rows],
                               [np.mean(a == det.contexts_.index(r["predicted"])) for a, r in zip(argmax, rows)])
    # every synthetic file is unanimous (share 1); a file made of 14 frames of context 0 then 6 of context 2
    # (16 vectors: 10 all context 0, 4 mixed, 2 all context 2) is not
    mixed = np.concatenate([tef[0][:14], tef[48][:6]])  # te[0]: id_00 normal, te[48]: id_02 normal
    probe = copy.deepcopy(det)
    probe.score_all([te[0]], [mixed])
    share = probe.report_tables()["context_stream"][0]["frame share"]
    assert share == pytest.approx(np.mean(frame_argmax(mixed) == 0)) and 10 / 16 <= share <= 14 / 16
    per_context = [r for r in tables["context_accuracy"] if r["scope"] == "context"]
    assert [r["name"] for r in per_context] == det.contexts_ and all(r["files"] == 24 for r in per_context)


def test_best_epochs_follow_the_validation_clips(fitted):
    seed, (tr, trf, *_), out = fitted
    det = out["film-embedding"][0]
    hist = det.predictor_history_
    assert det.predictor_best_epoch_ == 1 + int(np.argmax(hist["val_accuracy"]))
    assert hist["best"].count(1) == 1 and hist["best"][det.predictor_best_epoch_ - 1] == 1
    # the restored predictor has the best epoch's validation frame accuracy
    val = [(c, f) for c, f in zip(tr, trf) if c.is_validation]
    x = torch.from_numpy(np.concatenate([stack_frames(f, 5) for _, f in val]))
    y = np.concatenate([[det.contexts_.index(context_of(c, "machine_id"))] * (len(f) - 4) for c, f in val])
    with torch.no_grad():
        acc = float((det.predictor_(x).argmax(1).numpy() == y).mean())
    assert acc == pytest.approx(max(hist["val_accuracy"]))
    ae_hist = det.history_
    assert det.ae_best_epochs_["film-embedding"] == 1 + int(np.nanargmin(ae_hist["val_loss"]))
    assert len(det.table_) == 4 and det.table_.min() == 0.0 and det.table_.max() == 1.0  # min-max per dim


def test_thresholds_save_load_and_predict(fitted, tmp_path):
    _, (tr, _, te, tef, _), out = fitted
    det, scores, _ = out["film-embedding"]
    assert det.thresholds_.keys() == {"predicted_window", "predicted", "oracle"}
    assert all(per.keys() == {"m"} for per in det.thresholds_.values())
    # official: the original's Gamma fit of the training files' oracle scores, for every mode
    assert det.threshold_for("oracle", "m") == det.threshold_for("predicted", "m") > 0
    assert det.calibration_["file"] == [str(c.path) for c in tr if not c.is_validation]  # validation: neither
    for mode in det.score_modes:
        np.testing.assert_array_equal(det.decision_scores_[mode], det.decision_scores_["oracle"])
    det.save(tmp_path / "cande.pt")
    loaded = Detector.load(tmp_path / "cande.pt")
    assert isinstance(loaded, CANDEDetector) and loaded.contexts_ == det.contexts_
    again = loaded.score_all(te, tef)
    for mode in det.score_modes:
        np.testing.assert_allclose(again[mode], scores[mode], rtol=1e-5)
    np.testing.assert_allclose(loaded.table_, det.table_)
    assert loaded.report_tables()["context_stream"] == det.report_tables()["context_stream"]
    pred = loaded.predict(te, tef, mode="oracle")
    assert pred.tolist() == (scores["oracle"] > det.threshold_for("oracle", "m")).astype(int).tolist()
    assert get_model("cande") is CANDEDetector


def test_separate_variant_trains_one_ae_per_context():
    tr, trf, te, tef = synthetic(3, n_train=6, n_val=2, n_test=4)
    det = CANDEDetector(variant="separate", **{**FAST, "epochs": 2, "predictor_epochs": 2}).fit(tr, trf)
    assert len(det.aes_) == 4 and all(isinstance(n, PlainAE) for n in det.aes_)
    assert sorted(det.ae_best_epochs_) == det.contexts_
    parts = det.histories()
    assert set(parts) == {"", "predictor", "contexts"} and len(parts["contexts"]["context"]) == 4 * 2
    scores = det.score_all(te, tef)
    assert all(s.shape == (16,) and np.isfinite(s).all() for s in scores.values())


def _direct_mse(net: torch.nn.Module, logmel: np.ndarray) -> float:
    """Mean per-frame MSE of a plain AE on one clip, computed without the detector."""
    x = torch.from_numpy(np.array(stack_frames(logmel, 5)))
    with torch.no_grad():
        return float((x - net(x)).square().mean(dim=1).mean())


def test_separate_variant_scores_a_clip_with_the_ae_of_the_chosen_context(fitted):
    _, (_, _, te, tef, y), out = fitted
    det, scores, _ = out["separate"]
    true = context_indices(te, "machine_id", det.contexts_, "test")
    chosen = {"oracle": true, **{m: k for m, k in det.predict_contexts(te, tef).items() if m != "order"}}
    mse = np.array([[_direct_mse(net, f) for net in det.aes_] for f in tef])  # (clip, context's AE)
    for mode, k in chosen.items():
        np.testing.assert_allclose(scores[mode], mse[np.arange(len(te)), k], rtol=1e-5, err_msg=mode)
    # the AEs differ enough for this to tell them apart: any other context's AE reconstructs a normal clip
    # far worse than its own context's AE
    normal = y == 0
    own = mse[np.arange(len(te)), true]
    others = np.where(np.eye(4, dtype=bool)[true], np.inf, mse)  # (clip, AE), its own context's AE masked
    assert np.all(others[normal].min(axis=1) > 2 * own[normal])
    # the contextual anomalies predicted as the context they sound like are scored by that context's AE
    moved = chosen["predicted"] != true
    assert moved.sum() >= 20 and not np.allclose(scores["predicted"][moved], scores["oracle"][moved])


def test_embedding_table_is_built_from_the_predictor_on_the_training_frames():
    tr, trf, _, _ = synthetic(5, n_train=6, n_val=2, n_test=0)
    det = CANDEDetector(variant="film-embedding", seed=5, threshold="official",  # every training frame
                        **{**FAST, "epochs": 1, "predictor_epochs": 3, "predictor_hidden": (128, 64)}).fit(tr, trf)
    ctx_of = lambda c: det.contexts_.index(context_of(c, "machine_id"))  # noqa: E731

    def frames(validation: bool):
        part = [(c, f) for c, f in zip(tr, trf) if validation or not c.is_validation]
        x = torch.from_numpy(np.concatenate([stack_frames(f, 5) for _, f in part]))
        with torch.no_grad():
            emb = det.predictor_.embed(x).double().numpy()  # the 64-unit layer, before its ReLU
        return emb, np.concatenate([[ctx_of(c)] * (len(f) - 4) for c, f in part])

    emb, ctx = frames(validation=False)
    assert emb.shape == (6 * 4 * 16, 64) and (emb < 0).any()
    expected = embedding_table(emb, ctx, 4)
    np.testing.assert_allclose(det.table_, expected, rtol=0, atol=1e-6)
    # the FiLM AE is conditioned on exactly these rows
    np.testing.assert_allclose(det.codes_.numpy(), expected, rtol=0, atol=1e-6)
    assert all(b.gamma.in_features == b.beta.in_features == 64 for b in det.aes_[0].blocks)
    # what the table is not (each differs from it by far more than the tolerance above):
    # the ReLU'd layer output, the validation frames included, the frames' own mean without normalisation
    relu = embedding_table(np.maximum(emb, 0), ctx, 4)
    with_val = embedding_table(*frames(validation=True), 4)
    raw_means = np.stack([emb[ctx == k].mean(axis=0) for k in range(4)])
    for wrong in (relu, with_val, raw_means):
        assert np.abs(wrong - det.table_).max() > 1e-2


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


def test_bad_parameters_and_inputs_are_named():
    for kwargs, message in (
            ({"variant": "film"}, "params.variant='film' is not allowed; expected one of film-onehot, film-embedding"),
            ({"context": "snr"}, "params.context='snr' is not allowed; expected one of auto, machine_id"),
            ({"score_mode": "window"}, "params.score_mode='window' is not allowed; expected one of predicted_window"),
            ({"window_lambda": 1.0}, r"params.window_lambda=1.0 is not allowed; expected a number in \[0, 1\)"),
            ({"stream_order": "random"}, "params.stream_order='random' is not allowed; expected one of path, shuffle"),
            ({"epochs": 0}, "params.epochs=0 is not allowed; expected an integer >= 1"),
            ({"predictor_epochs": 0}, "params.predictor_epochs=0 is not allowed"),
            ({"validation_split": 1.5}, r"params.validation_split=1.5 is not allowed; expected a number in \[0, 1\)"),
            ({"predictor_hidden": []}, r"params.predictor_hidden=\[\] is not allowed; expected a list of 1\+ items"),
            ({"predictor_hidden": [64, "x"]}, r"params.predictor_hidden=\[64, 'x'\] is not allowed"),
            ({"log_floor": "min"}, "params.log_floor='min' is not allowed; expected one of add, max"),
            ({"threshold": "gamma"}, "params.threshold='gamma' is not allowed; expected one of calibrated, official")):
        with pytest.raises(ConfigError, match="^cande: " + message) as err:
            CANDEDetector(**kwargs).check_params()
        assert "\n" not in str(err.value)
        with pytest.raises(ConfigError, match=message):  # fit checks before it looks at a clip
            CANDEDetector(**kwargs).fit([], [])
    assert set(CANDEDetector.param_defaults()) <= set(CANDEDetector.parameter_constraints())
    assert CANDEDetector(predictor_hidden=(np.int64(16), 8)).predictor_hidden == [16, 8]  # plain ints, saved
    with pytest.raises(NotFittedError):
        CANDEDetector().score_all([], [])
    tr, trf, te, tef = synthetic(4, n_train=4, n_val=0, n_test=4)
    train = [(c, f) for c, f in zip(tr, trf) if c.get_meta("id") != "03"]  # context 03 never trained
    det = CANDEDetector(variant="film-onehot", **{**FAST, "epochs": 1, "predictor_epochs": 1})
    det.fit([c for c, _ in train], [f for _, f in train])
    assert det.contexts_ == ["m_id_00", "m_id_01", "m_id_02"]
    with pytest.raises(DatasetError, match=r"4 test clip\(s\) have a context \(machine_id\) that was never seen "
                                           r"in training(.|\n)*/syn/id_03/test/000.wav \(m_id_03\)"):
        det.score_all(te, tef)
    other = [Clip(c.path, "pump", c.section, "test", label=0, meta=c.meta) for c in te[:2]]
    with pytest.raises(StethoError, match="no training clips of machine type\\(s\\) pump"):
        det.score_all(other, tef[:2])
    with pytest.raises(DatasetError, match="no machine ID"):
        CANDEDetector(context="machine_id", **FAST).fit(
            [Clip(Path("/x/a.wav"), "fan", "00", "train")], [trf[0]])


def test_predict_contexts_and_the_window_reset_per_directory(fitted):
    _, (_, _, te, tef, _), out = fitted
    det = out["film-onehot"][0]
    got = det.predict_contexts(te, tef)
    order = stream_order(te)
    assert got["order"][order].tolist() == list(range(len(te)))
    raw = got["predicted"][order]
    assert got["predicted_window"][order].tolist() == windowed_predictions(raw, 4, 10, 0.1).tolist()
    det.reset_window_per_directory = True
    try:
        reset = det.predict_contexts(te, tef)
    finally:
        det.reset_window_per_directory = False
    dirs = [str(te[i].path.parent) for i in order]
    assert reset["predicted_window"][order].tolist() == windowed_predictions(raw, 4, 10, 0.1, groups=dirs).tolist()
    true = context_indices(te, "machine_id", det.contexts_, "test")
    # one directory per context here: a window that restarts there never carries the last context over
    assert (reset["predicted_window"] == true).mean() >= (got["predicted_window"] == true).mean()
    with pytest.raises(StethoError, match="unconditioned variant has no context predictor"):
        out["unconditioned"][0].predict_contexts(te, tef)


# ---------------------------------------------------------------------------------------------
# the detector contract: calibration, persistence, resuming
# ---------------------------------------------------------------------------------------------

SMALL = {**FAST, "epochs": 4, "predictor_epochs": 3, "threads": 1}


def _spy_fit(monkeypatch) -> list[tuple[list[Clip], FitContext]]:
    """Record the clips and context every ``_fit`` call receives."""
    calls: list[tuple[list[Clip], FitContext]] = []
    original = CANDEDetector._fit

    def spy(self, clips, feats, context):
        calls.append((list(clips), context))
        return original(self, clips, feats, context)

    monkeypatch.setattr(CANDEDetector, "_fit", spy)
    return calls


def test_calibrated_decision_scores_are_of_clips_the_model_did_not_train_on(monkeypatch):
    tr, trf, te, tef = synthetic(7, n_train=10, n_val=2, n_test=4)
    calls = _spy_fit(monkeypatch)
    det = CANDEDetector(variant="film-onehot", seed=7, **SMALL).fit(tr, trf)  # default: calibrated, holdout
    assert len(calls) == 1
    trained, context = calls[0]
    trained_files = {str(c.path) for c in trained}
    cal = det.calibration_["file"]
    # 20 % of each context's 10 training clips held out; the marked validation clips are in neither part
    assert len(cal) == 8 and sorted(cal) == cal and not set(cal) & trained_files
    assert len(trained) == 32 and all(not c.is_validation for c in trained)
    assert sorted(str(c.path) for c in context.validation[0]) == sorted(str(c.path) for c in tr if c.is_validation)
    assert trained_files | set(cal) == {str(c.path) for c in tr if not c.is_validation}
    assert det.report_tables() == {}  # the calibration clips' stream is not reported as a scoring
    # decision_scores_ are the fitted model's scores of exactly those clips, each context's clips
    # streamed on their own (a window carried over from another context would inflate them)
    by_path = {str(c.path): (c, f) for c, f in zip(tr, trf)}
    names = det._context_names([by_path[f][0] for f in cal])
    for mode in det.score_modes:
        assert det.decision_scores_[mode].shape == (8,)
    for name in sorted(set(names)):
        idx = [i for i, n in enumerate(names) if n == name]
        again = det.score_all([by_path[cal[i]][0] for i in idx], [by_path[cal[i]][1] for i in idx])
        for mode in det.score_modes:
            np.testing.assert_allclose(det.decision_scores_[mode][idx], again[mode], rtol=1e-6)
    one_stream = det.score_all([by_path[f][0] for f in cal], [by_path[f][1] for f in cal])
    assert not np.allclose(one_stream["predicted_window"], det.decision_scores_["predicted_window"])
    assert det.thresholds_.keys() == set(det.score_modes) and all(v.keys() == {"m"} for v in det.thresholds_.values())
    # the validation clips may also come in the context only (as the pipeline gives them): same training
    calls.clear()
    train = [(c, f) for c, f in zip(tr, trf) if not c.is_validation]
    val = [(c, f) for c, f in zip(tr, trf) if c.is_validation]
    other = CANDEDetector(variant="film-onehot", seed=7, **SMALL).fit(
        [c for c, _ in train], [f for _, f in train],
        FitContext(validation=([c for c, _ in val], [f for _, f in val])))
    assert [str(c.path) for c in calls[0][0]] == [str(c.path) for c in trained]
    assert other.calibration_ == det.calibration_
    for mode in det.score_modes:
        np.testing.assert_array_equal(other.decision_scores_[mode], det.decision_scores_[mode])


def test_the_last_training_clip_of_a_context_is_never_held_out(monkeypatch):
    tr, trf, _, _ = synthetic(8, n_train=6, n_val=0, n_test=0)
    # context 03 has one clip: holding it out would leave no AE for it
    keep = [i for i, c in enumerate(tr) if c.get_meta("id") != "03" or c.path.name == "000.wav"]
    clips, feats = [tr[i] for i in keep], [trf[i] for i in keep]
    calls = _spy_fit(monkeypatch)
    det = CANDEDetector(variant="film-onehot", **{**SMALL, "epochs": 1, "predictor_epochs": 1}).fit(clips, feats)
    assert det.contexts_ == ["m_id_00", "m_id_01", "m_id_02", "m_id_03"]
    assert "/syn/id_03/train/000.wav" in {str(c.path) for c in calls[0][0]}
    assert len(det.calibration_["file"]) == 3 and all("id_03" not in f for f in det.calibration_["file"])
    # a machine type whose every context has a single clip cannot spare one: a one-line error saying what to do
    single = [tr[i] for i in range(0, 24, 6)]
    with pytest.raises(ConfigError, match="machine type m has no training clip to spare for calibration.*"
                                          "params.threshold=official"):
        CANDEDetector(variant="film-onehot", **SMALL).fit(single, [trf[i] for i in range(0, 24, 6)])
    # cross-fitting cannot keep it: a fold holding out context 03's only clip is refused before any training
    with pytest.raises(ConfigError, match=r"too few training clips of context\(s\) m_id_03 for 3-fold calibration"):
        CANDEDetector(variant="film-onehot", calibration="cv", calibration_folds=3, **SMALL).fit(clips, feats)


def test_save_load_round_trip_gives_identical_scores_and_thresholds(tmp_path):
    tr, trf, te, tef = synthetic(9, n_train=10, n_val=2, n_test=8)
    det = CANDEDetector(variant="film-embedding", seed=9, **SMALL).fit(tr, trf)
    scores = det.score_all(te, tef)
    det.save(tmp_path / "cande.pt")
    loaded = Detector.load(tmp_path / "cande.pt")
    assert isinstance(loaded, CANDEDetector) and loaded.get_params() == det.get_params()
    assert loaded.thresholds_ == det.thresholds_ and loaded.calibration_ == det.calibration_
    assert loaded.machines_ == det.machines_ == ["m"]
    again = loaded.score_all(te, tef)
    for mode in det.score_modes:
        np.testing.assert_array_equal(loaded.decision_scores_[mode], det.decision_scores_[mode])
        np.testing.assert_array_equal(again[mode], scores[mode])
        np.testing.assert_array_equal(loaded.predict(te, tef, mode), det.predict(te, tef, mode))
    assert loaded.histories() == det.histories()
    assert loaded.report_tables() == det.report_tables()
    state = det._get_state()
    assert not {"thresholds", "train_scores", "machines"} & set(state)  # the base saves those


def test_without_validation_the_last_epochs_are_kept_and_no_log_line_says_nan(caplog):
    tr, trf, _, _ = synthetic(11, n_train=6, n_val=0, n_test=0)
    with caplog.at_level(logging.INFO, logger="stetho"):
        det = CANDEDetector(variant="separate", validation_split=0, **{**SMALL, "epochs": 2, "predictor_epochs": 2}
                            ).fit(tr, trf)
    assert det.predictor_best_epoch_ is None and set(det.ae_best_epochs_.values()) == {None}
    assert all(np.isnan(v) for v in det.history_["val_loss"]) and det.predictor_history_["best"] == [0, 0]
    assert "no validation files, the last epoch is kept" in caplog.text
    assert "nan" not in caplog.text.lower()


class _Killed(Exception):
    """The training process dying mid-way (raised from the per-epoch callback)."""


@pytest.mark.parametrize(("stage", "at", "variant"), [("predictor", 2, "film-embedding"), ("ae", 3, "film-embedding"),
                                                      ("ae", 2, "separate")])
def test_a_killed_training_resumes_from_its_checkpoints(tmp_path, monkeypatch, caplog, stage, at, variant):
    tr, trf, te, tef = synthetic(10, n_train=8, n_val=2, n_test=4)
    params = dict(variant=variant, seed=10, **{**SMALL, "epochs": 5, "predictor_epochs": 4})
    work = tmp_path / "work"
    update = BestState.update
    seen: dict[int, int] = {}

    def dying(self, epoch, value):  # BestState.update runs before the epoch's checkpoint is written
        if self.higher_is_better == (stage == "predictor") and epoch == at:
            seen[epoch] = seen.get(epoch, 0) + 1
            if seen[epoch] == 2 or variant != "separate":  # separate: the second context's AE dies
                raise _Killed(f"killed at epoch {epoch}")
        return update(self, epoch, value)

    with monkeypatch.context() as m:
        m.setattr(BestState, "update", dying)
        with pytest.raises(_Killed):
            CANDEDetector(**params).fit(tr, trf, context=FitContext(work_dir=work))
    left = sorted(p.name for p in work.iterdir())
    expected = {"predictor": ["cande_m_predictor.ckpt"],
                "ae": ["cande_m_ae.ckpt", "cande_m_predictor.ckpt"] if variant != "separate" else
                ["cande_m_ae_000.ckpt", "cande_m_ae_001.ckpt", "cande_m_predictor.ckpt"]}[stage]
    assert left == expected
    with caplog.at_level(logging.INFO, logger="stetho.models.training"):
        resumed = CANDEDetector(**params).fit(tr, trf, context=FitContext(work_dir=work))
    assert f"after epoch {at - 1} of" in caplog.text  # continued from the last checkpoint
    assert not list(work.glob("*.ckpt"))  # a finished fit removes its checkpoints
    fresh = CANDEDetector(**params).fit(tr, trf)  # uninterrupted, no checkpoints
    assert resumed.histories() == fresh.histories()
    assert resumed.thresholds_ == fresh.thresholds_
    a, b = resumed.score_all(te, tef), fresh.score_all(te, tef)
    for mode in fresh.score_modes:
        np.testing.assert_array_equal(a[mode], b[mode])
