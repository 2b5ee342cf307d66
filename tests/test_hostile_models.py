"""Issue 15 (models): diverged trainings, bad hyper-parameters, damaged or crafted model files,
devices, a full disk at model save, test-time overrides (channel, device, threads).

Disk full is a mocked ENOSPC at the write call (``stetho.fileio``'s ``open`` returns a file whose
``write`` raises), not a small tmpfs. CUDA cannot run here: the CUDA tests fake torch's answers
(``torch.cuda.is_available`` / ``device_count``) or store ``device="cuda"`` in a model file.
"""

from __future__ import annotations

import errno
import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from stetho import fileio
from stetho.datasets.clip import Clip
from stetho.errors import ConfigError, StethoError, StorageError
from stetho.models import MODELS, AEDetector, Detector
from stetho.models import base, training
from stetho.models.params import Interval
from stetho.models.training import TrainingDivergedError, atomic_torch_save, resolve_device, run_epochs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_AE = dict(n_mels=16, hidden=8, bottleneck=2, batch_size=32, device="cpu", seed=1, threads=1)


def _clips(n: int, machine: str = "fan") -> list[Clip]:
    return [Clip(Path(f"/nowhere/{machine}_{i:03d}.wav"), machine, "00", "train", "source", 0) for i in range(n)]


def _logmels(n: int, mels: int = 16, frames: int = 20, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = np.linspace(-40, -10, mels)
    return [(base + rng.normal(size=(frames, mels))).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def ae() -> AEDetector:
    return AEDetector(epochs=2, **TINY_AE).fit(_clips(12), _logmels(12))


# -- 1. a diverged training stops with a clear error ----------------------------------------------------
def test_a_diverging_ae_stops_with_an_error_naming_model_machine_epoch_and_lr(tmp_path):
    det = AEDetector(epochs=3, lr=1e6, **TINY_AE)
    with pytest.raises(TrainingDivergedError) as info:
        det.fit(_clips(12), _logmels(12))
    msg = str(info.value)
    assert isinstance(info.value, StethoError) and "\n" not in msg
    assert msg.startswith("ae (fan): AE epochs: training loss ")
    assert "at epoch 1, step 2: the training diverged; lower lr (now 1e+06)" in msg
    assert not hasattr(det, "thresholds_")  # nothing fitted, so nothing can be saved


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_the_loop_stops_on_a_non_finite_training_loss(bad):
    losses = iter([1.0, 0.9, bad, 0.5])
    with pytest.raises(TrainingDivergedError, match=rf"x: training loss is {bad} at epoch 2, step 1: the training "
                                                    "diverged"):
        run_epochs(lambda b: next(losses), None, lambda e: [0, 1], 2, desc="x")


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_the_loop_stops_on_a_non_finite_validation_loss(bad):
    # lr=1e6 on the AE: finite training losses, validation loss inf (the case)
    with pytest.raises(TrainingDivergedError, match=rf"x: validation loss is {bad} at epoch 1 \(validation\)"):
        run_epochs(lambda b: 1.0, lambda: bad, lambda e: [0], 3, desc="x")


def test_the_loop_stops_on_an_exploding_finite_loss_and_allows_ordinary_noise():
    exploding = iter([600.0, 1e24])  # the AE with lr=1e6: finite, absurd
    with pytest.raises(TrainingDivergedError, match=r"x: training loss grew from 600 to 1e\+24 at epoch 1, step 2"):
        run_epochs(lambda b: next(exploding), None, lambda e: [0, 1], 1, desc="x")
    wobbly = iter([2.0, 50.0, 1e5, 3.0])  # 5e4 x the first: noisy, not a divergence
    hist = run_epochs(lambda b: next(wobbly), None, lambda e: [0, 1], 2)
    assert hist["train_loss"] == [26.0, (1e5 + 3.0) / 2]


def _tiny(name: str):
    """A tiny detector of model ``name`` and training data for it."""
    if name == "discriminative":
        rng = np.random.default_rng(0)
        clips, waves = [], []
        for m, f in (("fan", 300.0), ("pump", 900.0)):
            for i in range(6):
                t = np.arange(12000) / 16000
                waves.append((0.3 * np.sin(2 * np.pi * f * (1 + 0.5 * (i % 2)) * t)
                              + 0.05 * rng.normal(size=t.size)).astype(np.float32))
                clips.append(Clip(Path(f"/x/{m}/train/{i}.wav"), m, "00", "train", "source", 0,
                                  (("a", str(i % 2)),)))
        det = MODELS[name](branches=["stft:512:256"], tile_seconds=1.0, channels=[4, 4, 8, 8], emb_dim=8,
                           n_subclusters=2, epochs=2, batch_size=4, ensemble_epochs=[2], n_clusters=2,
                           device="cpu", seed=3, lr=0.5)
        return det, clips, waves
    if name == "cande":
        clips = [Clip(Path(f"/syn/id_{k:02d}/train/{i:03d}.wav"), "m", f"{k:02d}", "train", "source", 0,
                      meta=(("id", f"{k:02d}"),)) for k in range(2) for i in range(6)]
        det = MODELS[name](variant="film-onehot", n_mels=16, epochs=2, batch_size=32, predictor_epochs=2,
                           predictor_batch_size=32, predictor_hidden=(8,), device="cpu", lr=0.5, predictor_lr=0.25)
        return det, clips, _logmels(12)
    if name == "bigan":
        det = MODELS[name](n_mels=16, patch_frames=16, patch_hop=4, latent=4, enc_channels=(2, 2, 2), gen_hidden=8,
                           gen_channels=(2, 2), dis_channels=2, dis_z_hidden=4, dis_feature=8, batch_size=4,
                           epochs=2, device="cpu", lr=0.5)
        return det, _clips(12), _logmels(12)
    if name == "arae":
        det = MODELS[name](variant="plain", hidden=(8,), latent=2, n_mels=16, epochs=2, batch_size=32, device="cpu",
                           lr=0.5)
        return det, _clips(12), _logmels(12)
    return MODELS[name](epochs=2, **{**TINY_AE, "lr": 0.5}), _clips(12), _logmels(12)


#: Models with no training loop (clip statistics + distance backends: nothing can diverge).
NO_TRAINING_LOOP = {"stats"}


@pytest.mark.parametrize("name", sorted(set(MODELS) - NO_TRAINING_LOOP))
def test_every_models_training_stops_on_an_inf_loss_with_model_and_lr_named(name, monkeypatch):
    """Every method's training (CANDE-CP's context predictor and AEs, the discriminative
    model's stages, BiGAN, ARAE, AE) goes through the one loop that checks the losses: its
    second step returns inf here, whatever the method computes."""
    loop = training._loop

    def poisoned(step, *args, **kwargs):
        calls = iter(range(10**9))
        return loop(lambda b: float("inf") if next(calls) == 1 else step(b), *args, **kwargs)

    monkeypatch.setattr(training, "_loop", poisoned)
    det, clips, feats = _tiny(name)
    with pytest.raises(TrainingDivergedError) as info:
        det.fit(clips, feats)
    msg = str(info.value)
    assert msg.startswith(f"{name} (") and "training loss is inf at epoch 1, step 2: the training diverged" in msg
    assert ("lower lr (now 0.5) or predictor_lr (now 0.25)" if name == "cande" else "lower lr (now 0.5)") in msg


def test_a_non_finite_threshold_is_an_error_and_never_saved(ae, tmp_path, monkeypatch):
    det = AEDetector(**ae.get_params())
    det.machines_ = ["fan"]
    monkeypatch.setattr("stetho.models.base.fpr_threshold", lambda s, d, fpr: float("inf"))
    with pytest.raises(StethoError, match="ae: the mahalanobis threshold of fan is inf: the model diverged"):
        det._set_calibration(_clips(3), {"mahalanobis": np.ones(3), "mse": np.ones(3)})


def test_non_finite_weights_are_never_saved(ae, tmp_path):
    import copy

    det = copy.deepcopy(ae)
    with torch.no_grad():
        next(det.net_.parameters())[0, 0] = float("nan")
    with pytest.raises(StethoError, match=r"ae: not saved to .*m\.pt: state\.net\.encoder\.0\.weight hold NaN/inf"):
        det.save(tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


# -- 2. constraints reject bad values of every parameter ------------------------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_interval_never_holds_nan_or_infinity(value):
    for iv in (Interval(float, 0, None, closed="neither"), Interval(float, None, None), Interval(float, 0, 1)):
        assert not iv.accepts(value)
    assert Interval(float, 0, None).accepts(1e300) and not Interval(int, 0, 10).accepts(10**400)


@pytest.mark.parametrize("bad, message", [
    (dict(epochs=-3), "ae: params.epochs=-3 is not allowed; expected an integer >= 1"),
    (dict(batch_size=0), "ae: params.batch_size=0 is not allowed; expected an integer >= 2"),
    (dict(lr=float("nan")), "ae: params.lr=nan is not allowed; expected a number > 0 (a finite one)"),
    (dict(lr=float("inf")), "ae: params.lr=inf is not allowed; expected a number > 0 (a finite one)"),
    (dict(lr=0.0), "ae: params.lr=0.0 is not allowed; expected a number > 0"),
    (dict(lr=-1e-3), "ae: params.lr=-0.001 is not allowed; expected a number > 0"),
    (dict(seed=10**20), "ae: params.seed=100000000000000000000 is not allowed; expected an integer in [0, 4294967295]"),
    (dict(seed=1e20), "ae: params.seed=1e+20 is not allowed; expected an integer in [0, 4294967295]"),
    (dict(seed=1.5), "ae: params.seed=1.5 is not allowed; expected an integer in [0, 4294967295]"),
    (dict(channel=-1), "ae: params.channel=-1 is not allowed; expected an integer >= 0"),
    (dict(device="gpu"), "ae: params.device='gpu' is not allowed; expected auto, cpu, cuda or cuda:N"),
])
def test_bad_hyper_parameters_are_one_line_errors(bad, message):
    with pytest.raises(ConfigError) as info:
        AEDetector(**bad).check_params()
    assert str(info.value) == message


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_rejects_nan_inf_and_huge_seeds_for_every_numeric_parameter(name):
    cls = MODELS[name]
    constraints = cls.parameter_constraints()
    assert not any(c.accepts(2**32) for c in constraints["seed"])
    tried = 0
    for param, allowed in constraints.items():
        if not any(isinstance(c, Interval) for c in allowed):
            continue
        for value in (float("nan"), float("inf"), float("-inf")):
            with pytest.raises(ConfigError, match=rf"^{name}: params\.{param}={value!r} is not allowed"):
                cls(**{param: value}).check_params()
            tried += 1
    assert tried >= 3 * 5


def test_seed_at_the_top_of_its_range_trains():
    det = AEDetector(epochs=1, **{**TINY_AE, "seed": 2**32 - 1}).fit(_clips(12), _logmels(12))
    assert np.isfinite(det.threshold_for("mse", "fan"))


# -- 3. crafted or damaged model files --------------------------------------------------------------------
def _blob(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _one_line_error(path: Path, match: str) -> str:
    with pytest.raises(StethoError) as info:
        Detector.load(path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "\n" not in msg and type(info.value).__name__ in ("StethoError",), msg
    assert match in msg, msg
    return msg


def test_crafted_and_damaged_model_files_are_one_line_errors_naming_the_file(ae, tmp_path):
    good = tmp_path / "good.pt"
    ae.save(good)
    assert Detector.load(good).threshold_for("mse", "fan") == ae.threshold_for("mse", "fan")

    def craft(name: str, change) -> Path:
        blob = _blob(good)
        change(blob)
        path = tmp_path / name
        torch.save(blob, path)
        return path

    _one_line_error(craft("no_base.pt", lambda b: b.pop("base")), "the entry 'base' is missing")
    _one_line_error(craft("no_net.pt", lambda b: b["state"].pop("net")), "the entry 'net' is missing")
    _one_line_error(craft("unknown.pt", lambda b: b["params"].update(evil=1)),
                    "parameter(s) evil unknown to this stetho's 'ae'")
    _one_line_error(craft("lr_text.pt", lambda b: b["params"].update(lr="fast")),
                    "ae: params.lr='fast' is not allowed; expected a number > 0")
    _one_line_error(craft("epochs.pt", lambda b: b["params"].update(epochs=-3)), "params.epochs=-3 is not allowed")
    _one_line_error(craft("model_type.pt", lambda b: b.update(model=3)), "its model name is a int")
    _one_line_error(craft("model_name.pt", lambda b: b.update(model="evil")), "unknown model 'evil'")
    _one_line_error(craft("shape.pt", lambda b: b["state"]["net"].update(
        {"encoder.0.weight": torch.zeros(3, 3)})), "damaged or foreign model file (RuntimeError: ")
    _one_line_error(craft("thresholds.pt", lambda b: b["base"].update(thresholds="x")), "damaged or foreign model file")

    def nan_weight(b):
        b["state"]["net"]["encoder.0.weight"][0, 0] = float("nan")
    _one_line_error(craft("nan.pt", nan_weight), "weights contain NaN/inf (state.net.encoder.0.weight): the file is "
                                                 "damaged or the training diverged")
    _one_line_error(craft("inf_threshold.pt", lambda b: b["base"]["thresholds"]["mse"].update(fan=float("inf"))),
                    "weights contain NaN/inf (base.thresholds.mse.fan)")

    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    _one_line_error(tmp_path / "truncated.pt", "not a stetho model file, or a truncated or damaged one")
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    _one_line_error(tmp_path / "random.pt", "not a stetho model file, or a truncated or damaged one")
    (tmp_path / "text.pt").write_text("hello\n")
    _one_line_error(tmp_path / "text.pt", "not a stetho model file")
    torch.save({"format": "something else"}, tmp_path / "foreign.pt")
    _one_line_error(tmp_path / "foreign.pt", "not a stetho model file")
    (tmp_path / "folder.pt").mkdir()
    _one_line_error(tmp_path / "folder.pt", "is a folder, not a model file")


def test_a_pickled_object_is_refused_not_run(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (Path("/tmp").joinpath, ("never",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"format": "stetho-detector", "x": Evil()}, fh, protocol=2)
    _one_line_error(path, "not a stetho model file, or a truncated or damaged one (UnpicklingError: ")


# -- 4. CUDA models load on the CPU; the device of a loaded model -----------------------------------------
def test_a_model_trained_on_cuda_loads_on_a_machine_without_cuda(ae, tmp_path, monkeypatch):
    """The file records device="cuda" (as a CUDA training does); its tensors are stored on the
    CPU by save(), and load() reads them with map_location="cpu" (checked by capturing the
    arguments of torch.load), then moves the networks to the device used here."""
    import copy

    det = copy.deepcopy(ae)
    det.device = "cuda"
    det.save(tmp_path / "cuda.pt")
    seen = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k) or real(*a, **k))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = Detector.load(tmp_path / "cuda.pt")
    assert seen == [{"map_location": "cpu", "weights_only": True}]
    assert loaded.device == "cpu" and next(loaded.net_.parameters()).device.type == "cpu"
    clips, feats = _clips(3), _logmels(3, seed=5)
    assert np.allclose(loaded.score(clips, feats, "mse"), ae.score(clips, feats, "mse"))
    with pytest.raises(ConfigError, match="--device cuda was asked for but CUDA is not available"):
        Detector.load(tmp_path / "cuda.pt", device="cuda")


def test_load_device_and_set_device_move_every_network(tmp_path, monkeypatch):
    """set_device / load(device=...) move the networks (checked with a stand-in for CUDA: the
    target device is recorded on every module .to() call)."""
    det, clips, feats = _tiny("cande")
    det.fit(clips, feats)
    moved = []
    real_to = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append((type(self).__name__, str(a[0])))
                        or real_to(self, torch.device("cpu")))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert det.set_device("cuda:1") is det and det.device == "cuda:1"
    assert ("ContextPredictor", "cuda:1") in moved and ("FiLMAE", "cuda:1") in moved
    moved.clear()
    det.set_device("cpu")
    det.save(tmp_path / "c.pt")
    loaded = Detector.load(tmp_path / "c.pt", device="cuda")
    assert loaded.device == "cuda" and ("ContextPredictor", "cuda") in moved


# -- 5. --device cuda without CUDA ---------------------------------------------------------------------------
def test_cuda_without_cuda_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for dev in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match=rf"^--device {dev} was asked for but CUDA is not available "
                                              rf"\(torch {re.escape(torch.__version__)}, "):
            resolve_device(dev)
    with pytest.raises(ConfigError, match="--device cuda was asked for but CUDA is not available"):
        AEDetector(device="cuda").check_params()  # before any audio is read
    assert resolve_device("auto").type == "cpu" and resolve_device("cpu").type == "cpu"


def test_cuda_n_beyond_the_devices_present_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"--device cuda:2 was asked for but this machine has 2 CUDA device\(s\) "
                                          r"\(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")
    with pytest.raises(ConfigError, match="'gpu' is not a device"):
        resolve_device("gpu")


# -- 6. disk full at model save --------------------------------------------------------------------------------
class _FullDisk:
    """A file whose writes fail with ENOSPC after a few bytes (what a full disk does)."""

    def __init__(self, fh):
        self.fh = fh

    def write(self, data):
        self.fh.write(bytes(data)[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def __getattr__(self, name):
        return getattr(self.fh, name)


def test_disk_full_at_model_save_keeps_the_previous_model(ae, tmp_path, monkeypatch):
    path = tmp_path / "models" / "fan.pt"
    ae.save(path)
    before = path.read_bytes()
    other = AEDetector(epochs=1, **{**TINY_AE, "seed": 2}).fit(_clips(12), _logmels(12))
    monkeypatch.setattr(fileio, "open", lambda *a, **k: _FullDisk(open(*a, **k)), raising=False)
    with pytest.raises(StorageError) as info:
        other.save(path)
    assert str(info.value).startswith(f"disk full: cannot write {path} (")
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["fan.pt"]
    assert Detector.load(path).threshold_for("mse", "fan") == ae.threshold_for("mse", "fan")


def test_disk_full_at_a_checkpoint_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "x.ckpt"
    atomic_torch_save({"epoch": 1}, ckpt)
    monkeypatch.setattr(fileio, "open", lambda *a, **k: _FullDisk(open(*a, **k)), raising=False)
    with pytest.raises(StorageError, match="^disk full: cannot write"):
        atomic_torch_save({"epoch": 2}, ckpt)
    monkeypatch.undo()
    assert torch.load(ckpt, weights_only=True) == {"epoch": 1} and [p.name for p in tmp_path.iterdir()] == ["x.ckpt"]


def test_a_read_only_models_folder_is_a_storage_error(ae, tmp_path, monkeypatch):
    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(fileio.tempfile, "mkstemp", read_only)
    with pytest.raises(StorageError, match=r"cannot write .*fan\.pt: the file system is read-only"):
        ae.save(tmp_path / "fan.pt")


# -- 7. test-time overrides after load ------------------------------------------------------------------------
def test_setting_channel_threads_and_progress_after_load_is_what_extract_and_scoring_use(ae, tmp_path, monkeypatch):
    sr = 16000
    t = np.arange(sr) / sr
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.01 * np.sin(2 * np.pi * 3000 * t)], axis=1)
    wav = tmp_path / "two.wav"
    sf.write(wav, stereo.astype(np.float32), sr)
    for ch in (0, 1):
        sf.write(tmp_path / f"ch{ch}.wav", stereo[:, ch].astype(np.float32), sr)
    ae.save(tmp_path / "m.pt")
    det = Detector.load(tmp_path / "m.pt")
    clip = lambda p: Clip(p, "fan", "00", "test", "source", 0)  # noqa: E731
    det.channel = 1
    got = det.extract([clip(wav)]).features[0]
    want1 = det.extract([clip(tmp_path / "ch1.wav")]).features[0]
    want0 = det.extract([clip(tmp_path / "ch0.wav")]).features[0]
    assert np.array_equal(got, want1) and not np.allclose(got, want0)
    det.threads, det.progress = 1, True
    assert det.get_params()["threads"] == 1 and det.get_params()["channel"] == 1
    seen = []
    real = base.use_threads

    def spy(n):
        seen.append(n)
        return real(n)

    monkeypatch.setattr(base, "use_threads", spy)
    assert math.isfinite(float(det.score([clip(wav)], [got])[0]))
    assert seen == [1]
