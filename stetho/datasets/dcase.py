"""DCASE Task 2 layouts (2022-2025 naming): ``ROOT/<machine>/{train,test}/section_XX_...wav``.

File names, as the organisers write them::

    section_00_source_train_normal_0000_<attributes>.wav   (labeled: dev data, renamed eval test)
    section_00_0000.wav                                     (unlabeled evaluation test clip)

``<attributes>`` is ``name_value_name_value...`` (e.g. ``car_A2_spd_28V_mic_1``), may be empty,
``noAttribute``, or a token list of odd length (then kept whole under the name ``attributes``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from stetho.datasets.clip import Clip
from stetho.errors import ConfigError, DatasetError

SPLITS = ("train", "test")

LABELED_PATTERN = re.compile(
    r"^section_(?P<section>\d{2})_(?P<domain>source|target)_(?P<split>train|test)_"
    r"(?P<label>normal|anomaly)_(?P<index>\d+)(?:_(?P<attrs>.*))?\.(?i:wav)$"
)
UNLABELED_PATTERN = re.compile(r"^section_(?P<section>\d{2})_(?P<index>\d+)\.(?i:wav)$")
EXPECTED_NAME = (
    "section_<XX>_<source|target>_<train|test>_<normal|anomaly>_<NNNN>[_<attributes>].wav "
    "or, for unlabeled evaluation clips, section_<XX>_<NNNN>.wav"
)


def parse_attributes(text: str | None) -> tuple[tuple[str, str], ...]:
    """Split ``name_value_name_value`` into pairs; odd/opaque strings stay whole as ``attributes``."""
    if not text or text == "noAttribute":
        return ()
    tokens = text.split("_")
    if len(tokens) % 2:
        return (("attributes", text),)
    return tuple((tokens[i], tokens[i + 1]) for i in range(0, len(tokens), 2))


def parse_filename(path: str | Path, machine: str, split: str) -> Clip:
    """Parse one DCASE 2022-2025 file name into a :class:`Clip`.

    Args:
        path: the file (only its name is parsed).
        machine: machine type (the folder above ``train``/``test``).
        split: the folder it lies in, ``"train"`` or ``"test"``; must agree with the name.

    Raises:
        DatasetError: the name does not follow the pattern, or contradicts its folder.
    """
    path = Path(path)
    m = LABELED_PATTERN.match(path.name)
    if m:
        if m["split"] != split:
            raise DatasetError(f"{path}: name says split '{m['split']}' but the file is in '{split}/'")
        if split == "train" and m["label"] != "normal":
            raise DatasetError(f"{path}: training clips must be normal (unsupervised training)")
        return Clip(
            path=path,
            machine=machine,
            section=m["section"],
            split=split,
            domain=m["domain"],
            label=1 if m["label"] == "anomaly" else 0,
            attributes=parse_attributes(m["attrs"]),
        )
    m = UNLABELED_PATTERN.match(path.name)
    if m and split == "test":
        return Clip(path=path, machine=machine, section=m["section"], split=split)
    raise DatasetError(f"{path}: file name does not parse; expected {EXPECTED_NAME}")


@dataclass
class Scan:
    """What a dataset scan found: parsed clips (sorted by path) and files that did not parse."""

    clips: list[Clip] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)


def list_machines(root: str | Path) -> list[str]:
    """Machine types under ``root``: sub-folders holding a ``train`` or ``test`` folder, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: data folder does not exist")
    found = sorted(
        p.name for p in root.iterdir() if p.is_dir() and any((p / s).is_dir() for s in SPLITS)
    )
    if not found:
        raise DatasetError(
            f"{root}: no machine folders found; expected {root}/<machine>/train/*.wav "
            "and/or <machine>/test/*.wav (DCASE 2022-2025 layout)"
        )
    return found


def scan_dcase(
    root: str | Path,
    machines: list[str] | None = None,
    splits: tuple[str, ...] = SPLITS,
) -> Scan:
    """Scan a DCASE 2022-2025 style folder.

    Args:
        root: folder holding ``<machine>/{train,test}/``.
        machines: machine types to keep (default: all found). Unknown names are an error.
        splits: which split folders to read.

    Returns:
        A :class:`Scan`. Files whose names do not parse are reported in ``problems`` (never
        dropped silently); the caller decides whether that is fatal.
    """
    root = Path(root)
    available = list_machines(root)
    if machines:
        unknown = [m for m in machines if m not in available]
        if unknown:
            raise ConfigError(
                f"unknown machine type(s) {', '.join(unknown)} in {root}; "
                f"available: {', '.join(available)}"
            )
        chosen = list(machines)
    else:
        chosen = available
    scan = Scan()
    for machine in chosen:
        for split in splits:
            folder = root / machine / split
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.name.startswith(".") or path.is_dir():
                    continue
                if path.suffix.lower() != ".wav":
                    continue
                try:
                    scan.clips.append(parse_filename(path, machine, split))
                except DatasetError as exc:
                    scan.problems.append((path, str(exc).split(": ", 1)[1]))
    scan.clips.sort(key=lambda c: str(c.path))
    return scan
