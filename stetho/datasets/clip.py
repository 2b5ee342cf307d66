"""The clip record: one audio file and everything known about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SOURCE = "source"
TARGET = "target"
DOMAINS = (SOURCE, TARGET)
NORMAL = 0
ANOMALY = 1
#: ``meta`` entry of a training-split clip held out for validation (best-epoch selection), e.g.
#: by the CANDE-CP MIMII split: such clips are not trained on.
VALIDATION_META = ("role", "validation")


@dataclass(frozen=True, order=True)
class Clip:
    """One audio clip and its metadata (immutable).

    Attributes:
        path: the WAV file.
        machine: machine type, e.g. ``"fan"``.
        section: the evaluation unit within the machine type: the two-digit DCASE section
            (2021-2025), the machine ID (DCASE 2020, e.g. ``"00"``), or ID and SNR for MIMII
            (``"00_-6dB"``).
        split: ``"train"`` or ``"test"``.
        domain: ``"source"``, ``"target"`` or ``None`` when the dataset has no domains.
        label: 0 normal, 1 anomaly, ``None`` when unknown (unlabeled evaluation data).
        attributes: ``(name, value)`` pairs describing the operating condition (from the file
            name or a table), in their original order.
        key: the name this clip has in score files, when the file name alone is not unique
            within its machine type (MIMII's ``00000000.wav`` in every folder; files in
            sub-folders of one's own recordings); ``None`` = the file name.
        meta: other ``(name, value)`` facts that are not operating conditions (``snr``,
            ``id``, ``subset``, ``role=validation`` ...); never used as class labels.
    """

    path: Path
    machine: str
    section: str
    split: str
    domain: str | None = None
    label: int | None = None
    attributes: tuple[tuple[str, str], ...] = field(default=())
    key: str | None = None
    meta: tuple[tuple[str, str], ...] = field(default=())

    @property
    def name(self) -> str:
        """The name scores are written and joined by: ``key`` if set, else the file name."""
        return self.key if self.key is not None else self.path.name

    @property
    def is_target(self) -> bool:
        return self.domain == TARGET

    @property
    def is_validation(self) -> bool:
        """A training-split clip held out for validation (``meta`` has ``role=validation``)."""
        return VALIDATION_META in self.meta

    def get_meta(self, name: str, default: str | None = None) -> str | None:
        """The value of metadata ``name`` (e.g. ``"snr"``), or ``default``."""
        for k, v in self.meta:
            if k == name:
                return v
        return default
