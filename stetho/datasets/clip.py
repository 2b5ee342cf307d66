"""The clip record: one audio file and everything known about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SOURCE = "source"
TARGET = "target"
DOMAINS = (SOURCE, TARGET)
NORMAL = 0
ANOMALY = 1


@dataclass(frozen=True, order=True)
class Clip:
    """One audio clip and its metadata (immutable).

    Attributes:
        path: the WAV file.
        machine: machine type, e.g. ``"fan"``.
        section: two-digit section id, e.g. ``"00"``.
        split: ``"train"`` or ``"test"``.
        domain: ``"source"``, ``"target"`` or ``None`` when the dataset has no domains.
        label: 0 normal, 1 anomaly, ``None`` when unknown (unlabeled evaluation data).
        attributes: ``(name, value)`` pairs parsed from the file name, in file-name order.
    """

    path: Path
    machine: str
    section: str
    split: str
    domain: str | None = None
    label: int | None = None
    attributes: tuple[tuple[str, str], ...] = field(default=())

    @property
    def name(self) -> str:
        """The file name (the key that scores are joined by)."""
        return self.path.name

    @property
    def is_target(self) -> bool:
        return self.domain == TARGET
