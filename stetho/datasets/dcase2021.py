"""DCASE 2021 Task 2 layout: ``ROOT/<machine>/{train,source_test,target_test}/section_XX_...wav``.

File names, as the organisers write them (``.wav``; any other audio extension libsndfile reads
is accepted with the same stem)::

    train/section_00_source_train_normal_0000_<attributes>.wav
    train/section_00_target_train_normal_0000_<attributes>.wav
    source_test/section_00_source_test_anomaly_0000[_<attributes>].wav   (dev)
    target_test/section_03_target_test_0000.wav                          (unlabeled eval)

Sections 00-02 are the development set, 03-05 the evaluation set. Both test folders are the
``test`` split; the folder must agree with the domain in the name. The 2021 attribute strings
(e.g. ``0_g_25_mm_2000_mV_none``) have an odd number of tokens and are kept whole.
"""

from __future__ import annotations

import re
from pathlib import Path

from stetho.datasets.base import (
    AUDIO_SUFFIX, Scan, audio_files, choose_machines, finish_scan, found_machines, parse_folder,
    warn_unfamiliar_machines,
)
from stetho.datasets.clip import Clip
from stetho.datasets.dcase import parse_attributes
from stetho.errors import DatasetError

#: Folders of each split.
FOLDERS = {"train": ("train",), "test": ("source_test", "target_test")}
LABELED_PATTERN = re.compile(
    r"^section_(?P<section>\d{2})_(?P<domain>source|target)_(?P<split>train|test)_"
    r"(?P<label>normal|anomaly)_(?P<index>\d+)(?:_(?P<attrs>.*))?" + AUDIO_SUFFIX
)
UNLABELED_PATTERN = re.compile(
    r"^section_(?P<section>\d{2})_(?P<domain>source|target)_test_(?P<index>\d+)" + AUDIO_SUFFIX
)
EXPECTED_NAME = (
    "section_<XX>_<source|target>_<train|test>_<normal|anomaly>_<NNNN>[_<attributes>].wav or, for "
    "unlabeled evaluation clips, section_<XX>_<source|target>_test_<NNNN>.wav"
)
MACHINES = ("ToyCar", "ToyTrain", "fan", "gearbox", "pump", "slider", "valve")


def matches(name: str) -> bool:
    """True when ``name`` follows the 2021 naming (labeled or unlabeled)."""
    return bool(LABELED_PATTERN.match(name) or UNLABELED_PATTERN.match(name))


def parse_filename(path: str | Path, machine: str, folder: str) -> Clip:
    """Parse one DCASE 2021 file name found in ``folder`` (``train``, ``source_test`` or ``target_test``).

    Raises:
        DatasetError: the name does not parse or contradicts its folder.
    """
    path = Path(path)
    split = "train" if folder == "train" else "test"
    m = LABELED_PATTERN.match(path.name) or UNLABELED_PATTERN.match(path.name)
    if not m:
        raise DatasetError(f"{path}: file name does not parse; expected {EXPECTED_NAME}")
    name_split = m.groupdict().get("split") or "test"
    if name_split != split:
        raise DatasetError(f"{path}: name says split '{name_split}' but the file is in '{folder}/'")
    if split == "test" and folder != f"{m['domain']}_test":
        raise DatasetError(f"{path}: name says domain '{m['domain']}' but the file is in '{folder}/'")
    label = m.groupdict().get("label")
    if split == "train" and label != "normal":
        raise DatasetError(f"{path}: training clips must be normal (unsupervised training)")
    return Clip(
        path=path, machine=machine, section=m["section"], split=split, domain=m["domain"],
        label=None if label is None else int(label == "anomaly"),
        attributes=parse_attributes(m.groupdict().get("attrs")),
    )


def scan(root: str | Path, machines: list[str] | None = None, splits: tuple[str, ...] = ("train", "test")) -> Scan:
    """Scan a DCASE 2021 folder; see the module docstring.

    Returns:
        A :class:`Scan`; names that do not parse are in ``problems``.
    """
    root = Path(root)
    available = found_machines(root, ("train", "source_test", "target_test"),
                               f"{root}/<machine>/{{train,source_test,target_test}}/section_XX_...wav "
                               "(DCASE 2021 layout)")
    chosen = choose_machines(available, machines, root)
    warn_unfamiliar_machines(chosen, MACHINES, "DCASE 2021")
    out = Scan(dataset="dcase2021", root=root)
    for machine in chosen:
        if "test" in splits:
            out.problems += [(p, "DCASE 2021 keeps test clips in source_test/ and target_test/, not test/")
                             for p in audio_files(root / machine / "test", recursive=True, ignored=out.ignored)]
        for split in splits:
            for folder in FOLDERS[split]:
                parse_folder(out, root / machine / folder, lambda p: parse_filename(p, machine, folder))
    return finish_scan(out, root)
