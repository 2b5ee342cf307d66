"""Exceptions raised by stetho.

Every error a user can cause derives from :class:`StethoError`; its message names the file (or
argument) at fault and what was expected, so the CLI can print it as one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class StethoError(Exception):
    """Base class of every error stetho raises on purpose."""


class ConfigError(StethoError):
    """A recipe, option or argument is invalid."""


class DatasetError(StethoError):
    """A dataset folder, file name or attribute table does not follow its layout."""


class NotFittedError(StethoError):
    """A detector was used before ``fit`` (or ``load``)."""


class EvaluationError(StethoError):
    """Scores cannot be matched to ground truth (missing, extra or duplicated files)."""


class StorageError(StethoError):
    """A file or folder cannot be written: disk full, read-only, no permission, a path
    component that is a file (see :func:`stetho.fileio.storage_error`).

    Attributes:
        path: the file or folder that could not be written.
    """

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = Path(path)
        super().__init__(message)


class RunLockedError(StethoError):
    """Another stetho process is writing the same run folder."""


class AudioError(StethoError):
    """One audio file cannot be used.

    Attributes:
        path: the file.
        reason: what is wrong with it, in words a user can act on.
        kind: which problem it is, one of :data:`AUDIO_ERROR_KINDS` (``None``: not classified),
            so a service can answer each kind its own way without reading the words.
    """

    def __init__(self, path: str | Path, reason: str, kind: str | None = None) -> None:
        if kind is not None and kind not in AUDIO_ERROR_KINDS:
            raise ValueError(f"unknown audio error kind {kind!r}")
        self.path = Path(path)
        self.reason = reason
        self.kind = kind
        super().__init__(f"{self.path}: {reason}")


#: The kinds of :class:`AudioError`: no such file; not an audio format; damaged or truncated; no
#: samples; NaN/inf samples (or log-mels); far out-of-range samples; a sample rate that cannot be
#: used; no such channel; shorter than the model's window.
AUDIO_ERROR_KINDS = ("not_found", "not_audio", "corrupt", "empty", "non_finite", "out_of_range", "sample_rate",
                     "channel", "too_short")


class AudioValidationError(StethoError):
    """Several audio files failed validation; all problems are reported at once.

    Attributes:
        problems: one :class:`AudioError` per bad file, in file order.
    """

    def __init__(self, problems: Sequence[AudioError], limit: int = 20) -> None:
        self.problems = list(problems)
        lines = [f"  {p.path}: {p.reason}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        super().__init__(
            f"{len(self.problems)} audio file(s) failed validation "
            "(use --skip-bad to leave them out; they are then listed in skipped.csv):\n"
            + "\n".join(lines)
        )


class DatabaseError(StethoError):
    """The monitoring database cannot be opened, migrated or written (``stetho.monitor.db``);
    the message names the database or the recording and the problem."""


class ExportError(StethoError):
    """A trained run (or one of its detectors) cannot be exported for scoring without PyTorch
    (:mod:`stetho.export`); the message names the model or file and why."""


class ScoringError(StethoError):
    """One recording cannot be scored (:mod:`stetho.monitor.scoring`): the service answers it
    with a 4xx naming ``kind``, the watcher records it as rejected.

    Attributes:
        kind: what is wrong, one of :data:`SCORING_ERROR_KINDS`.
        path: the file (or the name given to bytes / an array).
        reason: what is wrong with it, in words a user can act on.
    """

    def __init__(self, kind: str, path: str | Path, reason: str) -> None:
        if kind not in SCORING_ERROR_KINDS:
            raise ValueError(f"unknown scoring error kind {kind!r}")
        self.kind = kind
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


#: The kinds of :class:`ScoringError`: those of :data:`AUDIO_ERROR_KINDS`, and a machine type no
#: loaded run serves.
SCORING_ERROR_KINDS = (*AUDIO_ERROR_KINDS, "unknown_machine_type")
