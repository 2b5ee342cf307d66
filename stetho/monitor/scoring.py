"""Scoring one recording against trained runs: the one code path of ``stetho score``, the
scoring service and the inbox watcher.

A :class:`Scorer` loads every model of one or several run folders once (each model file checked
against the run's ``models.json``), and :meth:`Scorer.score` turns one recording — a file, the
bytes of an upload, or a numpy array — into a :class:`Verdict`: per score mode the score, the
threshold and the decision that ``stetho test`` would write for the same clip. The audio goes
through the checks ``stetho test`` applies (:mod:`stetho.audio`) and the detector's own
features; nothing is written to disk (no feature cache) and no model is read again.

Bad input is a :class:`~stetho.errors.ScoringError` whose ``kind`` says what was wrong, never a
raw numpy or soundfile error.

Scores match ``stetho test`` for detectors that score each clip on its own (every method but
CANDE-CP, whose context predictor runs over a stream of clips: one clip scored alone gets the
context of a stream of one).
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import stetho
from stetho.audio import check_signal, decode_audio
from stetho.datasets.clip import Clip
from stetho.errors import AudioError, ConfigError, ScoringError
from stetho.models import Detector
from stetho.models.runtime import use_threads
from stetho.run_folder import RUN_ID_LENGTH, run_id, run_models, trained_version  # noqa: F401 (RUN_ID_LENGTH)

log = logging.getLogger(__name__)

#: Section given to a recording scored without one (the first DCASE section; a folder of one's
#: own recordings has this section too).
DEFAULT_SECTION = "00"


@dataclass(frozen=True)
class RunInfo:
    """The identity of one loaded run, stored with every verdict it gives.

    Attributes:
        path: the run folder.
        run_id: the first :data:`RUN_ID_LENGTH` hex digits of the SHA-256 of its ``models.json``
            (which records every model file's SHA-256): the same models give the same id.
        version: the stetho version that trained it (``versions.json``), or ``None`` when unrecorded.
        model: the registry name of its detector(s) (``--model``).
        machine_types: the machine types it serves.
    """

    path: Path
    run_id: str
    version: str | None
    model: str
    machine_types: tuple[str, ...]


@dataclass(frozen=True)
class ModeVerdict:
    """One score mode's verdict: ``decision`` is ``score > threshold`` (1 in
    ``decision_result_*.csv``)."""

    score: float
    threshold: float
    decision: bool


@dataclass(frozen=True)
class Verdict:
    """What scoring one recording gave.

    Attributes:
        name: the file, or the name given to bytes / an array.
        machine_type: the machine type it was scored as.
        run: the run whose model scored it.
        duration_s: its length in seconds (at the model's sample rate, after any resampling).
        sample_rate: its native sample rate in Hz (before resampling).
        sha256: SHA-256 (hex) of the file's bytes, or of an array's float32 samples.
        section: the section it was scored in.
        modes: score mode -> :class:`ModeVerdict`, in the detector's order of modes.
        default_mode: the detector's own score mode (its ``score_mode`` parameter, else its first
            mode): the one ``stetho test`` writes as the run's decision, and :attr:`anomalous`.
        stetho_version: the stetho version that scored it.
    """

    name: str
    machine_type: str
    run: RunInfo
    duration_s: float
    sample_rate: int
    sha256: str
    section: str
    modes: dict[str, ModeVerdict] = field(default_factory=dict)
    default_mode: str | None = None
    stetho_version: str = stetho.__version__

    @property
    def anomalous(self) -> bool:
        """The decision of :attr:`default_mode` (of the first mode when none is named)."""
        mode = self.default_mode if self.default_mode in self.modes else next(iter(self.modes))
        return self.modes[mode].decision

    def to_dict(self) -> dict:
        """A JSON-ready dict (``modes`` as ``{mode: {score, threshold, decision}}``)."""
        return {
            "file": self.name, "machine_type": self.machine_type, "section": self.section,
            "duration_s": self.duration_s, "sample_rate": self.sample_rate, "sha256": self.sha256,
            "run": {"path": str(self.run.path), "run_id": self.run.run_id, "version": self.run.version,
                    "model": self.run.model},
            "stetho_version": self.stetho_version, "default_mode": self.default_mode, "anomalous": self.anomalous,
            "modes": {m: {"score": v.score, "threshold": v.threshold, "decision": v.decision}
                      for m, v in self.modes.items()},
        }


@dataclass
class _Served:
    """One loaded detector, the run it came from, and a lock: a detector keeps per-call state
    (report tables) and torch's thread setting is process-wide, so calls on it are serialised."""

    detector: Detector
    run: RunInfo
    lock: threading.Lock = field(default_factory=threading.Lock)


class Scorer:
    """Trained runs loaded once, scoring one recording at a time (see the module docstring).

    Build with :meth:`load`; thread-safe (calls on one detector are serialised)."""

    def __init__(self, served: Mapping[str, _Served], runs: Sequence[RunInfo], threads: int = 1,
                 resample: bool = True) -> None:
        self._served = dict(served)
        self.runs = list(runs)
        self.threads = threads
        self.resample = resample

    @classmethod
    def load(cls, run_dirs: str | Path | Sequence[str | Path], device: str = "cpu", threads: int = 1,
             resample: bool = True) -> "Scorer":
        """Load every model of the run folders (exactly the files of each ``models.json``).

        Args:
            run_dirs: one run folder or several (written by ``stetho train``).
            device: where the networks score (``"cpu"``, ``"cuda"``, ``"auto"``).
            threads: torch intra-op threads while scoring (1 suits many requests in parallel).
            resample: bring recordings of another sample rate to the model's (soxr HQ, as
                ``stetho test`` does); ``False``: refuse them (a ``sample_rate`` error).

        Raises:
            ConfigError: no run given, or a machine type served by two runs (naming both).
            StethoError: a run folder without trained models, or a model file that differs from
                the one its run recorded.
        """
        dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(d) for d in run_dirs]
        if not dirs:
            raise ConfigError("no run folder to score with; give one trained with `stetho train`")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads must be a whole number >= 1, got {threads!r}")
        served: dict[str, _Served] = {}
        runs: list[RunInfo] = []
        for run_dir in dirs:
            if not run_dir.is_dir():
                raise ConfigError(f"{run_dir}: no such run folder; train one with `stetho train`")
            detectors = [Detector.load(p, device=device) for p in run_models(run_dir)]
            machines = tuple(sorted({m for d in detectors for m in d.machines_}))
            run = RunInfo(path=run_dir, run_id=run_id(run_dir), version=trained_version(run_dir),
                          model=",".join(sorted({d.name for d in detectors})), machine_types=machines)
            runs.append(run)
            for det in detectors:
                det.progress = False
                det.threads = threads
                for machine in det.machines_:
                    if machine in served:
                        raise ConfigError(f"machine type '{machine}' is served by two runs, {served[machine].run.path} "
                                          f"and {run_dir}: give only one run per machine type")
                    served[machine] = _Served(det, run)
        log.debug("loaded %d run(s) serving %s", len(runs), ", ".join(sorted(served)))
        return cls(served, runs, threads, resample)

    @property
    def machine_types(self) -> list[str]:
        """The machine types the loaded runs serve, sorted."""
        return sorted(self._served)

    def resolve_machine_type(self, machine_type: str | None) -> str:
        """``machine_type`` when given, else the only one the loaded runs serve.

        Raises:
            ConfigError: none given and the runs serve several (naming them).
            ScoringError: ``unknown_machine_type`` for one they do not serve (with a suggestion).
        """
        if machine_type is not None:
            self._lookup(machine_type, "<request>")
            return machine_type
        if len(self._served) != 1:
            runs = ", ".join(str(r.path) for r in self.runs)
            verb = "serves" if len(self.runs) == 1 else "serve"
            raise ConfigError(f"{runs} {verb} {len(self._served)} machine types ({', '.join(self.machine_types)}): "
                              "say which one the recordings are of (--machine-type)")
        return self.machine_types[0]

    def run_of(self, machine_type: str) -> RunInfo:
        """The run serving ``machine_type`` (:class:`ScoringError` ``unknown_machine_type``)."""
        return self._lookup(machine_type, "<request>").run

    def score(
        self, audio: str | Path | bytes | bytearray | memoryview | np.ndarray, machine_type: str, *,
        sample_rate: int | None = None, section: str | None = None,
        attributes: Mapping[str, str] | None = None, filename: str | None = None,
    ) -> Verdict:
        """Score one recording with the model of ``machine_type``.

        Args:
            audio: an audio file's path, the bytes of an audio file (WAV, FLAC, OGG, ... decoded
                in memory), or a numpy array ``(n_samples,)`` of samples at ``sample_rate``.
            machine_type: one of :attr:`machine_types`.
            sample_rate: the array's rate in Hz (required for arrays, ignored otherwise: a file
                says its own).
            section: the section (machine ID) it belongs to (default :data:`DEFAULT_SECTION`).
            attributes: its operating conditions (``{name: value}``), for detectors that use them.
            filename: what to call it in the verdict and in errors (default: the path; ``<bytes>``
                / ``<array>``).

        Raises:
            ScoringError: with ``kind`` naming the problem (see :data:`stetho.errors.SCORING_ERROR_KINDS`).
        """
        name = filename or (str(audio) if isinstance(audio, (str, Path)) else
                            "<array>" if isinstance(audio, np.ndarray) else "<bytes>")
        served = self._lookup(machine_type, name)
        det = served.detector
        sr, min_samples = det.signal_spec
        with served.lock, use_threads(self.threads):
            try:
                y, native_sr, digest = self._decode(audio, name, sample_rate, sr, det.channel, min_samples)
                feats = det.signal_features(y, name)
            except AudioError as exc:
                raise _scoring_error(exc) from None
            clip = Clip(path=Path(name), machine=machine_type, section=section or DEFAULT_SECTION, split="test",
                        attributes=tuple((str(k), str(v)) for k, v in (attributes or {}).items()))
            scores = det.score_all([clip], [feats])
        modes = {}
        for mode in det.score_modes:
            s = float(scores[mode][0])
            t = det.threshold_for(mode, machine_type)
            modes[mode] = ModeVerdict(score=s, threshold=t, decision=bool(s > t))
        return Verdict(name=name, machine_type=machine_type, run=served.run, duration_s=y.shape[0] / sr,
                       sample_rate=native_sr, sha256=digest, section=clip.section, modes=modes,
                       default_mode=det._mode(None))

    def score_modes(self, machine_type: str) -> tuple[str, ...]:
        """Every score mode the model of ``machine_type`` scores, in its order."""
        return tuple(self._lookup(machine_type, "<request>").detector.score_modes)

    def default_mode(self, machine_type: str) -> str:
        """The score mode whose decision is a verdict's :attr:`Verdict.anomalous` for ``machine_type``."""
        return self._lookup(machine_type, "<request>").detector._mode(None)

    def _decode(self, audio, name: str, sample_rate: int | None, sr: int, channel: int,
                min_samples: int) -> tuple[np.ndarray, int, str]:
        """``(samples at sr, native rate, sha256)`` of a path, bytes or an array, validated."""
        if isinstance(audio, np.ndarray):
            if sample_rate is None:
                raise ScoringError("sample_rate", name, "an array needs its sample rate (sample_rate=...)")
            y = check_signal(audio, sample_rate, name, sr, self.resample, min_samples)  # validates the dtype
            digest = hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()
            return y, int(sample_rate), digest
        if isinstance(audio, (str, Path)):
            path = Path(audio)
            if not path.is_file():
                raise ScoringError("not_found", name, "file does not exist" + (" (it is a folder)" if path.is_dir()
                                                                             else ""))
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ScoringError("not_found", name, f"cannot be opened ({exc.strerror or exc})") from None
        elif isinstance(audio, (bytes, bytearray, memoryview)):
            data = bytes(audio)
        else:
            raise ScoringError("not_audio", name, f"cannot score a {type(audio).__name__}: give a file path, the "
                                                  "bytes of an audio file or a numpy array")
        y, native_sr = decode_audio(data, name, sr, channel, self.resample, min_samples)
        return y, native_sr, hashlib.sha256(data).hexdigest()

    def _lookup(self, machine_type: str, name: str) -> _Served:
        served = self._served.get(machine_type)
        if served is None:
            close = difflib.get_close_matches(str(machine_type), self.machine_types, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ScoringError("unknown_machine_type", name,
                               f"machine type '{machine_type}' is not served by the loaded run(s){hint}; they serve "
                               f"{', '.join(self.machine_types)}")
        return served


def format_verdicts(verdicts: Sequence[Verdict]) -> str:
    """A text table of ``verdicts``: file, machine type, then per score mode its score, threshold
    and decision (``ANOMALY`` / ``normal``); one row per verdict."""
    if not verdicts:
        return ""
    modes = list(dict.fromkeys(m for v in verdicts for m in v.modes))
    header = ["file", "machine type"] + [c for m in modes for c in (f"{m} score", "threshold", "decision")]
    rows = []
    for v in verdicts:
        cells = [v.name, v.machine_type]
        for m in modes:
            mv = v.modes.get(m)
            cells += ["-", "-", "-"] if mv is None else [f"{mv.score:.6g}", f"{mv.threshold:.6g}",
                                                         "ANOMALY" if mv.decision else "normal"]
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


def _scoring_error(exc: AudioError) -> ScoringError:
    """The :class:`ScoringError` of an audio problem (of its kind; ``corrupt`` when unclassified)."""
    return ScoringError(exc.kind or "corrupt", exc.path, exc.reason)




__all__ = ["DEFAULT_SECTION", "ModeVerdict", "RunInfo", "Scorer", "Verdict", "format_verdicts"]
