"""MIMII layout: ``[<snr>_dB_<machine>/]<machine>/id_XX/{normal,abnormal}/NNNNNNNN.wav``.

The MIMII dataset (Purohit et al., 2019) ships one zip per SNR (6, 0, -6 dB) and machine type
(fan, pump, slider, valve), each unpacking to ``<snr>_dB_<machine>/<machine>/id_XX/{normal,
abnormal}/``. ``ROOT`` may be a folder of such folders, one of them, or a folder of
``<machine>/id_XX/`` folders without SNR. Files are 8-channel (channel 0 is used unless
``--channel``).

MIMII has no train/test split; it is made here, per folder ``(machine, id, SNR)``, from the
normal files sorted by name (deterministic, recorded in the run's ``train_files.csv``):

- ``"baseline"`` (default; the MIMII baseline's rule): as many normals as there are abnormal
  files go to test (the first ones), with every abnormal file; the other normals train.
- ``"cande"`` (CANDE-CP, METHODS.md §4): test = the first half of the normals + every abnormal
  file; train = the second half; validation = the first ``⌊0.1 · |train|⌋`` of the test normals,
  taken out of the test set (validation disjoint from test, stetho's default).
- ``"cande-overlap"``: the same, but the validation normals also stay in the test set, as in
  the original CANDE-CP code (which evaluated on them too).

Validation clips are training-split clips whose ``meta`` has ``role=validation``
(:data:`stetho.datasets.clip.VALIDATION`): detectors that pick their best epoch on them get them
in ``fit``; the pipeline leaves them out for the others.

Clips: ``section`` = the ID, with the SNR when known (``"00_-6dB"``), so metrics are per
(machine, id, SNR) as MIMII papers report them; ``meta`` holds ``id`` and ``snr``; the ``key``
(the name in score files) is ``<snr>_dB_<normal|abnormal>_id_<XX>_<file>`` (names repeat across
folders). No domains.
"""

from __future__ import annotations

import re
from pathlib import Path

from stetho.datasets.base import Scan, audio_files, choose_machines, finish_scan
from stetho.datasets.clip import ANOMALY, NORMAL, VALIDATION_META, Clip
from stetho.errors import ConfigError, DatasetError

SNR_FOLDER = re.compile(r"^(?P<snr>-?\d+)_dB_(?P<machine>.+)$")
ID_FOLDER = re.compile(r"^id_(?P<id>\d+)$")
LABEL_FOLDERS = {"normal": NORMAL, "abnormal": ANOMALY}
SPLIT_RULES = ("baseline", "cande", "cande-overlap")
#: Validation size of the CANDE rules, as a share of the folder's training normals (floored).
CANDE_VALIDATION_SHARE = 0.1
MACHINES = ("fan", "pump", "slider", "valve")


def looks_like(root: Path) -> bool:
    """True when ``root`` holds MIMII folders (``<snr>_dB_<m>/`` or ``<m>/id_XX/normal|abnormal``)."""
    return bool(_id_folders(root, depth_limit=3))


def _id_folders(root: Path, depth_limit: int = 3) -> list[Path]:
    """``id_XX`` folders with a ``normal`` or ``abnormal`` sub-folder, at most 3 levels down."""
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        for p in sorted(folder.iterdir()):
            if not p.is_dir() or p.name.startswith("."):
                continue
            # id_XX/{normal,abnormal} inside a split folder is one's own recordings, not MIMII.
            if (ID_FOLDER.match(p.name) and any((p / d).is_dir() for d in LABEL_FOLDERS)
                    and folder.name not in ("train", "test", "source_test", "target_test")):
                found.append(p)
            elif depth < depth_limit:
                walk(p, depth + 1)

    if root.is_dir():
        walk(root, 1)
    return found


def split_folder(
    normals: list[Path], abnormals: list[Path], rule: str
) -> tuple[list[Path], list[Path], list[Path]]:
    """(train, validation, test) normals of one ``id_XX`` folder under ``rule`` (input in any
    order; sorted by name here). Only the CANDE rules have validation normals; under
    ``"cande-overlap"`` they are in the test list too."""
    normals = sorted(normals)
    if rule == "baseline":
        k = min(len(abnormals), len(normals))
        return normals[k:], [], normals[:k]
    if rule in ("cande", "cande-overlap"):
        half = len(normals) // 2
        train, test = normals[half:], normals[:half]
        n_val = int(CANDE_VALIDATION_SHARE * len(train))
        validation = test[:n_val]
        return train, validation, test if rule == "cande-overlap" else test[n_val:]
    raise ConfigError(f"MIMII split rule must be one of {', '.join(SPLIT_RULES)}, got {rule!r}")


def scan(
    root: str | Path,
    machines: list[str] | None = None,
    splits: tuple[str, ...] = ("train", "test"),
    split_rule: str = "baseline",
) -> Scan:
    """Scan MIMII folders and split them (see the module docstring).

    Returns:
        A :class:`Scan` with every audio file (``.wav``, ``.flac`` ...: any format libsndfile
        reads) of every ``id_XX/{normal,abnormal}`` folder assigned to train or test (then
        filtered by ``splits``); files of a machine folder whose name is not a safe name are in
        its ``problems``, files that are not audio in its ``ignored``.

    Raises:
        DatasetError: no ``id_XX`` folders, or a folder whose name says another machine type.
    """
    root = Path(root)
    if split_rule not in SPLIT_RULES:
        raise ConfigError(f"MIMII split rule must be one of {', '.join(SPLIT_RULES)}, got {split_rule!r}")
    folders = _id_folders(root)
    if not folders:
        raise DatasetError(
            f"{root}: no MIMII folders found; expected [<snr>_dB_<machine>/]<machine>/id_XX/"
            "{normal,abnormal}/*.wav"
        )
    out = Scan(dataset="mimii", root=root)
    by_machine: dict[str, list[tuple[Path, str, str | None]]] = {}
    for folder in folders:
        machine = folder.parent.name
        snr = None
        for parent in folder.parents:
            m = SNR_FOLDER.match(parent.name)
            if m:
                if m["machine"] != machine:
                    raise DatasetError(f"{folder}: lies in '{parent.name}' but its machine folder is '{machine}'")
                snr = m["snr"]
                break
            if parent == root.parent:  # ROOT may be <snr>_dB_<m>/<m> itself: look one level up
                break
        by_machine.setdefault(machine, []).append((folder, ID_FOLDER.match(folder.name)["id"], snr))
    chosen = choose_machines(sorted(by_machine), machines, root)
    for machine in chosen:
        for folder, mid, snr in by_machine[machine]:
            files = {label: audio_files(folder / d, ignored=out.ignored) for d, label in LABEL_FOLDERS.items()}
            train, validation, test_normals = split_folder(files[NORMAL], files[ANOMALY], split_rule)
            section = mid if snr is None else f"{mid}_{snr}dB"
            meta = (("id", mid),) + ((("snr", snr),) if snr is not None else ())
            prefix = "" if snr is None else f"{snr}_dB_"
            assigned = ([(p, "train", NORMAL, meta) for p in train]
                        + [(p, "train", NORMAL, meta + (VALIDATION_META,)) for p in validation]
                        + [(p, "test", NORMAL, meta) for p in test_normals]
                        + [(p, "test", ANOMALY, meta) for p in files[ANOMALY]])
            for path, split, label, clip_meta in assigned:
                if split not in splits:
                    continue
                key = f"{prefix}{path.parent.name}_id_{mid}_{path.name}"
                out.clips.append(Clip(path=path, machine=machine, section=section, split=split,
                                      label=label, key=key, meta=clip_meta))
    return finish_scan(out, root)
