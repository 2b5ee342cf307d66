"""Exporting a run (stetho.export) and scoring the export without PyTorch (stetho.edge).

Two tiny runs on toy fans (1 s clips), an AE (2 epochs) and a ``stats`` run, are each exported
once to ONNX (through the CLI: the waveform graph and the spectrum graph of the edge scorer's
numpy front end) and once to TorchScript; every exported file's scores (ONNX: with both front
ends) are compared with the detector's own
(``det.score_all`` through :class:`stetho.monitor.scoring.Scorer`, as ``stetho score`` computes
them) on toy clips, on clips of other lengths and on real DCASE 2023 recordings when
``../shared/data/real`` is there. The edge scorer also runs in a subprocess where importing
torch, stetho or librosa fails.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from stetho import cli, edge, pipeline
from stetho.audio import load_audio
from stetho.errors import ConfigError, ExportError
from stetho.export import export_run, run_id
from stetho.export.exporter import reference_scores
from stetho.models import MODELS, Detector
from stetho.monitor.scoring import Scorer
from stetho.run_folder import run_models
from stetho.synth import make_toy_dataset

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")]

RTOL = 1e-4
#: Absolute tolerance beside RTOL, for scores near 0: a training clip's kNN distance to itself
#: (stats) is the distance between two float32 log-mels of the same samples (the graph's dense mel
#: matmul, training's sparse one), ~2e-5 in standardised units, which no relative tolerance covers.
ATOL = 1e-4
EDGE = Path(edge.__file__)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    make_toy_dataset(root, machines=["fan"], train_clips=8, target_train_clips=2, test_clips=2, duration=1.0, seed=0)
    return root


#: The exportable models and the parameters of their tiny runs.
RUNS = {"ae": {"epochs": 2, "batch_size": 64}, "stats": {}}


@pytest.fixture(scope="module", params=sorted(RUNS))
def ae_run(request, toy, tmp_path_factory) -> Path:
    """A trained run of each exportable model (the fixture keeps its first model's name)."""
    out = tmp_path_factory.mktemp("runs") / request.param
    pipeline.train({"data": str(toy), "out": str(out), "model": request.param, "progress": False,
                    "params": RUNS[request.param]})
    return out


@pytest.fixture(scope="module")
def ae(ae_run) -> Detector:
    """The run's detector."""
    return Detector.load(run_models(ae_run)[0])


@pytest.fixture(scope="module")
def onnx_dir(ae_run, tmp_path_factory) -> Path:
    """The ONNX export, written by the CLI (``stetho export RUN --format onnx --out DIR``)."""
    out = tmp_path_factory.mktemp("export") / "onnx"
    assert cli.main(["export", str(ae_run), "--format", "onnx", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def ts_dir(ae_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "torchscript"
    export_run(ae_run, "torchscript", out)
    return out


@pytest.fixture(scope="module")
def scorer(ae_run) -> Scorer:
    return Scorer.load(ae_run, resample=False)


def _wavs(toy: Path) -> list[Path]:
    return sorted((toy / "fan" / "test").glob("*.wav")) + sorted((toy / "fan" / "train").glob("*.wav"))[:3]


def _torchscript_scores(ts_dir: Path, y: np.ndarray) -> np.ndarray:
    module = torch.jit.load(str(ts_dir / "fan.pt"))
    with torch.no_grad():
        return module(torch.from_numpy(np.asarray(y, dtype=np.float32)), torch.tensor(0)).double().numpy()


def _assert_same_verdict(got: dict, verdict) -> None:
    """An edge result (dict) against a Scorer verdict: scores within RTOL, same thresholds and decisions."""
    want = verdict.to_dict()
    assert list(got["modes"]) == list(want["modes"])
    for mode, w in want["modes"].items():
        g = got["modes"][mode]
        assert g["score"] == pytest.approx(w["score"], rel=RTOL, abs=ATOL), mode
        assert g["threshold"] == w["threshold"] and g["decision"] == w["decision"], mode
    assert got["anomalous"] == want["anomalous"] and got["default_mode"] == want["default_mode"]


# -- the files ---------------------------------------------------------------------------------
def test_an_onnx_export_holds_the_model_its_metadata_and_the_edge_scorer(onnx_dir, ae_run, ae, scorer):
    index = json.loads((onnx_dir / "export.json").read_text())
    assert index["format"] == "onnx" and index["machine_types"] == {"fan": "fan.json"}
    assert index["run"]["run_id"] == run_id(ae_run) == scorer.runs[0].run_id
    meta = json.loads((onnx_dir / "fan.json").read_text())
    assert meta["model"] == ae.name and meta["machine_type"] == "fan" and meta["file"] == "fan.onnx"
    assert meta["score_modes"] == list(ae.score_modes) and meta["default_mode"] == ae._mode(None)
    assert meta["default_mode"] == {"ae": "mahalanobis", "stats": "density"}[ae.name]
    assert meta["thresholds"] == {m: ae.threshold_for(m, "fan") for m in ae.score_modes}
    shortest = {"ae": 2048, "stats": 1024}[ae.name]  # 5 frames of 512 / one FFT frame of 1024
    assert (meta["sample_rate"], meta["min_samples"]) == ae.signal_spec == (16000, shortest)
    assert meta["sections"] == ["00"] and meta["section_dependent"] is False
    assert meta["inputs"] == ["waveform", "section"] and meta["versions"]["opset"] >= 17
    # the second graph, after the STFT, for the edge scorer's numpy front end
    fe = meta["front_ends"]
    assert fe["graph"] == {"file": "fan.onnx", "inputs": ["waveform", "section"],
                           "check_max_rel_diff": fe["graph"]["check_max_rel_diff"]}
    assert fe["numpy"]["file"] == "fan.spectrum.onnx" and fe["numpy"]["inputs"] == ["spectrum", "section"]
    assert fe["numpy"]["spectrum"] == {"kind": "stft_power", "n_fft": ae.logmel_params.n_fft,
                                       "hop_length": ae.logmel_params.hop_length, "window": "hann_periodic",
                                       "center": True, "pad_mode": "constant", "dtype": "float32"}
    assert max(fe["graph"]["check_max_rel_diff"], fe["numpy"]["check_max_rel_diff"]) < RTOL
    assert (onnx_dir / "fan.spectrum.onnx").is_file()
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["check"]["max_rel_diff"] < RTOL
    assert (onnx_dir / "stetho_edge.py").read_bytes() == EDGE.read_bytes()
    assert (onnx_dir / "fan.onnx").stat().st_size > 1_000_000  # weights / memories inside (no .data file)
    assert not list(onnx_dir.glob("*.data"))


def test_a_torchscript_export_has_the_same_metadata(ts_dir, onnx_dir):
    ts, ox = (json.loads((d / "fan.json").read_text()) for d in (ts_dir, onnx_dir))
    assert ts["file"] == "fan.pt" and ts["format"] == "torchscript"
    for key in ("score_modes", "default_mode", "thresholds", "sections", "sample_rate", "min_samples", "run"):
        assert ts[key] == ox[key], key


# -- parity ------------------------------------------------------------------------------------
def test_the_numpy_front_end_is_torch_stft_squared():
    """The edge scorer's spectrum (numpy, float64) against an independent torch.stft."""
    y = (np.random.default_rng(3).standard_normal(16000 + 77) * 0.1).astype(np.float32)
    for n_fft, hop in ((1024, 512), (512, 160)):
        got = edge.stft_power(y, n_fft, hop)
        window = torch.hann_window(n_fft, dtype=torch.float64)
        spec = torch.stft(torch.from_numpy(y).double(), n_fft, hop, window=window, center=True, pad_mode="constant",
                          return_complex=True)
        want = (spec.abs() ** 2).T.numpy()
        assert got.dtype == np.float32 and got.shape == want.shape == (1 + len(y) // hop, n_fft // 2 + 1)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * want.max())


@pytest.mark.parametrize("front_end", edge.FRONT_ENDS)
def test_onnx_scores_and_decisions_equal_the_runs_on_toy_clips(onnx_dir, toy, scorer, front_end):
    es = edge.EdgeScorer(onnx_dir, front_end=front_end)
    assert es.graph("fan")["file"] == {"numpy": "fan.spectrum.onnx", "graph": "fan.onnx"}[front_end]
    for wav in _wavs(toy):
        _assert_same_verdict(es.score(wav, "fan"), scorer.score(wav, "fan"))


def test_torchscript_scores_equal_the_runs_on_toy_clips(ts_dir, toy, ae):
    for wav in _wavs(toy):
        y, _ = load_audio(wav)
        want = reference_scores(ae, "fan", y)
        np.testing.assert_allclose(_torchscript_scores(ts_dir, y), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("n", [0, 1, 16000 + 123, 3 * 16000 + 7])
def test_every_clip_length_scores_as_the_run_does(onnx_dir, ts_dir, ae, n):
    n = max(n, ae.signal_spec[1] + n)  # 0, 1: the shortest clip the model takes and one sample more
    y = (np.random.default_rng(n).standard_normal(n) * 0.05).astype(np.float32)
    want = reference_scores(ae, "fan", y)
    for front_end in edge.FRONT_ENDS:
        got = edge.EdgeScorer(onnx_dir, front_end=front_end).scores(y, "fan")
        np.testing.assert_allclose(got, want, rtol=RTOL, err_msg=front_end)
    np.testing.assert_allclose(_torchscript_scores(ts_dir, y), want, rtol=RTOL)


def test_real_recordings_score_as_the_run_does(real_data, onnx_dir, ts_dir, ae, scorer):
    wavs = sorted((real_data / "dcase2023t2_dev_subset" / "fan").glob("*/*.wav"))
    if not wavs:
        pytest.skip("no DCASE 2023 fan recordings in ../shared/data/real/dcase2023t2_dev_subset")
    scorers = [edge.EdgeScorer(onnx_dir, front_end=f) for f in edge.FRONT_ENDS]
    for wav in wavs:  # 10 s recordings of real fans, scored by the toy-trained AE
        verdict = scorer.score(wav, "fan")
        assert verdict.duration_s == pytest.approx(10.0, abs=0.1)
        for es in scorers:
            _assert_same_verdict(es.score(wav, "fan"), verdict)
        y, _ = load_audio(wav)
        np.testing.assert_allclose(_torchscript_scores(ts_dir, y), [verdict.modes[m].score for m in ae.score_modes],
                                   rtol=RTOL)


# -- what cannot be exported -------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(n for n, cls in MODELS.items() if cls.export_module is Detector.export_module))
def test_a_model_without_an_export_says_so(name):
    with pytest.raises(ExportError, match=rf"^{name} models cannot be exported for scoring without PyTorch: \w"):
        MODELS[name]().export_module("fan")


def test_an_unfitted_machine_type_or_format_is_refused(ae, ae_run, tmp_path):
    with pytest.raises(ExportError, match="cannot export machine type 'pump': it was fitted on fan"):
        ae.export_module("pump")
    with pytest.raises(ConfigError, match="unknown export format 'tflite'; choose from onnx, torchscript"):
        export_run(ae_run, "tflite", tmp_path / "x")
    assert not (tmp_path / "x").exists()


# -- the edge scorer ---------------------------------------------------------------------------
def test_the_edge_scorer_imports_only_numpy_soundfile_onnxruntime_and_the_standard_library():
    tree = ast.parse(EDGE.read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    third_party = names - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party == {"numpy", "soundfile", "onnxruntime", "soxr"}  # soxr: only when installed


BLOCKED = "import sys\nfor m in ('torch', 'stetho', 'librosa', 'scipy', 'soxr'):\n    sys.modules[m] = None\n"


def test_the_edge_scorer_runs_where_torch_and_stetho_cannot_be_imported(onnx_dir, toy, scorer, tmp_path):
    wavs = _wavs(toy)
    y, sr = sf.read(wavs[0], dtype="float32")
    sf.write(tmp_path / "other_rate.wav", y, 22050)  # refused: no soxr to resample with
    code = (BLOCKED + "sys.argv = ['stetho_edge.py'] + sys.argv[1:]\n"
            f"exec(compile(open({str(onnx_dir / 'stetho_edge.py')!r}).read(), 'stetho_edge.py', 'exec'))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(onnx_dir), "--json", *map(str, wavs),
                           str(tmp_path / "other_rate.wav")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "other_rate.wav: recorded at 22050 Hz; the model needs 16000 Hz" in proc.stderr
    assert "pip install soxr" in proc.stderr and "Traceback" not in proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["file"] for r in results] == list(map(str, wavs))
    for r, wav in zip(results, wavs):
        _assert_same_verdict(r, scorer.score(wav, "fan"))
        assert r["run_id"] == scorer.runs[0].run_id


def test_the_edge_scorer_checks_the_audio(onnx_dir, toy, ae, tmp_path):
    es = edge.EdgeScorer(onnx_dir)
    wav = _wavs(toy)[0]
    y, sr = sf.read(wav, dtype="float32")
    # a stereo file: its first channel is scored
    sf.write(tmp_path / "stereo.wav", np.stack([y, np.zeros_like(y)], axis=1), sr, subtype="PCM_16")
    assert es.score(tmp_path / "stereo.wav")["modes"] == es.score(wav)["modes"]
    # another rate: resampled with soxr (as stetho does) when installed, else refused
    sf.write(tmp_path / "other.wav", y, 22050)
    assert es.score(tmp_path / "other.wav")["duration_s"] == pytest.approx(len(y) / 22050 * 1.0, rel=1e-3)
    with pytest.raises(edge.EdgeError, match="recorded at 22050 Hz; the model needs 16000 Hz") as exc:
        edge.EdgeScorer(onnx_dir, resample=False).score(tmp_path / "other.wav")
    assert exc.value.kind == "sample_rate"
    bad = y[:4000].copy()
    bad[10] = np.nan
    short = ae.signal_spec[1] - 1
    cases = [(bad, "non_finite", "contains 1 NaN/inf sample"),
             (y[:short], "too_short", f"{short} samples at 16000 Hz, at least {short + 1} are needed"),
             (y[:3000] * 1000, "out_of_range", "over 100x full scale")]
    for arr, kind, message in cases:
        with pytest.raises(edge.EdgeError, match=message) as exc:
            es.score(arr)
        assert exc.value.kind == kind
    with pytest.raises(edge.EdgeError, match="machine type 'pump' is not in the export; it scores fan"):
        es.score(wav, "pump")
    with pytest.raises(edge.EdgeError, match="not a stetho export folder"):
        edge.EdgeScorer(tmp_path)
    # the AE scores every section alike: any section name is accepted
    assert es.score(wav, section="03")["modes"] == es.score(wav)["modes"]


# -- the CLI -----------------------------------------------------------------------------------
def test_stetho_score_engine_onnx_prints_what_the_torch_engine_prints(onnx_dir, ae_run, ae, toy, capsys):
    wavs = [str(w) for w in _wavs(toy)[:3]]
    assert cli.main(["score", str(ae_run), *wavs, "--json"]) == 0
    torch_out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert cli.main(["score", str(onnx_dir), *wavs, "--json", "--engine", "onnx"]) == 0
    onnx_out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(onnx_out) == len(torch_out) == 3
    for o, t in zip(onnx_out, torch_out):
        assert o["file"] == t["file"] and o["run_id"] == t["run"]["run_id"]
        for mode in t["modes"]:
            assert o["modes"][mode]["score"] == pytest.approx(t["modes"][mode]["score"], rel=RTOL, abs=ATOL)
            assert o["modes"][mode]["decision"] == t["modes"][mode]["decision"]
    # a table, as the torch engine's
    assert cli.main(["score", str(onnx_dir), wavs[0], "--engine", "onnx"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[:4] == ["file", "machine", "type", ae.score_modes[0]]
    assert cli.main(["score", str(ae_run), wavs[0], "--engine", "onnx"]) == 2  # a run folder is not an export
    assert "not a stetho export folder" in capsys.readouterr().err


# -- stetho serve --engine onnx ----------------------------------------------------------------
def test_a_scorer_of_onnx_exports_gives_the_torch_scorers_verdicts(onnx_dir, toy, scorer):
    from stetho.monitor.onnx_scoring import load_onnx_scorer

    onnx = load_onnx_scorer(onnx_dir, resample=False)
    assert onnx.machine_types == ["fan"] and onnx.runs[0].run_id == scorer.runs[0].run_id
    assert onnx.score_modes("fan") == scorer.score_modes("fan") and onnx.default_mode("fan") == scorer.default_mode("fan")
    for wav in _wavs(toy)[:3]:
        got, want = onnx.score(wav, "fan"), scorer.score(wav, "fan")
        assert got.sha256 == want.sha256 and got.anomalous == want.anomalous
        for mode, w in want.modes.items():
            assert got.modes[mode].score == pytest.approx(w.score, rel=RTOL, abs=ATOL)
            assert (got.modes[mode].threshold, got.modes[mode].decision) == (w.threshold, w.decision)


def test_stetho_serve_engine_onnx_scores_uploads_with_the_export(onnx_dir, toy, scorer, ae, tmp_path):
    if ae.name != "ae":
        pytest.skip("one model's export suffices: the service scores every export with the same edge scorer")
    import os
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "token").write_text("t0ken\n")
    cmd = [sys.executable, "-m", "stetho.cli", "serve", str(onnx_dir), "--engine", "onnx", "--db",
           f"sqlite:///{tmp_path / 'm.db'}", "--port", str(port), "--token-file", str(tmp_path / "token")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert health.json()["machine_types"] == ["fan"]
        wav = _wavs(toy)[0]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/score", headers={"Authorization": "Bearer t0ken"},
                       content=wav.read_bytes(), params={"asset": "fan-1", "filename": wav.name}, timeout=30)
        assert r.status_code == 200, r.text
        want = scorer.score(wav, "fan")
        assert r.json()["run"]["run_id"] == want.run.run_id
        for mode, w in want.modes.items():
            assert r.json()["modes"][mode]["score"] == pytest.approx(w.score, rel=RTOL, abs=ATOL)
            assert r.json()["modes"][mode]["decision"] == w.decision
    finally:
        proc.terminate()
        proc.wait(10)
