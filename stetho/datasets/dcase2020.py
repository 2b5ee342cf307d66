"""DCASE 2020 Task 2 layout: ``ROOT/<machine>/{train,test}/<label>_id_<XX>_<NNNNNNNN>.wav``.

File names, as the organisers write them (``.wav``; any other audio extension libsndfile reads
is accepted with the same stem)::

    normal_id_00_00000000.wav      (dev train/test, and renamed eval test)
    anomaly_id_02_00000012.wav     (dev test)
    id_01_00000000.wav             (unlabeled evaluation test clip)

The unit of evaluation is the machine **ID**; stetho stores it in ``Clip.section`` (and as the
``id`` metadata). There are no domains. Machine types: ToyCar, ToyConveyor, fan, pump, slider,
valve (MIMII and ToyADMOS recordings).
"""

from __future__ import annotations

import re
from pathlib import Path

from stetho.datasets.base import (
    AUDIO_SUFFIX, SPLITS, Scan, choose_machines, finish_scan, found_machines, parse_folder,
    warn_unfamiliar_machines,
)
from stetho.datasets.clip import Clip
from stetho.errors import DatasetError

LABELED_PATTERN = re.compile(r"^(?P<label>normal|anomaly)_id_(?P<id>\d{2})_(?P<index>\d+)" + AUDIO_SUFFIX)
UNLABELED_PATTERN = re.compile(r"^id_(?P<id>\d{2})_(?P<index>\d+)" + AUDIO_SUFFIX)
EXPECTED_NAME = (
    "<normal|anomaly>_id_<XX>_<NNNNNNNN>.wav or, for unlabeled evaluation clips, id_<XX>_<NNNNNNNN>.wav"
)
MACHINES = ("ToyCar", "ToyConveyor", "fan", "pump", "slider", "valve")


def matches(name: str) -> bool:
    """True when ``name`` follows the 2020 naming (labeled or unlabeled)."""
    return bool(LABELED_PATTERN.match(name) or UNLABELED_PATTERN.match(name))


def parse_filename(path: str | Path, machine: str, split: str) -> Clip:
    """Parse one DCASE 2020 file name into a :class:`Clip` (section = machine ID).

    Raises:
        DatasetError: the name does not follow the pattern, an anomaly lies in ``train/``, or an
            unlabeled name lies in ``train/``.
    """
    path = Path(path)
    m = LABELED_PATTERN.match(path.name)
    if m:
        if split == "train" and m["label"] != "normal":
            raise DatasetError(f"{path}: training clips must be normal (unsupervised training)")
        return Clip(path=path, machine=machine, section=m["id"], split=split,
                    label=1 if m["label"] == "anomaly" else 0, meta=(("id", m["id"]),))
    m = UNLABELED_PATTERN.match(path.name)
    if m and split == "test":
        return Clip(path=path, machine=machine, section=m["id"], split=split, meta=(("id", m["id"]),))
    raise DatasetError(f"{path}: file name does not parse; expected {EXPECTED_NAME}")


def scan(root: str | Path, machines: list[str] | None = None, splits: tuple[str, ...] = SPLITS) -> Scan:
    """Scan a DCASE 2020 folder (``<machine>/{train,test}/``); see the module docstring.

    Returns:
        A :class:`Scan`; names that do not parse are in ``problems``.
    """
    root = Path(root)
    available = found_machines(root, SPLITS, f"{root}/<machine>/{{train,test}}/"
                                             "<normal|anomaly>_id_XX_NNNNNNNN.wav (DCASE 2020 layout)")
    chosen = choose_machines(available, machines, root)
    warn_unfamiliar_machines(chosen, MACHINES, "DCASE 2020")
    out = Scan(dataset="dcase2020", root=root)
    for machine in chosen:
        for split in splits:
            parse_folder(out, root / machine / split, lambda p: parse_filename(p, machine, split))
    return finish_scan(out, root)
