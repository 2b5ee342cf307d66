"""What a recording looks like next to normal: its log-mel spectrogram, the average log-mel of its
run's normal training clips, and their difference (where in frequency and time it differs).

Both use the project's own front end (:func:`stetho.features.logmel_of_signal`, the values
``stetho train`` computes) with :class:`~stetho.features.LogMelParams` defaults (128 mel bands,
``n_fft`` 1024, hop 512) at the run's sample rate, whatever features the run's detector uses: the
picture is for people, and one setting makes pictures of all runs comparable.

The normal profile of (run, machine type, section) averages at most ``max_clips`` (default 100)
training normals of that machine type and section (all sections when the section has none),
evenly spaced over the run's sorted ``train_files.csv`` (its rows with role ``train``), frame by
frame: frame ``t`` is the mean over the clips long enough to have it, up to the longest clip. It is
kept in memory and, given a folder, in ``<folder>/profiles/<run_id>/`` as ``.npz``, keyed by the
run id (the SHA-256 of its ``models.json``), machine type, section, log-mel parameters and
``max_clips``. The difference is ``recording - normal`` on the recording's frames: the profile is
cropped to the recording's length, or extended with its time-average spectrum when shorter.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from stetho.audio import decode_audio, load_audio
from stetho.errors import AudioError, StethoError
from stetho.features import LogMelParams, logmel_of_signal
from stetho.fileio import atomic_write_with

log = logging.getLogger(__name__)

#: Most training clips a normal profile averages (evenly spaced over the run's training normals).
DEFAULT_MAX_CLIPS = 100
#: The run-folder file listing its training clips (written by ``stetho train``).
TRAIN_FILES = "train_files.csv"


class ProfileError(StethoError):
    """A normal profile cannot be computed: the run has no ``train_files.csv``, no training normal
    of the machine type, or a training file that is gone or unreadable (the message names the run
    and the file)."""


@dataclass(frozen=True)
class Spectrogram:
    """A log-mel spectrogram with its axes.

    Attributes:
        db: log-mel in dB, float32 ``(n_frames, n_mels)`` (time-major, as :mod:`stetho.features`).
        times_s: the centre of each frame in seconds ``(n_frames,)`` (``t * hop / sr``).
        mel_hz: the centre frequency of each mel band in Hz ``(n_mels,)``.
        params: the log-mel parameters.
    """

    db: np.ndarray
    times_s: np.ndarray
    mel_hz: np.ndarray
    params: LogMelParams


@dataclass(frozen=True)
class NormalProfile:
    """The average log-mel of a run's normal training clips of one machine type and section.

    Attributes:
        mean: float32 ``(n_frames, n_mels)`` in dB, frame ``t`` averaged over the clips that have it.
        n_clips: how many training clips were averaged.
        files: those clips' paths, in the order of ``train_files.csv``.
        run_id, machine_type, section: what it is the profile of (``section`` is the one asked
            for; ``all_sections`` says the section had no training normals and all were used).
    """

    mean: np.ndarray
    n_clips: int
    files: tuple[str, ...]
    run_id: str
    machine_type: str
    section: str | None
    all_sections: bool
    params: LogMelParams


def mel_axes(n_frames: int, params: LogMelParams) -> tuple[np.ndarray, np.ndarray]:
    """``(times_s, mel_hz)``: frame centres in seconds (``center=True``: frame ``t`` is centred on
    sample ``t * hop``) and the mel band centres in Hz (``librosa.mel_frequencies`` of
    ``n_mels + 2`` edges, the inner ones: the peaks of the Slaney filters)."""
    import librosa

    fmax = params.fmax if params.fmax is not None else params.sr / 2
    mel_hz = librosa.mel_frequencies(n_mels=params.n_mels + 2, fmin=params.fmin, fmax=fmax)[1:-1]
    times = np.arange(n_frames) * params.hop_length / params.sr
    return times.astype(np.float64), np.asarray(mel_hz, dtype=np.float64)


def recording_spectrogram(audio: str | Path | bytes | np.ndarray, sr: int, *, params: LogMelParams | None = None,
                          name: str | None = None, channel: int = 0) -> Spectrogram:
    """The log-mel (dB) of one recording at ``sr`` Hz.

    Args:
        audio: an audio file's path, its bytes, or float32 samples ``(n_samples,)`` already at ``sr``.
        sr: the run's sample rate in Hz (other rates are resampled, as scoring does).
        params: log-mel settings (default :class:`LogMelParams` with ``sr``); their ``sr`` is set to ``sr``.
        name: what errors call it (default: the path, ``<bytes>``, ``<array>``).
        channel: the channel read from a multi-channel file.

    Raises:
        AudioError: the audio cannot be read or is not valid (naming it).
    """
    params = replace(params or LogMelParams(), sr=int(sr))
    if isinstance(audio, np.ndarray):
        y, label = np.asarray(audio, dtype=np.float32), name or "<array>"
    elif isinstance(audio, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        y, _ = decode_audio(bytes(audio), label, params.sr, channel, True, params.n_fft)
    else:
        label = name or str(audio)
        y, _ = load_audio(audio, params.sr, channel, True, params.n_fft)
    db = logmel_of_signal(y, params, label)
    times, mel_hz = mel_axes(db.shape[0], params)
    return Spectrogram(db=db, times_s=times, mel_hz=mel_hz, params=params)


def align(profile: np.ndarray, n_frames: int) -> np.ndarray:
    """``profile`` ``(T, n_mels)`` on ``n_frames`` frames: cropped, or extended with its
    time-average spectrum (a machine's normal sound is steady, its average the best guess)."""
    if profile.shape[0] >= n_frames:
        return profile[:n_frames]
    fill = np.repeat(profile.mean(axis=0, keepdims=True), n_frames - profile.shape[0], axis=0)
    return np.concatenate([profile, fill.astype(profile.dtype)], axis=0)


def difference(recording: np.ndarray, profile: np.ndarray) -> np.ndarray:
    """``recording - profile`` in dB on the recording's frames (:func:`align`)."""
    return (recording - align(profile, recording.shape[0])).astype(np.float32)


def pool_time(values: np.ndarray, max_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pool the frames of ``values`` ``(T, ...)`` into at most ``max_frames`` groups of
    consecutive frames (``ceil(T / max_frames)`` each, the last possibly fewer); returns the pooled
    values and each group's first frame index."""
    t = values.shape[0]
    step = max(1, -(-t // max(1, int(max_frames))))
    starts = np.arange(0, t, step)
    sizes = np.diff(np.append(starts, t)).reshape(-1, *([1] * (values.ndim - 1)))
    return np.add.reduceat(values, starts, axis=0) / sizes, starts


def training_normals(run_dir: str | Path, machine_type: str, section: str | None,
                     max_clips: int = DEFAULT_MAX_CLIPS) -> tuple[list[str], bool]:
    """The training normals a profile averages: ``(files, all_sections)``; at most ``max_clips``
    evenly spaced over the rows of ``train_files.csv`` with role ``train``, normal label and
    ``machine_type`` (and ``section``; all sections when it has none, ``all_sections`` then True).

    Raises:
        ProfileError: no ``train_files.csv`` or no training normal of ``machine_type``.
    """
    path = Path(run_dir) / TRAIN_FILES
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise ProfileError(f"run {run_dir}: cannot read {path} ({exc.strerror or exc}); the normal profile "
                           "needs the run's list of training files") from None
    normals = [r for r in rows if r.get("machine") == machine_type and r.get("role", "train") == "train"
               and r.get("label", "0") in ("0", "", "normal")]
    if not normals:
        raise ProfileError(f"run {run_dir}: {path} lists no normal training clip of machine type '{machine_type}'")
    own = [r for r in normals if section is not None and r.get("section") == section]
    chosen, everything = (own, False) if own else (normals, True)
    if len(chosen) > max_clips:
        idx = np.unique(np.linspace(0, len(chosen) - 1, max_clips).round().astype(int))
        chosen = [chosen[i] for i in idx]
    return [r["file"] for r in chosen], everything


class NormalProfiles:
    """The normal profiles of runs, computed once each (see the module docstring); thread-safe.

    Args:
        folder: where profiles are also kept on disk (``folder/profiles/<run_id>/...npz``), e.g.
            the audio archive's folder; ``None``: in memory only.
        max_clips: most training clips averaged per profile.
        params: log-mel settings (their ``sr`` is replaced by each run's rate).
    """

    def __init__(self, folder: str | Path | None = None, max_clips: int = DEFAULT_MAX_CLIPS,
                 params: LogMelParams | None = None) -> None:
        if isinstance(max_clips, bool) or not isinstance(max_clips, int) or max_clips < 1:
            raise ValueError(f"max_clips must be a whole number >= 1, got {max_clips!r}")
        self.folder = Path(folder) if folder is not None else None
        self.max_clips = max_clips
        self.params = params or LogMelParams()
        self._memory: dict[str, NormalProfile] = {}
        self._lock = threading.Lock()

    def _key(self, run_id: str, machine_type: str, section: str | None, params: LogMelParams) -> str:
        text = json.dumps([run_id, machine_type, section, params.to_dict(), self.max_clips], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def get(self, run_dir: str | Path, run_id: str, machine_type: str, section: str | None, sr: int,
            channel: int = 0) -> NormalProfile:
        """The profile of ``machine_type`` / ``section`` in the run at ``run_dir`` (id ``run_id``) at
        ``sr`` Hz: from memory, else from disk, else computed (and kept).

        Raises:
            ProfileError: the run's training list or a training file is missing or unreadable.
        """
        params = replace(self.params, sr=int(sr))
        key = self._key(run_id, machine_type, section, params)
        with self._lock:  # one computation per profile even when several requests ask at once
            if key in self._memory:
                return self._memory[key]
            profile = self._load(key, run_id, machine_type, section, params)
            if profile is None:
                profile = self._compute(run_dir, run_id, machine_type, section, params, channel)
                self._save(key, profile)
            self._memory[key] = profile
            return profile

    def _compute(self, run_dir: str | Path, run_id: str, machine_type: str, section: str | None,
                 params: LogMelParams, channel: int) -> NormalProfile:
        files, everything = training_normals(run_dir, machine_type, section, self.max_clips)
        total: np.ndarray | None = None
        counts: np.ndarray | None = None
        for f in files:
            if not Path(f).is_file():
                raise ProfileError(f"run {run_id} ({run_dir}): training file {f} is gone; the normal profile of "
                                   f"{machine_type} needs the {len(files)} training clip(s) listed in {TRAIN_FILES}")
            try:
                db = recording_spectrogram(f, params.sr, params=params, channel=channel).db.astype(np.float64)
            except AudioError as exc:
                raise ProfileError(f"run {run_id} ({run_dir}): training file {exc}") from None
            if total is None or db.shape[0] > total.shape[0]:
                grown = np.zeros((db.shape[0], params.n_mels)), np.zeros(db.shape[0])
                if total is not None:
                    grown[0][: total.shape[0]], grown[1][: total.shape[0]] = total, counts
                total, counts = grown
            total[: db.shape[0]] += db
            counts[: db.shape[0]] += 1
        mean = (total / counts[:, None]).astype(np.float32)
        return NormalProfile(mean=mean, n_clips=len(files), files=tuple(files), run_id=run_id,
                             machine_type=machine_type, section=section, all_sections=everything, params=params)

    def _file(self, key: str, run_id: str) -> Path | None:
        return None if self.folder is None else self.folder / "profiles" / run_id / f"{key}.npz"

    def _load(self, key: str, run_id: str, machine_type: str, section: str | None,
              params: LogMelParams) -> NormalProfile | None:
        path = self._file(key, run_id)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                mean, files, everything = z["mean"], tuple(str(f) for f in z["files"]), bool(z["all_sections"])
        except (OSError, ValueError, KeyError):
            return None  # a damaged cache entry is computed again
        return NormalProfile(mean=mean.astype(np.float32), n_clips=len(files), files=files, run_id=run_id,
                             machine_type=machine_type, section=section, all_sections=everything, params=params)

    def _save(self, key: str, profile: NormalProfile) -> None:
        path = self._file(key, profile.run_id)
        if path is None:
            return
        try:
            atomic_write_with(path, lambda fh: np.savez(fh, mean=profile.mean, files=np.array(profile.files, dtype=str),
                                                        all_sections=np.array(profile.all_sections)))
        except (OSError, StethoError) as exc:  # the disk copy is only a cache: the one in memory serves
            log.warning("%s: cannot keep the normal profile on disk (%s)", path, exc)


__all__ = ["DEFAULT_MAX_CLIPS", "NormalProfile", "NormalProfiles", "ProfileError", "Spectrogram", "align",
           "difference", "mel_axes", "pool_time", "recording_spectrogram", "training_normals"]
