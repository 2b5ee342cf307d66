"""``export_run``: a trained run's detectors as ONNX or TorchScript files (see the package docstring)."""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import stetho
from stetho import edge
from stetho.audio.io import MAX_FLOAT_PEAK
from stetho.datasets.clip import Clip
from stetho.errors import ConfigError, ExportError, StethoError
from stetho.fileio import atomic_path, atomic_write_bytes, atomic_write_text, make_dirs
from stetho.models import Detector
from stetho.models.export_modules import spectrum_input
from stetho.run_folder import run_id, run_models, trained_version  # noqa: F401 (run_id: importable here)

log = logging.getLogger(__name__)

#: ``--format`` values.
EXPORT_FORMATS = ("onnx", "torchscript")
#: The index of an export folder: format, run, and one JSON file per machine type.
EXPORT_INDEX = "export.json"
#: The edge scorer's file name in an export folder (a copy of :mod:`stetho.edge`).
EDGE_SCRIPT = "stetho_edge.py"
#: ONNX opset of the exported graphs (``STFT`` needs >= 17).
ONNX_OPSET = 18
#: Model file suffix per format.
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
#: Inputs and output of every exported graph (:meth:`Detector.export_module`).
INPUTS = ("waveform", "section")
#: Inputs of the spectrum graph (:func:`~stetho.models.export_modules.spectrum_input`): the
#: spectrum frames the edge scorer computes in numpy (:func:`stetho.edge.spectrum`).
SPECTRUM_INPUTS = ("spectrum", "section")
#: File name suffix of the spectrum graph beside ``<machine>.onnx``.
SPECTRUM_SUFFIX = ".spectrum.onnx"
OUTPUT = "scores"
#: Exported scores must equal the detector's within this relative tolerance (``+ PARITY_ATOL``).
PARITY_RTOL = 1e-4
PARITY_ATOL = 1e-7
#: Seconds of the seeded noise every exported file is checked on.
CHECK_SECONDS = 2.0


@dataclass(frozen=True)
class ExportedModel:
    """One exported machine type.

    Attributes:
        machine_type: the machine type it scores.
        model: the detector's registry name.
        path: the model file (``<machine>.onnx`` / ``<machine>.pt``).
        meta_path: the JSON file beside it (``<machine>.json``).
        size_bytes: size of the model file.
        max_rel_diff: largest relative difference of its scores from the detector's on the check
            signal (``nan`` when not checked).
    """

    machine_type: str
    model: str
    path: Path
    meta_path: Path
    size_bytes: int
    max_rel_diff: float



def export_run(run_dir: str | Path, fmt: str, out_dir: str | Path, verify: bool = True) -> list[ExportedModel]:
    """Export every detector of a trained run, one file per machine type.

    Writes into ``out_dir``: ``<machine>.onnx`` (or ``.pt``), for ONNX ``<machine>.spectrum.onnx``
    (the graph after the STFT, input ``spectrum`` as :func:`stetho.edge.spectrum` computes it;
    when the model has such a front end), ``<machine>.json`` (score modes, default mode,
    thresholds per mode, sections, sample rate, fewest samples, channel, the run's id, the
    versions, the graphs' files and inputs per front end (``front_ends``) and the check's
    figures), ``export.json`` (the index)
    and ``stetho_edge.py`` (the torch-free scorer of ONNX exports, :mod:`stetho.edge`).

    Args:
        run_dir: a run folder written by ``stetho train``.
        fmt: ``"onnx"`` (opset :data:`ONNX_OPSET`, free clip length) or ``"torchscript"``
            (``torch.jit.script``, free clip length).
        out_dir: the export folder (created; files of the same names are replaced).
        verify: score :data:`CHECK_SECONDS` of seeded noise with the exported file(s) (both
            front ends) and with the detector, and refuse an export whose scores differ by more
            than :data:`PARITY_RTOL` (relative).

    Returns:
        One :class:`ExportedModel` per machine type, sorted by machine type.

    Raises:
        ConfigError: an unknown format or no such run folder.
        ExportError: a detector that cannot be exported (nothing is written then), or an export
            whose scores differ from the detector's.
        StethoError: the run's model files are missing or differ from those it recorded.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose from {', '.join(EXPORT_FORMATS)}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run folder; train one with `stetho train`")
    out = Path(out_dir)
    detectors = [Detector.load(p, device="cpu") for p in run_models(run_dir)]
    jobs: list[tuple[Detector, str, torch.nn.Module]] = []
    for det in detectors:  # every module first: an unexportable detector writes nothing
        det.progress = False
        for machine in det.machines_:
            jobs.append((det, machine, _frozen(det.export_module(machine))))
    jobs.sort(key=lambda j: j[1])
    make_dirs(out)
    rid, trained = run_id(run_dir), trained_version(run_dir)
    exported = []
    for det, machine, module in jobs:
        exported.append(_export_one(det, machine, module, fmt, out, rid, trained, run_dir, verify))
        log.info("exported %s (%s) to %s", machine, det.name, exported[-1].path)
    atomic_write_bytes(out / EDGE_SCRIPT, Path(edge.__file__).read_bytes())
    index = {
        "format": fmt, "run": {"path": str(run_dir.resolve()), "run_id": rid, "trained_version": trained},
        "machine_types": {e.machine_type: e.meta_path.name for e in exported},
        "edge_scorer": EDGE_SCRIPT if fmt == "onnx" else None,
        "versions": _versions(fmt),
    }
    atomic_write_text(out / EXPORT_INDEX, json.dumps(index, indent=2) + "\n")
    return exported


def _export_one(det: Detector, machine: str, module: torch.nn.Module, fmt: str, out: Path, rid: str,
                trained: str | None, run_dir: Path, verify: bool) -> ExportedModel:
    """Write ``<machine>.<suffix>`` and ``<machine>.json`` of one detector's module."""
    sr, min_samples = det.signal_spec
    sections = det.export_sections(machine) or ["00"]
    path = out / f"{machine}{SUFFIX[fmt]}"
    y = check_waveform(sr, min_samples)
    section = torch.tensor(0, dtype=torch.int64)
    with atomic_path(path) as tmp:
        if fmt == "onnx":
            _write_onnx(module, y, section, min_samples, tmp)
        else:
            with warnings.catch_warnings():  # torch 2.13 marks torch.jit deprecated; it still works
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.jit.save(torch.jit.script(module), str(tmp))
    inputs = list(INPUTS)
    check: dict[str, Any] = {"signal": f"{CHECK_SECONDS:g} s of seeded Gaussian noise (sd 0.1)"}
    max_rel = float("nan")
    front_ends: dict[str, Any] = {"graph": {"file": path.name, "inputs": inputs}}
    spectral = spectrum_input(module) if fmt == "onnx" else None
    if spectral is not None:  # the graph after the STFT, fed by the edge scorer's numpy front end
        spec_module, spec = spectral
        spec_path = out / f"{machine}{SPECTRUM_SUFFIX}"
        spec_input = torch.from_numpy(edge.spectrum(y.numpy(), spec))
        with atomic_path(spec_path) as tmp:
            # at least two rows in the example: torch.export fixes a dimension whose example is 1
            example = spec_input if spec_input.shape[0] > 1 else torch.cat([spec_input, spec_input])
            _write_onnx(_frozen(spec_module), example, section, edge.spectrum_frames(min_samples, spec), tmp,
                        SPECTRUM_INPUTS, "n_frames")
        front_ends["numpy"] = {"file": spec_path.name, "inputs": list(SPECTRUM_INPUTS), "spectrum": spec}
    want = reference_scores(det, machine, y.numpy(), sections[0]) if verify else None
    if verify or fmt == "onnx":
        got, inputs = _run_exported(path, fmt, y)
        front_ends["graph"]["inputs"] = inputs
        results = {"graph": got}
        if spectral is not None:
            results["numpy"] = _run_onnx(out / front_ends["numpy"]["file"],
                                         {"spectrum": spec_input.numpy(), "section": np.array(0, dtype=np.int64)})[0]
        if want is not None:
            check.update(torch_scores=want.tolist(), exported_scores=got.tolist())
            for name, scores in results.items():
                rel = relative_difference(scores, want)
                front_ends[name]["check_max_rel_diff"] = rel
                max_rel = rel if np.isnan(max_rel) else max(max_rel, rel)
                if not np.allclose(scores, want, rtol=PARITY_RTOL, atol=PARITY_ATOL):
                    for fe in front_ends.values():
                        (out / fe["file"]).unlink(missing_ok=True)
                    raise ExportError(f"{out / front_ends[name]['file']}: the exported {det.name} scores "
                                      f"{scores.tolist()} ({name} front end) differ from the detector's "
                                      f"{want.tolist()} by up to {rel:.2g} (relative), more than {PARITY_RTOL:g}; "
                                      "nothing usable was written")
            if "numpy" in results:
                check["exported_scores_numpy_front_end"] = results["numpy"].tolist()
            check["max_rel_diff"] = max_rel
    meta = {
        "format": fmt, "file": path.name, "model": det.name, "machine_type": machine,
        "score_modes": list(det.score_modes), "default_mode": det._mode(None),
        "thresholds": {mode: det.threshold_for(mode, machine) for mode in det.score_modes},
        "sections": sections, "section_dependent": bool(det.export_uses_section),
        "sample_rate": int(sr), "min_samples": int(min_samples), "channel": int(det.channel),
        "max_float_peak": MAX_FLOAT_PEAK,
        "inputs": inputs, "output": OUTPUT, "front_ends": front_ends,
        "run": {"path": str(run_dir.resolve()), "run_id": rid, "trained_version": trained},
        "versions": _versions(fmt), "check": check,
    }
    meta_path = out / f"{machine}.json"
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return ExportedModel(machine, det.name, path, meta_path, path.stat().st_size, max_rel)


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` in eval mode, on the CPU, without gradients (nothing to train in an export)."""
    module = module.cpu().eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def check_waveform(sr: int, min_samples: int, seconds: float = CHECK_SECONDS, seed: int = 0) -> torch.Tensor:
    """The seeded noise an export is checked on: ``max(seconds · sr, min_samples)`` float32 samples."""
    n = max(int(round(seconds * sr)), int(min_samples))
    return torch.from_numpy((np.random.default_rng(seed).standard_normal(n) * 0.1).astype(np.float32))


def reference_scores(det: Detector, machine: str, y: np.ndarray, section: str = "00") -> np.ndarray:
    """The detector's own scores ``(n_modes,)`` of samples ``y`` at its rate (as ``stetho score``
    computes them: :meth:`Detector.signal_features`, then :meth:`Detector.score_all`)."""
    clip = Clip(path=Path("<check>"), machine=machine, section=section, split="test")
    scores = det.score_all([clip], [det.signal_features(np.asarray(y, dtype=np.float32))])
    return np.array([float(scores[m][0]) for m in det.score_modes])


def relative_difference(got: np.ndarray, want: np.ndarray) -> float:
    """Largest ``|got - want| / |want|`` (0 where both are 0)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    diff = np.abs(got - want)
    return float(np.max(np.where(diff == 0, 0.0, diff / np.maximum(np.abs(want), 1e-300)), initial=0.0))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the ONNX exporter's progress lines and warnings (missing torchvision, deprecations)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _write_onnx(module: torch.nn.Module, y: torch.Tensor, section: torch.Tensor, min_samples: int, path: Path,
                input_names: tuple[str, ...] = INPUTS, dim_name: str = "n_samples") -> None:
    """``torch.onnx.export`` (the torch.export-based exporter) with a free length of the first
    input's first axis (samples, or spectrum frames), at least ``min_samples``."""
    try:
        import onnxscript  # noqa: F401  (the exporter needs it; say so plainly when it is missing)
    except ImportError:
        raise ExportError("ONNX export needs the packages onnx and onnxscript: "
                          "pip install 'stetho[export]'") from None
    n_samples = torch.export.Dim(dim_name, min=int(min_samples))
    try:
        with _quiet_exporter():
            torch.onnx.export(module, (y, section), str(path), input_names=list(input_names), output_names=[OUTPUT],
                              opset_version=ONNX_OPSET, dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes=({0: n_samples}, None))
    except StethoError:
        raise
    except Exception as exc:  # the exporter's own errors are long; keep the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{path.name}: torch.onnx.export failed ({type(exc).__name__}: {first[:300]})") from exc


def _run_exported(path: Path, fmt: str, y: torch.Tensor) -> tuple[np.ndarray, list[str]]:
    """Scores ``(n_modes,)`` float64 of the exported file at ``path`` for samples ``y`` (section
    0), and the graph's input names."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded = torch.jit.load(str(path))
        with torch.no_grad():
            return loaded(y, torch.tensor(0, dtype=torch.int64)).double().numpy(), list(INPUTS)
    return _run_onnx(path, {"waveform": y.numpy(), "section": np.array(0, dtype=np.int64)})


def _run_onnx(path: Path, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """Scores ``(n_modes,)`` float64 of the ONNX file at ``path`` (1 thread) for those of
    ``feeds`` it takes, and its input names."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("checking an ONNX export needs onnxruntime: pip install 'stetho[export]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: feeds[n] for n in names})[0].astype(np.float64), names


def _versions(fmt: str) -> dict[str, Any]:
    """The versions an export was made with."""
    versions: dict[str, Any] = {"stetho": stetho.__version__, "torch": torch.__version__,
                                "python": platform.python_version()}
    if fmt == "onnx":
        import onnx

        versions.update(onnx=onnx.__version__, opset=ONNX_OPSET)
    return versions

