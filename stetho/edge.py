"""Score recordings with an ONNX export of a stetho run: numpy, soundfile and onnxruntime only.

This module imports nothing of stetho, torch or librosa, so that a monitoring box next to a
machine can score with a few tens of MB of packages. ``stetho export RUN --format onnx --out DIR``
copies it into the export folder as ``stetho_edge.py``; there it runs as

    python stetho_edge.py DIR recording.wav ...            # a table
    python stetho_edge.py DIR --json recording.wav ...     # one JSON object per file

or is imported: ``EdgeScorer(DIR).score("recording.wav", "fan")`` gives, per score mode, the
score, the threshold and the decision (score > threshold) that ``stetho score`` gives for the
same file (the export folder's ``<machine>.json`` holds the thresholds; the graph computes the
log-mel, the network and the backend statistics).

Two front ends (``EdgeScorer(DIR, front_end=...)``):

- ``"numpy"`` (the default): the spectrum is computed here in numpy and fed to the machine's
  spectrum graph (``<machine>.spectrum.onnx``, the JSON's ``front_ends.numpy``), which holds
  everything after the STFT (mel filterbank, log, frame stacking, network, backends).
  onnxruntime's ``STFT`` kernel is ~5x slower than numpy's FFT of the framed signal. The
  spectrum (``kind: "stft_power"``, :func:`stft_power`) is exactly: the float32 samples ``y``
  taken to float64, zero-padded by ``n_fft // 2`` samples at both ends, cut into
  ``1 + len(y) // hop_length`` frames of ``n_fft`` samples starting every ``hop_length``
  samples, each multiplied by the periodic Hann window ``0.5 - 0.5 cos(2πk / n_fft)``,
  ``k = 0 .. n_fft - 1``, then ``|np.fft.rfft(frame)|²`` cast to float32: an
  ``(n_frames, n_fft // 2 + 1)`` array, what ``torch.stft(y, n_fft, hop_length, window,
  center=True, pad_mode="constant")`` gives squared, up to float32 rounding. The spectrum of
  the discriminative model (``kind: "crops"``, :func:`crop_spectra`): the float32 samples on
  the 16-bit grid (clipped to ``[-1, 32767/32768]``, times 32768, rounded half to even, over
  32768); the test crops of ``tile`` samples (one starting at 0 when the clip is no longer
  than a tile, else ``ceil((n - tile) / hop) + 1`` starts ``np.round(np.linspace(0, n - tile,
  count))``; sample ``i`` of a crop is sample ``(start + i) mod n``, so a short clip repeats);
  per crop, in float64, each branch's spectrum in branch order: ``|np.fft.rfft(crop)|``
  (``rfft_magnitude``) or the magnitude STFT (``stft_magnitude``: reflect-padded by
  ``n_fft // 2``, periodic Hann window, over ``sqrt(n_fft)``, bins ``lo:hi`` kept, shape
  ``(bins, frames)``), each flattened and all concatenated, cast to float32: ``(n_crops, F)``.
  A machine type whose export has no spectrum graph is scored with the graph front end.
- ``"graph"``: the waveform graph ``<machine>.onnx`` (the JSON's ``file``), the STFT inside:
  the one file that needs no front-end code.

Audio checks: the first channel (or the export's channel) of a multi-channel file; a file of
another sample rate is resampled with soxr when it is installed (``pip install soxr``, as stetho
does), refused otherwise; NaN/inf samples, samples far out of range and recordings shorter than
the model's window are refused, each with an :class:`EdgeError` naming the file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

#: Section of a recording scored without one (the first DCASE section).
DEFAULT_SECTION = "00"
#: The index file of an export folder.
EXPORT_INDEX = "export.json"
#: Front ends of :class:`EdgeScorer` (see the module docstring).
FRONT_ENDS = ("numpy", "graph")


def spectrum_frames(n_samples: int, spec: dict[str, Any]) -> int:
    """Rows of the spectrum input of ``n_samples`` samples at fewest: ``1 + n_samples //
    hop_length`` frames (``stft_power``), one crop (``crops``)."""
    if spec.get("kind") == "crops":
        return 1
    return 1 + int(n_samples) // int(spec["hop_length"])


def stft_power(y: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """``|STFT|²`` float32 ``(1 + len(y) // hop_length, n_fft // 2 + 1)`` of samples ``y``
    (``n_fft``, ``hop_length`` in samples): centred frames of the zero-padded signal, periodic
    Hann window, computed in float64 (see the module docstring)."""
    spec = _stft(np.asarray(y, dtype=np.float64), n_fft, hop_length, "constant")
    return (spec.real * spec.real + spec.imag * spec.imag).astype(np.float32)


def _stft(y: np.ndarray, n_fft: int, hop_length: int, pad_mode: str) -> np.ndarray:
    """Complex STFT ``(..., 1 + n // hop_length, n_fft // 2 + 1)`` of the last axis of float64
    ``y``: padded by ``n_fft // 2`` at both ends (zeros or a reflection), periodic Hann window."""
    pad = n_fft // 2
    padded = np.pad(y, [(0, 0)] * (y.ndim - 1) + [(pad, pad)], mode=pad_mode)
    n_frames = 1 + y.shape[-1] // hop_length
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=-1)[..., ::hop_length, :][..., :n_frames, :]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    return np.fft.rfft(frames * window, axis=-1)


def crop_spectra(y: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """The ``crops`` spectrum (the discriminative model; see the module docstring): float32
    ``(n_crops, F)``, each crop's branch spectra flattened and concatenated in branch order."""
    y = np.asarray(y, dtype=np.float32)
    # the 16-bit grid the training code keeps waveforms on (float32 arithmetic, half to even)
    w = (np.round(np.clip(y, np.float32(-1.0), np.float32(32767 / 32768)) * np.float32(32768.0))
         / np.float32(32768.0)).astype(np.float32)
    tile, hop, length = int(spec["tile"]), int(spec["hop"]), w.shape[0]
    if length <= tile:
        starts = np.zeros(1, dtype=np.int64)
    else:
        starts = np.round(np.linspace(0, length - tile, -(-(length - tile) // hop) + 1)).astype(np.int64)
    crops = w[(starts[:, None] + np.arange(tile)[None, :]) % length].astype(np.float64)
    parts = []
    for branch in spec["branches"]:
        if branch["kind"] == "rfft_magnitude":
            parts.append(np.abs(np.fft.rfft(crops, axis=-1)))
        elif branch["kind"] == "stft_magnitude" and branch.get("pad_mode") == "reflect" and branch.get("normalized"):
            n_fft = int(branch["n_fft"])
            lo, hi = branch["bins"]
            mag = np.abs(_stft(crops, n_fft, int(branch["hop_length"]), "reflect")) / np.sqrt(n_fft)
            parts.append(np.swapaxes(mag, 1, 2)[:, lo:hi].reshape(len(crops), -1))  # (crops, freq, time)
        else:
            raise EdgeError("export", str(branch.get("kind")), f"unknown branch spectrum {branch!r}")
    return np.concatenate(parts, axis=1).astype(np.float32)


def spectrum(y: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """The spectrum input that a spectrum graph's JSON entry ``spec`` defines, of samples ``y``."""
    if spec.get("kind") == "crops":
        return crop_spectra(y, spec)
    if spec.get("kind") != "stft_power" or spec.get("window") != "hann_periodic" or not spec.get("center") \
            or spec.get("pad_mode") != "constant":
        raise EdgeError("export", str(spec.get("kind")), f"unknown spectrum front end {spec!r}: this scorer computes "
                                                         "stft_power (periodic Hann, centred, zero padding) only")
    return stft_power(y, int(spec["n_fft"]), int(spec["hop_length"]))


class EdgeError(Exception):
    """A recording or an export folder that cannot be used; ``kind`` names the problem
    (``not_found``, ``not_audio``, ``empty``, ``channel``, ``sample_rate``, ``non_finite``,
    ``out_of_range``, ``too_short``, ``unknown_machine_type``, ``unknown_section``, ``export``)."""

    def __init__(self, kind: str, where: str, reason: str) -> None:
        self.kind = kind
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}")


class EdgeScorer:
    """The ONNX models of one export folder, loaded once.

    Args:
        export_dir: a folder written by ``stetho export RUN --format onnx``.
        threads: onnxruntime intra-op threads per model (1 suits a small board scoring one
            recording at a time, or several processes).
        resample: resample recordings of another rate with soxr when it is installed; ``False``:
            refuse them.
        front_end: ``"numpy"`` (the spectrum in numpy, then the spectrum graph) or ``"graph"``
            (the waveform graph); see the module docstring.

    Raises:
        EdgeError: ``export``: not an ONNX export folder, or one of its files is missing.
    """

    def __init__(self, export_dir: str | Path, threads: int = 1, resample: bool = True,
                 front_end: str = "numpy") -> None:
        if front_end not in FRONT_ENDS:
            raise ValueError(f"front_end must be one of {', '.join(FRONT_ENDS)}, got {front_end!r}")
        self.front_end = front_end
        self.export_dir = Path(export_dir)
        index_path = self.export_dir / EXPORT_INDEX
        try:
            self.index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EdgeError("export", str(index_path), f"not a stetho export folder ({exc}); write one with "
                                                       "`stetho export RUN --format onnx --out DIR`") from None
        if self.index.get("format") != "onnx":
            raise EdgeError("export", str(self.export_dir),
                            f"a {self.index.get('format')} export: this scorer runs ONNX exports only "
                            "(`stetho export RUN --format onnx`)")
        self.threads = int(threads)
        self.resample = resample
        self.meta: dict[str, dict[str, Any]] = {}
        for machine, name in sorted(self.index["machine_types"].items()):
            try:
                self.meta[machine] = json.loads((self.export_dir / name).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise EdgeError("export", str(self.export_dir / name), f"cannot be read ({exc})") from None
            model = self.export_dir / self.graph(machine)["file"]
            if not model.is_file():
                raise EdgeError("export", str(model), "missing (the export folder is incomplete)")
        self._sessions: dict[str, Any] = {}

    def graph(self, machine_type: str) -> dict[str, Any]:
        """The JSON entry (``file``, ``inputs``, for the numpy front end ``spectrum``) of the graph
        that scores ``machine_type`` with this scorer's front end."""
        meta = self.meta[machine_type]
        front_ends = meta.get("front_ends") or {"graph": {"file": meta["file"], "inputs": meta.get("inputs")}}
        return front_ends.get(self.front_end) or front_ends["graph"]

    @property
    def machine_types(self) -> list[str]:
        """The machine types the export scores, sorted."""
        return sorted(self.meta)

    def session(self, machine_type: str):
        """The onnxruntime session of ``machine_type`` (created on first use)."""
        if machine_type not in self._sessions:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            path = self.export_dir / self.graph(machine_type)["file"]
            self._sessions[machine_type] = ort.InferenceSession(str(path), options,
                                                                providers=["CPUExecutionProvider"])
        return self._sessions[machine_type]

    def resolve_machine_type(self, machine_type: str | None) -> str:
        """``machine_type`` when the export scores it; the only one when ``None``."""
        if machine_type is None:
            if len(self.meta) != 1:
                raise EdgeError("unknown_machine_type", str(self.export_dir),
                                f"the export scores {len(self.meta)} machine types ({', '.join(self.machine_types)}): "
                                "say which one the recording is of")
            return self.machine_types[0]
        if machine_type not in self.meta:
            raise EdgeError("unknown_machine_type", str(self.export_dir),
                            f"machine type {machine_type!r} is not in the export; it scores "
                            f"{', '.join(self.machine_types)}")
        return machine_type

    def scores(self, y: np.ndarray, machine_type: str, section: str | None = None) -> np.ndarray:
        """Scores ``(n_modes,)`` float64 of validated samples ``y`` at the model's rate."""
        meta = self.meta[machine_type]
        index = self._section_index(meta, section)
        graph = self.graph(machine_type)
        feeds = {"section": np.array(index, dtype=np.int64)}
        if "spectrum" in graph:
            feeds["spectrum"] = spectrum(y, graph["spectrum"])
        else:
            feeds["waveform"] = np.ascontiguousarray(y, dtype=np.float32)
        session = self.session(machine_type)
        out = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]
        return np.asarray(out, dtype=np.float64).reshape(-1)

    def score(self, audio: str | Path | np.ndarray, machine_type: str | None = None, section: str | None = None,
              sample_rate: int | None = None, name: str | None = None) -> dict[str, Any]:
        """Score one recording: a file's path, or samples ``(n_samples,)`` (at ``sample_rate``,
        default the model's).

        Returns:
            ``{"file", "machine_type", "section", "duration_s", "sample_rate", "model", "run_id",
            "default_mode", "anomalous", "modes": {mode: {"score", "threshold", "decision"}}}``:
            ``decision`` is ``score > threshold``; ``anomalous`` that of the default mode.

        Raises:
            EdgeError: an unusable recording, machine type or section (see the class).
        """
        machine_type = self.resolve_machine_type(machine_type)
        meta = self.meta[machine_type]
        if isinstance(audio, np.ndarray):
            name = name or "<array>"
            y, native_sr = audio, int(sample_rate or meta["sample_rate"])
            if y.ndim != 1:
                raise EdgeError("not_audio", name, f"expected mono samples of shape (n_samples,), got shape {y.shape}")
        else:
            name = name or str(audio)
            y, native_sr = read_audio(audio, int(meta.get("channel", 0)))
        y = self.check(y, native_sr, meta, name)
        section = section or self._default_section(meta)
        scores = self.scores(y, machine_type, section)
        modes = {}
        for mode, s in zip(meta["score_modes"], scores):
            t = float(meta["thresholds"][mode])
            modes[mode] = {"score": float(s), "threshold": t, "decision": bool(s > t)}
        return {"file": name, "machine_type": machine_type, "section": section,
                "duration_s": y.shape[0] / meta["sample_rate"], "sample_rate": native_sr, "model": meta["model"],
                "run_id": meta["run"]["run_id"], "default_mode": meta["default_mode"],
                "anomalous": modes[meta["default_mode"]]["decision"], "modes": modes}

    def check(self, y: np.ndarray, native_sr: int, meta: dict[str, Any], name: str) -> np.ndarray:
        """Samples ``y`` (at ``native_sr`` Hz) validated as stetho validates a recording and at
        the model's rate: finite, within ``max_float_peak``, resampled (soxr) or refused, long enough."""
        y = np.asarray(y)
        if y.size == 0:
            raise EdgeError("empty", name, "no samples")
        if not (np.issubdtype(y.dtype, np.floating) or np.issubdtype(y.dtype, np.integer)):
            raise EdgeError("not_audio", name, f"samples of dtype {y.dtype} are not numbers")
        y = np.ascontiguousarray(y, dtype=np.float32)
        if not np.isfinite(y).all():
            raise EdgeError("non_finite", name, f"contains {int(np.count_nonzero(~np.isfinite(y)))} NaN/inf sample(s)")
        peak, limit = float(np.abs(y).max()), float(meta.get("max_float_peak", 100.0))
        if peak > limit:
            raise EdgeError("out_of_range", name, f"sample values reach {peak:.3g}, over {limit:g}x full scale: float "
                                                  "samples belong in [-1, 1]")
        sr = int(meta["sample_rate"])
        if native_sr != sr:
            y = resample(y, native_sr, sr, name, self.resample)
        if y.shape[0] < int(meta["min_samples"]):
            raise EdgeError("too_short", name, f"too short: {y.shape[0]} samples at {sr} Hz, at least "
                                               f"{meta['min_samples']} are needed (the frames one score needs)")
        return y

    @staticmethod
    def _default_section(meta: dict[str, Any]) -> str:
        sections = meta.get("sections") or [DEFAULT_SECTION]
        return DEFAULT_SECTION if DEFAULT_SECTION in sections else sections[0]

    @staticmethod
    def _section_index(meta: dict[str, Any], section: str | None) -> int:
        sections = meta.get("sections") or [DEFAULT_SECTION]
        if section in sections:
            return sections.index(section)
        if meta.get("section_dependent", True):
            raise EdgeError("unknown_section", str(section),
                            f"section {section!r} is not one the {meta['machine_type']} model knows "
                            f"({', '.join(sections)})")
        return 0  # the model scores every section alike


def read_audio(path: str | Path, channel: int = 0) -> tuple[np.ndarray, int]:
    """``(float32 samples of one channel, sample rate)`` of an audio file (soundfile; the first
    channel of a mono file whatever ``channel`` says)."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise EdgeError("not_found", str(path), "file does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise EdgeError("not_audio", str(path), f"cannot be decoded ({str(exc).strip()[:200]})") from None
    if data.shape[0] == 0:
        raise EdgeError("empty", str(path), "zero-length file (no samples)")
    channel = 0 if data.shape[1] == 1 else channel
    if channel >= data.shape[1]:
        raise EdgeError("channel", str(path), f"has {data.shape[1]} channel(s); channel {channel} was asked for")
    return np.ascontiguousarray(data[:, channel]), int(sr)


def resample(y: np.ndarray, sr_in: int, sr_out: int, name: str, allowed: bool = True) -> np.ndarray:
    """``y`` from ``sr_in`` to ``sr_out`` Hz with soxr (HQ, as stetho resamples), when it is
    installed and ``allowed``; otherwise an :class:`EdgeError` ``sample_rate``."""
    if not allowed:
        raise EdgeError("sample_rate", name, f"recorded at {sr_in} Hz; the model needs {sr_out} Hz "
                                             "(resampling is off)")
    try:
        import soxr
    except ImportError:
        raise EdgeError("sample_rate", name, f"recorded at {sr_in} Hz; the model needs {sr_out} Hz: record at "
                                             f"{sr_out} Hz, convert the file (e.g. sox in.wav -r {sr_out} out.wav) "
                                             "or pip install soxr to resample here") from None
    return np.asarray(soxr.resample(y, sr_in, sr_out, quality="HQ"), dtype=np.float32)


def format_results(results: list[dict[str, Any]]) -> str:
    """A text table: file, machine type, then per score mode its score, threshold and decision."""
    if not results:
        return ""
    modes = list(dict.fromkeys(m for r in results for m in r["modes"]))
    header = ["file", "machine type"] + [c for m in modes for c in (f"{m} score", "threshold", "decision")]
    rows = []
    for r in results:
        cells = [r["file"], r["machine_type"]]
        for m in modes:
            v = r["modes"].get(m)
            cells += ["-", "-", "-"] if v is None else [f"{v['score']:.6g}", f"{v['threshold']:.6g}",
                                                        "ANOMALY" if v["decision"] else "normal"]
        rows.append(cells)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows])


def main(argv: list[str] | None = None) -> int:
    """``python stetho_edge.py EXPORT_DIR FILE...``: each file's verdict on stdout (a table or
    JSON lines); a file that cannot be scored is an error line on stderr and exit status 2."""
    parser = argparse.ArgumentParser(prog="stetho_edge.py", description="Score recordings with a stetho ONNX "
                                                                        "export (numpy, soundfile, onnxruntime only).")
    parser.add_argument("export_dir", type=Path, metavar="EXPORT_DIR", help="folder from `stetho export --format onnx`")
    parser.add_argument("files", type=Path, nargs="+", metavar="FILE", help="audio files (WAV, FLAC, ...)")
    parser.add_argument("--machine-type", help="the machine type of the files (default: the export's only one)")
    parser.add_argument("--section", help="the section (machine ID) of the files (default 00)")
    parser.add_argument("--json", action="store_true", help="one JSON object per file instead of a table")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default 1)")
    parser.add_argument("--front-end", choices=FRONT_ENDS, default="numpy",
                        help="numpy: the spectrum in numpy, then the spectrum graph (default, faster); "
                             "graph: the waveform graph, STFT inside")
    args = parser.parse_args(argv)
    try:
        scorer = EdgeScorer(args.export_dir, threads=args.threads, front_end=args.front_end)
        machine_type = scorer.resolve_machine_type(args.machine_type)
    except EdgeError as exc:
        print(f"stetho_edge: error: {exc}", file=sys.stderr)
        return 2
    return score_files(scorer, args.files, machine_type, args.section, args.json, "stetho_edge")


def score_files(scorer: "EdgeScorer", files: Any, machine_type: str, section: str | None, as_json: bool,
                prog: str) -> int:
    """Score ``files`` and print a table (or JSON lines as they come); a file that cannot be scored
    is an error line on stderr (``prog: error: ...``) and the others go on. Exit status 2 if any
    failed, else 0. What ``stetho_edge.py`` and ``stetho score --engine onnx`` print."""
    results, failed = [], 0
    for path in files:
        try:
            result = scorer.score(path, machine_type, section=section)
        except EdgeError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        if as_json:
            print(json.dumps(result), flush=True)
        results.append(result)
    if results and not as_json:
        print(format_results(results))
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
