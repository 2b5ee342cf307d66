"""The discriminative detector as an exportable scoring module (issue 21, part 2).

``DiscriminativeDetector.export_module(machine)`` against the detector's own ``score_all``: the
torch backends against the numpy ones they mirror, the test crops against ``_crop_starts``, the
whole module eagerly and as TorchScript (clips of many lengths, every section, both machine
types, every score mode, the decisions), the Bluestein ``|rfft|`` of the FFT branch through
onnxruntime, the FFT branch's model through ONNX (the waveform graph, and the graph after the
spectra fed by the edge scorer's numpy crop spectra), and a tiny STFT run through
``stetho.export.export_run`` (ONNX and TorchScript) scored by the torch-free edge scorer with
either front end.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from stetho import edge, pipeline
from stetho.audio import load_audio
from stetho.backends import BACKENDS, GMMBackend, KNNBackend, DensityBackend, MahalanobisBackend, make_backend
from stetho.datasets.clip import Clip
from stetho.errors import ExportError, StethoError
from stetho.export import export_run
from stetho.export.exporter import ONNX_OPSET, reference_scores
from stetho.models import Detector
from stetho.models.discriminative import DiscriminativeDetector
from stetho.models.discriminative.export import BluesteinMagnitude, crop_starts, torch_backend
from stetho.models.discriminative.torch_model import STFTBranch
from stetho.monitor.scoring import Scorer
from stetho.run_folder import run_models
from stetho.synth import make_toy_dataset

ort = pytest.importorskip("onnxruntime")

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.(load|save|script)` is deprecated:DeprecationWarning")]

RTOL = 1e-4
SR = 16000
#: FFT-branch model: a 4.5 s tile (72,000 samples: not a power of two), crops half a tile apart.
FFT = dict(branches=["fft"], tile_seconds=4.5, fft_channels=4, fft_dense_layers=1, emb_dim=8, n_subclusters=2,
           epochs=2, batch_size=8, ensemble_epochs=[1, 2], n_clusters=2, device="cpu", seed=3)
STFT = {"branches": ["stft:512:256"], "tile_seconds": 1.0, "channels": [4, 4, 8, 8], "emb_dim": 8,
        "n_subclusters": 2, "epochs": 2, "batch_size": 8, "ensemble_epochs": [1, 2], "n_clusters": 2}


def _tone(freq: float, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.normal(size=n)).astype(np.float32)


@pytest.fixture(scope="module")
def det() -> DiscriminativeDetector:
    """Two machine types, sections 00 and 01, two attributes, both domains; 0.75 s clips."""
    rng = np.random.default_rng(0)
    clips, waves = [], []
    for machine, base in (("fan", 300.0), ("pump", 900.0)):
        for i in range(12):
            attr = i % 2
            clips.append(Clip(Path(f"/x/{machine}/train/{i}.wav"), machine, f"0{i % 2}", "train",
                              "target" if i >= 10 else "source", 0, (("a", str(attr)),)))
            waves.append(_tone(base * (1 + 0.5 * attr), 12000, rng))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DiscriminativeDetector(**FFT).fit(clips, waves)


def _clips(machine: str) -> list[tuple[str, np.ndarray]]:
    """Normal-ish and odd clips of many lengths: shorter than a tile (tiled), exactly one tile,
    one sample more (two crops), a length whose crop starts round a half (``tile + hop + 1``)
    and 2.6 tiles (five crops)."""
    rng = np.random.default_rng(7)
    base = {"fan": 300.0, "pump": 900.0}[machine]
    tile, hop = 72000, 36000
    out = []
    for n in (1024, 12000, tile, tile + 1, tile + hop + 1, int(2.6 * tile)):
        out.append((f"{n} samples", _tone(base, n, rng)))
    out.append(("odd tone", _tone(base * 2.3, 30000, rng)))
    out.append(("noise", (rng.normal(size=50000) * 0.1).astype(np.float32)))
    return out


def _want(det: Detector, machine: str, section: str, y: np.ndarray) -> np.ndarray:
    clip = Clip(Path("<clip>"), machine, section, "test")
    scores = det.score_all([clip], [y])
    return np.array([scores[m][0] for m in det.score_modes])


def _run(module, y: np.ndarray, section: int = 0) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(y), torch.tensor(section, dtype=torch.int64)).double().numpy()


def _rel(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return np.abs(got - want) / np.abs(want)


def _assert_parity(det: Detector, machine: str, got: np.ndarray, want: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(got, want, rtol=RTOL, err_msg=what)
    for i, mode in enumerate(det.score_modes):  # the same decision with the detector's threshold
        assert det.decide(got[i:i + 1], [machine], mode)[0] == det.decide(want[i:i + 1], [machine], mode)[0], \
            (what, mode)


# -- the pieces --------------------------------------------------------------------------------
def test_torch_backends_score_as_the_numpy_backends():
    rng = np.random.default_rng(0)
    train = {"source": rng.normal(size=(40, 6)) + 2 * np.eye(6)[0], "target": rng.normal(size=(4, 6)) + 2 * np.eye(6)[1]}
    test = rng.normal(size=(9, 6))
    fitted = [make_backend(name, seed=1, n_clusters=3, k=2, density_k=2).fit(train) for name in BACKENDS]
    fitted += [KNNBackend(k=3, metric="euclidean").fit(train), DensityBackend(k=2, metric="euclidean").fit(train),
               MahalanobisBackend(normalize=False).fit(train),
               make_backend("knn", k=2).fit({"source": train["source"]}),  # one domain only
               make_backend("kmeans_norm", n_clusters=3).fit({"source": train["source"], "target": train["target"][:1]})]
    for be in fitted:
        module = torch_backend(be)
        assert all(b.dtype == torch.float64 for b in module.buffers()), be.name
        got = module(torch.from_numpy(test)).numpy()
        np.testing.assert_allclose(got, be.score(test), rtol=1e-10, atol=1e-12, err_msg=be.name)
        scripted = torch.jit.script(module)
        np.testing.assert_allclose(scripted(torch.from_numpy(test)).numpy(), got, rtol=1e-12, err_msg=be.name)
    with pytest.raises(StethoError, match="'gmm' has no exportable torch form"):
        torch_backend(GMMBackend().fit(train))
    with pytest.raises(StethoError, match="not fitted"):
        torch_backend(KNNBackend())


@pytest.mark.parametrize("test_hop", [0.5, 1 / 3, 0.37, 1.0])
def test_crop_starts_are_the_detectors(test_hop):
    model = DiscriminativeDetector(tile_seconds=1.0, test_hop=test_hop)
    tile, hop = model.n_samples, model.crop_hop
    lengths = [1, 2, 1000, tile - 1, tile, tile + 1, tile + hop - 1, tile + hop, tile + hop + 1, 3 * tile + 7]
    lengths += [int(v) for v in np.random.default_rng(0).integers(tile, 6 * tile, 200)]
    scripted = torch.jit.script(crop_starts)
    for n in lengths:
        want = model._crop_starts(n)
        assert crop_starts(n, tile, hop).tolist() == want, n
        assert scripted(n, tile, hop).tolist() == want, n


def test_bluestein_magnitude_is_the_rfft_magnitude():
    """|rfft| of a non-power-of-two length through power-of-two FFTs, within float32 rounding of
    numpy's float64 FFT (what the FFT branch's ONNX graph computes: onnxruntime's own DFT of
    such a length is a direct sum, 5e-3 off; the graph itself is checked in
    test_fft_branch_module_through_onnx)."""
    n = 72000
    module = BluesteinMagnitude(n)
    assert module.m == 262144
    x = torch.from_numpy((np.random.default_rng(1).normal(size=(2, n)) * 0.1).astype(np.float32))
    want = np.abs(np.fft.rfft(x.numpy().astype(np.float64)))
    with torch.no_grad():
        got = module(x).numpy()
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-6 * want.max()
    np.testing.assert_array_equal(torch.jit.script(module)(x).numpy(), got)


# -- the module ------------------------------------------------------------------------------
def test_module_scores_equal_score_all_for_every_length_section_and_mode(det):
    worst = 0.0
    for machine in det.machines_:
        module = det.export_module(machine)
        assert not module.training and not any(p.requires_grad for p in module.parameters())
        assert len(module.epochs) == 2 and module.modes == list(det.score_modes)
        sections = det.export_sections(machine)
        assert sections == ["00", "01"]
        for what, y in _clips(machine):
            for index, section in enumerate(sections):
                got, want = _run(module, y, index), _want(det, machine, section, y)
                _assert_parity(det, machine, got, want, f"{machine} {what} section {section}")
                worst = max(worst, float(_rel(got, want).max()))
    assert worst < 1e-6  # eager torch: float32 output rounding only
    # the module of a machine type holds its backends, not another's
    y = _clips("fan")[1][1]
    assert not np.allclose(_run(det.export_module("pump"), y), _run(det.export_module("fan"), y))


def test_module_survives_torchscript_and_its_file(det):
    module = det.export_module("pump")
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    for what, y in _clips("pump")[::2]:
        _assert_parity(det, "pump", _run(loaded, y, 1), _want(det, "pump", "01", y), what)


def test_export_refuses_a_machine_type_it_was_not_fitted_on(det):
    with pytest.raises(ExportError, match="cannot export machine type 'valve'"):
        det.export_module("valve")
    with pytest.raises(ExportError, match="fitted on fan, pump"):
        det.export_sections("valve")
    assert det.export_uses_section is False


def test_sections_survive_save_and_load(det, tmp_path):
    det.save(tmp_path / "d.pt")
    again = Detector.load(tmp_path / "d.pt")
    assert again.export_sections("fan") == ["00", "01"]
    y = _clips("fan")[3][1]
    np.testing.assert_array_equal(_run(again.export_module("fan"), y), _run(det.export_module("fan"), y))


@pytest.mark.slow
def test_fft_branch_module_through_onnx(det, tmp_path):
    """The FFT branch's model in onnxruntime (the Bluestein |rfft| inside the graph), with a
    free clip length: every mode within RTOL of score_all, the same decisions."""
    assert det.export_module("fan").epochs[0].net.branches[0].spectrum.n == 72000
    path = tmp_path / "fan.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(det.export_module("fan"), (torch.zeros(20000), torch.tensor(0)), str(path),
                          input_names=["waveform", "section"], output_names=["scores"], opset_version=ONNX_OPSET,
                          dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("n_samples", min=1024)}, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["waveform", "section"]
    clips = _clips("fan")
    for what, y in [clips[i] for i in (0, 4, 6)]:  # 1024 samples (tiled), tile + hop + 1 (2 crops), an odd tone
        got = session.run(None, {"waveform": y, "section": np.array(1, dtype=np.int64)})[0].astype(np.float64)
        _assert_parity(det, "fan", got, _want(det, "fan", "01", y), what)


def test_the_numpy_crop_spectra_are_the_networks():
    """The edge scorer's crops and branch spectra (numpy, float64) against the network's own
    front end: the 16-bit grid and crop starts of the detector, torch's |rfft| and normalised
    reflect-padded magnitude STFT (bins lo:hi)."""
    model = DiscriminativeDetector(tile_seconds=0.5, test_hop=0.37)
    tile, hop = model.n_samples, model.crop_hop
    stft = STFTBranch(tile, 512, 256, emb_dim=8, channels=(4, 4, 8, 8))
    spec = {"kind": "crops", "tile": tile, "hop": hop, "branches": [
        {"kind": "rfft_magnitude"},
        {"kind": "stft_magnitude", "n_fft": 512, "hop_length": 256, "window": "hann_periodic", "center": True,
         "pad_mode": "reflect", "normalized": True, "bins": [stft.lo, stft.hi]}]}
    rng = np.random.default_rng(5)
    for n in (3000, tile, tile + hop + 1, 3 * tile + 7):
        y = (rng.normal(size=n) * 0.3).astype(np.float32)
        y[:3] = [1.5, -2.0, 0.5 / 32768]  # clipped, clipped, a half step (rounds to even)
        got = edge.spectrum(y, spec)
        grid = torch.round(torch.clamp(torch.from_numpy(y), -1.0, 32767 / 32768) * 32768.0) / 32768.0
        starts = model._crop_starts(n)
        crops = torch.stack([grid[(torch.arange(tile) + s) % n] for s in starts])
        with torch.no_grad():
            want = torch.cat([torch.fft.rfft(crops.double(), dim=-1).abs(),
                              torch.stft(crops.double(), 512, 256, window=torch.hann_window(512, dtype=torch.float64),
                                         center=True, pad_mode="reflect", normalized=True,
                                         return_complex=True).abs()[:, stft.lo:stft.hi].flatten(1)], dim=1).numpy()
            float32 = torch.cat([torch.fft.rfft(crops, dim=-1).abs(), stft.spectrogram(crops).flatten(1)], 1).numpy()
        assert got.shape == want.shape == (len(starts), tile // 2 + 1 + (stft.hi - stft.lo) * (tile // 256 + 1))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * want.max())
        np.testing.assert_allclose(got, float32, rtol=1e-3, atol=1e-5 * want.max())  # the network's own, float32


@pytest.mark.slow
def test_fft_branch_model_with_the_numpy_front_end(det, tmp_path):
    """The FFT branch's model after its spectrum (SpectraScorer) in onnxruntime, fed the numpy
    crop spectra of the edge scorer: every mode within RTOL of score_all, the same decisions."""
    module, spec = det.export_module("fan").spectrum_input()
    assert spec == {"kind": "crops", "tile": 72000, "hop": 36000, "grid": "int16",
                    "branches": [{"kind": "rfft_magnitude"}], "dtype": "float32"}
    path = tmp_path / "fan.spectrum.onnx"
    example = torch.from_numpy(edge.spectrum(np.zeros(2 * 72000, dtype=np.float32), spec))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example, torch.tensor(0)), str(path), input_names=["spectrum", "section"],
                          output_names=["scores"], opset_version=ONNX_OPSET, dynamo=True, external_data=False,
                          verbose=False, dynamic_shapes=({0: torch.export.Dim("n_crops", min=1)}, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    worst = 0.0
    for what, y in _clips("fan"):
        got = session.run(None, {"spectrum": edge.spectrum(y, spec), "section": np.array(0, dtype=np.int64)})[0]
        want = _want(det, "fan", "00", y)
        _assert_parity(det, "fan", got.astype(np.float64), want, what)
        worst = max(worst, float(_rel(got, want).max()))
    assert worst < RTOL


# -- through stetho.export ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    make_toy_dataset(root, machines=["fan"], train_clips=10, target_train_clips=3, test_clips=2, duration=1.5,
                     seed=4)
    return root


@pytest.fixture(scope="module")
def stft_run(toy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "discriminative"
    pipeline.train({"data": str(toy), "out": str(out), "model": "discriminative", "progress": False,
                    "params": dict(STFT)})
    return out


@pytest.fixture(scope="module")
def stft_det(stft_run) -> Detector:
    return Detector.load(run_models(stft_run)[0])


def _lengths(y: np.ndarray) -> list[np.ndarray]:
    """``y`` and clips of other lengths made from it: shorter than the tile, 2.3 tiles."""
    return [y, y[:5000], np.tile(y, 3)[:int(2.3 * SR)]]


@pytest.mark.slow
def test_export_run_onnx_scores_and_decisions_equal_the_detectors(stft_run, stft_det, toy, tmp_path):
    exported = export_run(stft_run, "onnx", tmp_path / "onnx")
    assert [(e.machine_type, e.model) for e in exported] == [("fan", "discriminative")]
    assert exported[0].max_rel_diff < RTOL
    meta = json.loads((tmp_path / "onnx" / "fan.json").read_text())
    assert meta["score_modes"] == list(stft_det.score_modes) and meta["section_dependent"] is False
    assert meta["sections"] == ["00"]
    assert meta["thresholds"] == {m: stft_det.threshold_for(m, "fan") for m in stft_det.score_modes}
    assert meta["front_ends"]["numpy"]["file"] == "fan.spectrum.onnx"
    spec = meta["front_ends"]["numpy"]["spectrum"]
    assert spec["kind"] == "crops" and spec["branches"] == [
        {"kind": "stft_magnitude", "n_fft": 512, "hop_length": 256, "window": "hann_periodic", "center": True,
         "pad_mode": "reflect", "normalized": True, "bins": spec["branches"][0]["bins"]}]
    sessions = {"graph": ort.InferenceSession(str(exported[0].path), providers=["CPUExecutionProvider"]),
                "numpy": ort.InferenceSession(str(tmp_path / "onnx" / "fan.spectrum.onnx"),
                                              providers=["CPUExecutionProvider"])}
    # This toy model's embeddings nearly coincide (cosine distances ~1e-5, Mahalanobis precision
    # eigenvalues ~1e6): float32 rounding of the network, which onnxruntime does in another
    # order than torch (embeddings ~4e-7 apart), becomes up to ~1e-3 of a score near 0. So each
    # mode is held to RTOL of the score plus RTOL of its threshold (the scale its decisions are
    # made on); the well-spread FFT model above is held to RTOL of the score alone.
    thresholds = np.array([stft_det.threshold_for(m, "fan") for m in stft_det.score_modes])
    wavs = sorted((toy / "fan" / "test").glob("*.wav"))
    for wav in wavs:
        y, _ = load_audio(wav)
        for clip in _lengths(np.asarray(y, dtype=np.float32)):
            want = reference_scores(stft_det, "fan", clip)
            feeds = {"graph": {"waveform": clip}, "numpy": {"spectrum": edge.spectrum(clip, spec)}}
            for front_end, session in sessions.items():
                got = session.run(None, {**feeds[front_end], "section": np.array(0, dtype=np.int64)})[0]
                got = got.astype(np.float64)
                what = f"{wav.name} {len(clip)} samples, {front_end} front end"
                assert np.all(np.abs(got - want) <= RTOL * (np.abs(want) + thresholds)), (what, got, want)
                assert [stft_det.decide(got[i:i + 1], ["fan"], m)[0] for i, m in enumerate(stft_det.score_modes)] == \
                    [stft_det.decide(want[i:i + 1], ["fan"], m)[0] for i, m in enumerate(stft_det.score_modes)], what
    # the torch-free edge scorer decides as the torch scorer (stetho score) on the WAV files
    scorer = Scorer.load(stft_run, resample=False)
    for front_end in edge.FRONT_ENDS:
        es = edge.EdgeScorer(tmp_path / "onnx", front_end=front_end)
        for wav in wavs:
            got, want = es.score(wav, "fan"), scorer.score(wav, "fan").to_dict()
            for mode, w in want["modes"].items():
                assert abs(got["modes"][mode]["score"] - w["score"]) <= RTOL * (abs(w["score"]) + w["threshold"]), mode
                assert got["modes"][mode]["decision"] == w["decision"], mode


@pytest.mark.slow
def test_export_run_torchscript_scores_equal_the_detectors(stft_run, stft_det, toy, tmp_path):
    exported = export_run(stft_run, "torchscript", tmp_path / "ts")
    loaded = torch.jit.load(str(exported[0].path))
    for wav in sorted((toy / "fan" / "test").glob("*.wav"))[:3]:
        y, _ = load_audio(wav)
        for clip in _lengths(np.asarray(y, dtype=np.float32)):
            want = reference_scores(stft_det, "fan", clip)
            got = _run(loaded, clip)
            _assert_parity(stft_det, "fan", got, want, f"{wav.name} {len(clip)} samples")
            assert _rel(got, want).max() < 1e-6
