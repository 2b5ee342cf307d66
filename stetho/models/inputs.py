"""What a detector's ``fit`` / ``score`` / ``predict`` take besides :class:`~stetho.datasets.clip.Clip`
records: audio file paths and folders, and numpy arrays of samples (the Python API of issue 23).

* Clips (one, or a sequence of them): used as they are, with ``features`` if given.
* A path (``str`` / :class:`~pathlib.Path`) or a sequence of paths: each an audio file, or a folder
  whose audio files (:data:`stetho.datasets.base.AUDIO_EXTENSIONS`, any depth, hidden ones skipped)
  are taken in sorted order -- the clips ``stetho train`` makes of a folder of one's own recordings
  (section ``00``, no domain). The files are read and validated as any clip's.
* A float array ``(n_samples,)`` (one clip) or ``(n_clips, n_samples)`` (one clip per row), or a
  sequence of 1-D float arrays (clips of different lengths), with its ``sample_rate`` in Hz: each
  signal is validated and resampled to the detector's rate as a file's samples would be
  (:func:`stetho.audio.check_signal`), and its features are computed by
  :meth:`Detector.signal_features`. Integer PCM is refused (scale it to [-1, 1] floats first).

Every clip made here belongs to one machine type: ``machine_type``, else (scoring) the only machine
type the detector was fitted on, else (fitting) :data:`DEFAULT_MACHINE_TYPE`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stetho.audio import check_signal
from stetho.datasets.base import AUDIO_EXTENSIONS, audio_files
from stetho.datasets.clip import NORMAL, Clip
from stetho.errors import ConfigError

if TYPE_CHECKING:
    from stetho.models.base import Detector

#: Machine type of clips made from paths or arrays fitted without ``machine_type=``.
DEFAULT_MACHINE_TYPE = "machine"
#: Section of clips made from paths or arrays (the first DCASE section, as a folder of one's own
#: recordings gets).
DEFAULT_SECTION = "00"

_WHAT = ("Clip objects, audio file or folder paths (str or Path), or float arrays of samples "
         "((n_samples,) or (n_clips, n_samples), with sample_rate=)")


def as_clips(
    detector: Detector, data: Any, features: Sequence[np.ndarray] | None = None, *,
    sample_rate: int | None = None, machine_type: str | None = None, fitting: bool = False,
) -> tuple[list[Clip], list[np.ndarray] | None]:
    """``(clips, features)`` for ``detector`` from any input of the module docstring.

    Args:
        detector: the detector that will use them (its :attr:`~Detector.signal_spec` and
            :meth:`~Detector.signal_features` turn arrays into features; when scoring, its fitted
            machine types).
        data: clips, paths or arrays.
        features: precomputed features, one per clip (with clips only).
        sample_rate: the rate of ``data``'s samples in Hz (arrays only, and required for them).
        machine_type: the machine type of clips made from paths or arrays.
        fitting: clips for ``fit`` (training split, normal) rather than for scoring.

    Returns:
        The clips and, for arrays, their features (``features`` as given, unchanged, for clips).

    Raises:
        ConfigError: an input of another kind, a non-float array, an array without
            ``sample_rate`` (or ``sample_rate`` without an array), ``features`` with paths or
            arrays, a path that does not exist or a folder without audio files, a machine type
            the fitted detector does not know.
        AudioError: an array's samples cannot be used (NaN/inf, out of range, too short ...).
    """
    if isinstance(data, Clip):
        data = [data]
    if isinstance(data, (str, os.PathLike, np.ndarray)):
        items: list[Any] = [data]
    elif isinstance(data, Sequence) or (hasattr(data, "__iter__") and not isinstance(data, (dict, bytes))):
        items = list(data)
    else:
        raise ConfigError(f"{detector.name}: expected {_WHAT}; got {type(data).__name__}")
    if items and all(isinstance(c, Clip) for c in items):
        if sample_rate is not None:
            raise ConfigError(f"{detector.name}: sample_rate= is for arrays of samples; Clip objects are read from "
                              "their files")
        return items, features  # as given: a lazy FeatureList must stay one
    if features is not None:
        raise ConfigError(f"{detector.name}: features= goes with Clip objects only (paths are read and arrays "
                          "turned into features by the detector)")
    if any(isinstance(c, Clip) for c in items):
        raise ConfigError(f"{detector.name}: a mix of Clip objects and other inputs; give one kind")
    machine = _machine_type(detector, machine_type, fitting)
    split = "train" if fitting else "test"
    label = NORMAL if fitting else None
    if not items:
        return [], None
    if all(isinstance(p, (str, os.PathLike)) for p in items):
        if sample_rate is not None:
            raise ConfigError(f"{detector.name}: sample_rate= is for arrays of samples; audio files carry their "
                              "own rate")
        return _path_clips(detector, [Path(p) for p in items], machine, split, label), None
    return _array_clips(detector, data, items, sample_rate, machine, split, label)


def _machine_type(detector: Detector, machine_type: str | None, fitting: bool) -> str:
    """The machine type of clips made here (see the module docstring)."""
    if fitting:
        return DEFAULT_MACHINE_TYPE if machine_type is None else str(machine_type)
    detector._check_fitted()
    known = list(detector.machines_)
    if machine_type is None:
        if len(known) == 1:
            return known[0]
        raise ConfigError(f"{detector.name}: this detector scores several machine types ({', '.join(known)}): "
                          "say which one the recordings are with machine_type=")
    if machine_type not in known:
        close = difflib.get_close_matches(str(machine_type), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{detector.name}: unknown machine type {machine_type!r}{hint}; it was fitted on "
                          f"{', '.join(known)}")
    return str(machine_type)


def _path_clips(detector: Detector, paths: list[Path], machine: str, split: str, label: int | None) -> list[Clip]:
    """Clips of audio files and of the audio files in folders, in the order given (each folder sorted)."""
    clips: list[Clip] = []
    for path in paths:
        if path.is_dir():
            found = audio_files(path, recursive=True)
            if not found:
                raise ConfigError(f"{detector.name}: folder {path} holds no audio files "
                                  f"({', '.join(sorted(AUDIO_EXTENSIONS))})")
            for f in found:
                key = f.relative_to(path).as_posix()
                clips.append(Clip(path=f, machine=machine, section=DEFAULT_SECTION, split=split, label=label,
                                  key=None if key == f.name else key))
        elif path.is_file():
            clips.append(Clip(path=path, machine=machine, section=DEFAULT_SECTION, split=split, label=label))
        else:
            raise ConfigError(f"{detector.name}: {path}: no such file or folder")
    return clips


def _array_clips(
    detector: Detector, data: Any, items: list[Any], sample_rate: int | None, machine: str, split: str,
    label: int | None,
) -> tuple[list[Clip], list[np.ndarray]]:
    """Clips named ``<array>`` / ``<array row i>`` and the features of their samples."""
    if isinstance(data, np.ndarray):
        if data.ndim == 1:
            signals, names = [data], ["<array>"]
        elif data.ndim == 2:
            signals, names = list(data), [f"<array row {i}>" for i in range(len(data))]
        else:
            raise ConfigError(f"{detector.name}: an array of samples must be (n_samples,) or (n_clips, n_samples), "
                              f"got shape {data.shape}")
        dtype = data.dtype
    else:
        if not all(isinstance(y, np.ndarray) for y in items):
            kinds = sorted({type(y).__name__ for y in items})
            raise ConfigError(f"{detector.name}: expected {_WHAT}; got a sequence of {', '.join(kinds)}")
        bad = [i for i, y in enumerate(items) if y.ndim != 1]
        if bad:
            raise ConfigError(f"{detector.name}: a sequence of arrays must hold 1-D signals (n_samples,); item "
                              f"{bad[0]} has shape {items[bad[0]].shape}")
        signals, names = items, [f"<array {i}>" for i in range(len(items))]
        dtype = next((y.dtype for y in items if not np.issubdtype(y.dtype, np.floating)), items[0].dtype)
    if not np.issubdtype(dtype, np.floating):
        hint = (" (integer PCM: divide int16 samples by 32768 first)" if np.issubdtype(dtype, np.integer) else "")
        raise ConfigError(f"{detector.name}: arrays of samples must be float (values in [-1, 1]), got dtype "
                          f"{dtype}{hint}")
    if sample_rate is None:
        raise ConfigError(f"{detector.name}: an array of shape {getattr(data, 'shape', (len(items), '...'))} needs "
                          "its sample rate: pass sample_rate= (Hz)")
    sr, min_samples = detector.signal_spec
    clips, feats = [], []
    for y, name in zip(signals, names):
        samples = check_signal(y, sample_rate, name, sr, resample=True, min_samples=min_samples)
        feats.append(detector.signal_features(samples, name))
        clips.append(Clip(path=Path(name), machine=machine, section=DEFAULT_SECTION, split=split, label=label))
    return clips, feats


__all__ = ["DEFAULT_MACHINE_TYPE", "DEFAULT_SECTION", "as_clips"]
