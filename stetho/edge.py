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

    Raises:
        EdgeError: ``export``: not an ONNX export folder, or one of its files is missing.
    """

    def __init__(self, export_dir: str | Path, threads: int = 1, resample: bool = True) -> None:
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
            model = self.export_dir / self.meta[machine]["file"]
            if not model.is_file():
                raise EdgeError("export", str(model), "missing (the export folder is incomplete)")
        self._sessions: dict[str, Any] = {}

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
            path = self.export_dir / self.meta[machine_type]["file"]
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
        feeds = {"waveform": np.ascontiguousarray(y, dtype=np.float32), "section": np.array(index, dtype=np.int64)}
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
    args = parser.parse_args(argv)
    try:
        scorer = EdgeScorer(args.export_dir, threads=args.threads)
        machine_type = scorer.resolve_machine_type(args.machine_type)
    except EdgeError as exc:
        print(f"stetho_edge: error: {exc}", file=sys.stderr)
        return 2
    results, failed = [], 0
    for path in args.files:
        try:
            result = scorer.score(path, machine_type, section=args.section)
        except EdgeError as exc:
            print(f"stetho_edge: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps(result), flush=True)
        results.append(result)
    if results and not args.json:
        print(format_results(results))
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
