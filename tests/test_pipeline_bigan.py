"""BiGAN through the shared CLI/API (train, test, per-machine models, histories, both score modes)
and the evidence on synthetic machine sounds: official score above chance across 2 seeds, measured
against the same networks untrained (at this scale training does not reliably add to it)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from stetho.cli import main
from stetho.synth import make_toy_dataset
from stetho.metrics import evaluate
from stetho.models import BiGANDetector, Detector
from stetho.models.params import Interval

#: The network widths of recipes/dcase2023_bigan_cpu.yaml (64×128 patches).
CPU = dict(latent=16, enc_channels=[4, 8, 8], gen_hidden=64, gen_channels=[8, 4], dis_channels=8,
           dis_z_hidden=32, dis_feature=64, batch_size=32, lr=1e-4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks: fastest on one thread


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy_bigan")
    # 4 s clips: 126 frames, 8 patches of 64 frames every 8
    make_toy_dataset(root, machines=["fan", "valve", "slider"], train_clips=20, target_train_clips=2, test_clips=8,
                     duration=4.0, seed=0)
    return root


def test_train_and_test_from_the_command_line(toy, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["-q", "train", "--data", str(toy), "--out", str(run), "--model", "bigan", "--no-progress",
            "--device", "cpu", "--machines", "fan,valve", "--epochs", "2",
            "--param", "checkpoint_every=1"]
    for k, v in CPU.items():
        argv += ["--param", f"{k}={v}"]
    assert main(argv) == 0
    assert sorted(p.name for p in (run / "models").iterdir()) == ["fan.pt", "valve.pt"]  # per machine type
    history = _rows(run / "history_fan.csv")
    assert history[0] == ["epoch", "train_loss", "val_loss", "d_loss", "ge_loss"]
    assert [r[0] for r in history[1:]] == ["1", "2"] and all(np.isfinite(float(v)) for r in history[1:] for v in r[3:])
    assert not list(run.rglob("*.ckpt"))  # checkpoints (RUN/work/bigan_<machine>.ckpt) go once a fit ends
    det = Detector.load(run / "models" / "fan.pt")
    assert isinstance(det, BiGANDetector) and det.machines_ == ["fan"] and det.enc_channels == (4, 8, 8)
    # calibrated on held-out training clips (the default): 4 of fan's 20 source clips, no target one
    assert len(det.calibration_["file"]) == 4 and set(det.calibration_["domain"]) == {"source"}
    assert main(["-q", "test", "--run", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    # slider has test clips but no model: a partial score, said to be so (not the official one)
    assert "partial score (dcase2023)" in out and "machine type slider not scored" in out
    assert sorted(p.name for p in (run / "results").iterdir()) == ["cross-e", "fm"]
    for mode in ("fm", "cross-e"):
        scores = _rows(run / "results" / mode / "anomaly_score_fan_section_00_test.csv")
        decisions = _rows(run / "results" / mode / "decision_result_fan_section_00_test.csv")
        thr = det.threshold_for(mode, "fan")
        assert len(scores) == 32 and all(int(d[1]) == int(float(s[1]) > thr) for s, d in zip(scores, decisions))


def _official(toy: Path, seed: int, epochs: int) -> tuple[dict[str, float], list[float]]:
    """Official scores ``{mode: score}`` of the CPU recipe's networks trained ``epochs`` epochs
    (0: the initial weights) on each machine type, and each model's ``diversity_``."""
    from stetho.datasets import scan_dataset

    clips = scan_dataset(toy, "auto").clips
    scores: dict[str, dict[str, list]] = {"fm": {}, "cross-e": {}}
    test, diversity = [], []
    for machine in ("fan", "valve", "slider"):
        train = [c for c in clips if c.machine == machine and c.split == "train"]
        te = [c for c in clips if c.machine == machine and c.split == "test"]
        # threshold="official": every training clip trains, as when the figures below were measured
        det = BiGANDetector(epochs=epochs, seed=seed, device="cpu", threshold="official", **CPU).fit(train)
        assert np.isfinite(det.history_["d_loss"]).all() and np.isfinite(det.history_["ge_loss"]).all()
        assert len(det.history_["d_loss"]) == epochs
        diversity.append(det.diversity_)
        for mode, s in det.score_all(te).items():
            scores[mode][machine] = [(c.path.name, float(v)) for c, v in zip(te, s)]
        test += te
    return {mode: evaluate(s, test).official_score for mode, s in scores.items()}, diversity


@pytest.mark.parametrize("seed", [0, 1])
def test_official_score_on_toy_data_is_above_chance_trained_and_untrained(toy, seed, monkeypatch):
    # The CPU recipe (10 epochs) against the same networks with 0 training steps, same seed and
    # data. Measured, fm official score trained / untrained: seed 0 0.610 / 0.599, seed 1
    # 0.611 / 0.599, but seed 2 0.584 / 0.599 and seed 13711 0.585 / 0.599; longer or faster
    # training did no better (README.md). So the margin above chance is asserted for both, and
    # training is only asserted to un-collapse G and not to cost more than 0.03 of score: at this
    # scale it does not reliably add to the score, and no test claims it does.
    trained, trained_div = _official(toy, seed, epochs=10)
    # epochs=0 (the initial weights) is no user setting (params refuse it); allowed here only
    monkeypatch.setitem(BiGANDetector._parameter_constraints, "epochs", [Interval(int, 0, None)])
    untrained, untrained_div = _official(toy, seed, epochs=0)
    # the untrained G is near-constant (output ≈ 0, so a patch scores about its L1 distance from
    # the training mean, the same at every seed); training makes G(z) depend on z
    assert max(untrained_div) < 1e-3 < 0.05 < min(trained_div), (untrained_div, trained_div)
    for mode in ("fm", "cross-e"):
        assert trained[mode] > 0.5 + 0.07, (mode, trained)  # above chance (0.5) by 0.07
        assert untrained[mode] > 0.5 + 0.07, (mode, untrained)  # ... and so is the untrained network
        assert trained[mode] > untrained[mode] - 0.03, (mode, trained, untrained)


def test_recipes_resolve_to_valid_detectors():
    from stetho import pipeline
    from stetho.config import load_recipe, resolve

    paper = pipeline.make_detector(resolve(load_recipe("recipes/dcase2023_bigan.yaml")))
    defaults = BiGANDetector()
    for key, value in paper.get_params().items():  # the paper's settings are the detector's defaults
        if key not in ("seed", "device", "channel", "progress", "threads"):
            assert value == getattr(defaults, key), key
    cfg = resolve(load_recipe("recipes/dcase2023_bigan_cpu.yaml"))
    cpu = pipeline.make_detector(cfg)
    # the evidence test above measures exactly the CPU recipe's networks on its toy data
    assert {k: getattr(cpu, k) for k in CPU} == {k: tuple(v) if isinstance(v, list) else v for k, v in CPU.items()}
    assert (cpu.epochs, cpu.n_mels, cpu.patch_frames, cpu.patch_hop) == (10, 128, 64, 8)
    assert cfg["toy"] == dict(machines=["fan", "valve", "slider"], train_clips=20, target_train_clips=2,
                              test_clips=8, duration=4.0, seed=0)
