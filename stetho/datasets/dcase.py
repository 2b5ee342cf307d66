"""DCASE Task 2 layouts of 2022-2025: ``ROOT/<machine>/{train,test}/section_XX_...wav``.

File names, as the organisers write them (``.wav``; any other audio extension libsndfile reads,
e.g. ``.flac``, is accepted with the same stem)::

    section_00_source_train_normal_0000_<attributes>.wav   (labeled: dev data, renamed eval test)
    section_00_0000.wav                                     (unlabeled evaluation test clip)

``<attributes>`` is ``name_value_name_value...`` (e.g. ``car_A2_spd_28V_mic_1``), may be empty,
``noAttribute``, or a token list of odd length (then kept whole under the name ``attributes``).
2022 has sections 00-02 (dev) and 03-05 (eval) per machine type; 2023-2025 one section (00) and
an ``attributes_00.csv`` beside ``train/`` and ``test/``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from stetho.datasets.base import (
    AUDIO_SUFFIX, SPLITS, Scan, choose_machines, finish_scan, machine_dirs, parse_folder,
    warn_unfamiliar_machines,
)
from stetho.datasets.clip import Clip
from stetho.errors import DatasetError

log = logging.getLogger(__name__)

LABELED_PATTERN = re.compile(
    r"^section_(?P<section>\d{2})_(?P<domain>source|target)_(?P<split>train|test)_"
    r"(?P<label>normal|anomaly)_(?P<index>\d+)(?:_(?P<attrs>.*))?" + AUDIO_SUFFIX
)
UNLABELED_PATTERN = re.compile(r"^section_(?P<section>\d{2})_(?P<index>\d+)" + AUDIO_SUFFIX)
EXPECTED_NAME = (
    "section_<XX>_<source|target>_<train|test>_<normal|anomaly>_<NNNN>[_<attributes>].wav "
    "or, for unlabeled evaluation clips, section_<XX>_<NNNN>.wav"
)

#: Machine types of each year's development and evaluation sets (for spelling warnings only).
MACHINES = {
    "dcase2022": ("ToyCar", "ToyTrain", "bearing", "fan", "gearbox", "slider", "valve"),
    "dcase2023": ("ToyCar", "ToyTrain", "bearing", "fan", "gearbox", "slider", "valve",
                  "ToyDrone", "ToyNscale", "ToyTank", "Vacuum", "bandsaw", "grinder", "shaker"),
    "dcase2024": ("ToyCar", "ToyTrain", "bearing", "fan", "gearbox", "slider", "valve",
                  "3DPrinter", "AirCompressor", "BrushlessMotor", "HairDryer", "HoveringDrone",
                  "RoboticArm", "Scanner", "ToothBrush", "ToyCircuit"),
    "dcase2025": ("ToyCar", "ToyTrain", "bearing", "fan", "gearbox", "slider", "valve",
                  "AutoTrash", "BandSealer", "CoffeeGrinder", "HomeCamera", "Polisher",
                  "ScrewFeeder", "ToyPet", "ToyRCCar"),
}
#: Years whose machine folders carry an ``attributes_00.csv``.
ATTRIBUTE_TABLE_YEARS = ("dcase2023", "dcase2024", "dcase2025")
#: (data folder, machine type) pairs already warned about a missing ``attributes_00.csv``: a run
#: scans its data several times (train, test), the warning is given once per process.
_WARNED_NO_TABLE: set[tuple[Path, str]] = set()


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


def matches(name: str) -> bool:
    """True when ``name`` follows the 2022-2025 naming (labeled or unlabeled)."""
    return bool(LABELED_PATTERN.match(name) or UNLABELED_PATTERN.match(name))


def list_machines(root: str | Path) -> list[str]:
    """Machine types under ``root``: sub-folders holding a ``train`` or ``test`` folder, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: data folder does not exist")
    found = machine_dirs(root, SPLITS)
    if not found:
        raise DatasetError(
            f"{root}: no machine folders found; expected {root}/<machine>/train/*.wav "
            "and/or <machine>/test/*.wav (DCASE 2022-2025 layout)"
        )
    return found


def scan(
    root: str | Path,
    machines: list[str] | None = None,
    splits: tuple[str, ...] = SPLITS,
    year: str = "dcase2023",
) -> Scan:
    """Scan a DCASE 2022-2025 style folder.

    Args:
        root: folder holding ``<machine>/{train,test}/``.
        machines: machine types to keep (default: all found). Unknown names are an error.
        splits: which split folders to read.
        year: ``"dcase2022"`` ... ``"dcase2025"``: which machine-type list spelling warnings use,
            and whether a missing ``attributes_00.csv`` is worth a warning (2023-2025 only, once
            per data folder and machine type in a process).

    Returns:
        A :class:`Scan`. Files whose names do not parse are reported in ``problems`` (never
        dropped silently); the caller decides whether that is fatal.
    """
    root = Path(root)
    available = list_machines(root)
    chosen = choose_machines(available, machines, root)
    warn_unfamiliar_machines(chosen, MACHINES.get(year, MACHINES["dcase2023"]), year.upper())
    out = Scan(dataset=year, root=root)
    no_table = []
    if year in ATTRIBUTE_TABLE_YEARS:  # 2022 never had attribute tables
        no_table = [m for m in chosen if (root.resolve(), m) not in _WARNED_NO_TABLE
                    and not any((root / m).glob("attributes_*.csv"))]
        _WARNED_NO_TABLE.update((root.resolve(), m) for m in no_table)
    if no_table:
        log.warning(
            "%s: no attributes_00.csv beside train/ and test/ of %s (DCASE 2023-2025 ship one per "
            "machine type); attributes are read from the file names", root, ", ".join(no_table),
        )
    for machine in chosen:
        for split in splits:
            parse_folder(out, root / machine / split, lambda p: parse_filename(p, machine, split))
    return finish_scan(out, root)


def scan_dcase(root: str | Path, machines: list[str] | None = None, splits: tuple[str, ...] = SPLITS) -> Scan:
    """:func:`scan` with the 2023 settings (kept for the Python API of earlier versions)."""
    return scan(root, machines, splits, year="dcase2023")
