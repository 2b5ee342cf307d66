"""Every dataset layout stetho reads, auto-detection, and one ``scan_dataset`` for all of them.

=============  =======================================================  =================
name           layout                                                    official score
=============  =======================================================  =================
dcase2020      ``<m>/{train,test}/normal_id_00_00000000.wav``            dcase2020
dcase2021      ``<m>/{train,source_test,target_test}/section_00_...``    dcase2021
dcase2022      ``<m>/{train,test}/section_00_source_train_...`` (00-05)  dcase2022
dcase2023-25   same naming, one section, ``attributes_00.csv``           dcase2023 ... 2025
mimii          ``[<snr>_dB_<m>/]<m>/id_00/{normal,abnormal}/*.wav``      dcase2020
folder         ``<m>/{train,test}/**/*.wav`` + optional ``labels.csv``   by domains
manifest       a CSV listing the clips (``--data clips.csv``)            its ``dataset``
=============  =======================================================  =================

"by domains": the 2022-2025 formula when the clips have domains, else the 2020 one. Score files
are named the way that formula's year named them (:data:`stetho.metrics.FORMULAS`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from stetho.datasets import dcase, dcase2020, dcase2021, folder, manifest, mimii
from stetho.datasets.base import SPLITS, Scan, audio_files, ignored_message, listing, machine_dirs, resolve_root
from stetho.datasets.clip import Clip
from stetho.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """One dataset layout.

    Attributes:
        name: the ``--dataset`` value.
        title: what a user calls it.
        formula: official-score formula name (see :mod:`stetho.metrics`), or ``None`` when it
            depends on the data (domains → ``dcase2022``, none → ``dcase2020``).
        scan: ``scan(root, machines, splits, **options) -> Scan``.
        expected: the folder layout in a few words, for messages (what to point ``--data`` at).
    """

    name: str
    title: str
    formula: str | None
    scan: Callable[..., Scan]
    expected: str = ""


def _dcase_year(year: str) -> Callable[..., Scan]:
    def scan(root, machines=None, splits=SPLITS, **_):
        return dcase.scan(root, machines, splits, year=year)
    return scan


LAYOUTS: dict[str, Layout] = {
    "dcase2020": Layout("dcase2020", "DCASE 2020 Task 2", "dcase2020",
                        lambda root, machines=None, splits=SPLITS, **_: dcase2020.scan(root, machines, splits),
                        "<machine>/{train,test}/<normal|anomaly>_id_XX_NNNNNNNN.wav"),
    "dcase2021": Layout("dcase2021", "DCASE 2021 Task 2", "dcase2021",
                        lambda root, machines=None, splits=SPLITS, **_: dcase2021.scan(root, machines, splits),
                        "<machine>/{train,source_test,target_test}/section_XX_*.wav"),
    **{f"dcase{y}": Layout(f"dcase{y}", f"DCASE {y} Task 2", f"dcase{y}", _dcase_year(f"dcase{y}"),
                           "<machine>/{train,test}/section_XX_<domain>_<split>_<label>_NNNN_<attributes>.wav")
       for y in (2022, 2023, 2024, 2025)},
    "mimii": Layout("mimii", "MIMII", "dcase2020",
                    lambda root, machines=None, splits=SPLITS, mimii_split="baseline", **_:
                    mimii.scan(root, machines, splits, split_rule=mimii_split),
                    "[<snr>_dB_<machine>/]<machine>/id_XX/{normal,abnormal}/*.wav: the MIMII zips of "
                    "zenodo.org/record/3384388 unpacked side by side"),
    "folder": Layout("folder", "own recordings (<machine>/{train,test}/)", None,
                     lambda root, machines=None, splits=SPLITS, **_: folder.scan(root, machines, splits),
                     "<machine>/{train,test}/**/*.wav [+ labels.csv]"),
    "manifest": Layout("manifest", "manifest CSV", None,
                       lambda root, machines=None, splits=SPLITS, **_: manifest.scan(root, machines, splits),
                       "a CSV with the columns path,machine,split[,label,...]"),
}
#: Accepted ``--dataset`` values.
DATASETS: tuple[str, ...] = ("auto", *LAYOUTS)


def get_layout(name: str) -> Layout:
    """The layout registered as ``name``; ``"manifest:<layout>"`` gives that layout's scoring."""
    base, _, inner = name.partition(":")
    if base == "manifest" and inner:
        inner_layout = get_layout(inner)
        return Layout(name, f"manifest of {inner_layout.title}", inner_layout.formula, LAYOUTS["manifest"].scan)
    try:
        return LAYOUTS[base]
    except KeyError:
        raise ConfigError(f"unknown dataset '{name}'; choose from {', '.join(DATASETS)}") from None


def official_formula(dataset: str, clips: Sequence[Clip]) -> str:
    """The official-score formula for clips of layout ``dataset`` (see :class:`Layout`)."""
    formula = get_layout(dataset).formula
    if formula is not None:
        return formula
    return "dcase2022" if any(c.domain is not None for c in clips) else "dcase2020"


def is_dcase_data(dataset: str) -> bool:
    """True when clips of layout ``dataset`` are DCASE (or MIMII) data, whose score is the official
    score of a year; False for one's own recordings (``folder``, a manifest without ``dataset``),
    whose score uses a DCASE formula but is nobody's official score."""
    return get_layout(dataset).formula is not None


# -- detection --------------------------------------------------------------------------------------
_KINDS = {
    "dcase2020": "DCASE 2020 names (<normal|anomaly>_id_XX_NNNNNNNN.wav)",
    "dcase2021": "DCASE 2021 folders (source_test/, target_test/)",
    "dcase2022+": "DCASE 2022-2025 names (section_XX_<domain>_<split>_<label>_NNNN_<attributes>.wav)",
    "folder": "other file names (one's own recordings)",
}


def _machine_kind(machine_dir: Path) -> tuple[str, list[Path]]:
    """The layout one machine folder follows, with example files; ``"mixed"`` if several."""
    if any((machine_dir / f).is_dir() for f in ("source_test", "target_test")):
        files = audio_files(machine_dir / "source_test") + audio_files(machine_dir / "target_test")
        return "dcase2021", files[:3]
    files = audio_files(machine_dir / "train", recursive=True) + audio_files(machine_dir / "test", recursive=True)
    y2020 = [p for p in files if dcase2020.matches(p.name)]
    y2022 = [p for p in files if dcase.matches(p.name)]
    if y2020 and y2022:
        return "mixed", y2020[:3] + y2022[:3]
    if y2020:
        return "dcase2020", y2020[:3]
    if y2022:
        return "dcase2022+", y2022[:3]
    return ("folder" if files else "empty"), files[:3]


def detect(root: str | Path) -> tuple[str, str]:
    """Which layout ``root`` follows, and why (one sentence for the log).

    Raises:
        DatasetError: no known layout, or several layouts mixed in one root (listing folders and
            example files of each).
    """
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "manifest", f"{root} is a CSV file: read as a manifest"
        raise DatasetError(f"{root}: is a file; --data takes a dataset folder or a manifest .csv")
    split_dirs = ("train", "test", "source_test", "target_test")
    machines = machine_dirs(root, split_dirs)
    is_mimii = mimii.looks_like(root)
    if not machines:
        if is_mimii:
            return "mimii", "folders <machine>/id_XX/{normal,abnormal}/ (MIMII)"
        raise DatasetError(
            f"{root}: no dataset found; expected <machine>/train/ and/or <machine>/test/ "
            "(DCASE 2020, 2022-2025, own recordings), <machine>/{train,source_test,target_test}/ "
            "(DCASE 2021), [<snr>_dB_<machine>/]<machine>/id_XX/{normal,abnormal}/ (MIMII), or a manifest .csv"
        )
    kinds: dict[str, list[tuple[str, list[Path]]]] = {}
    for m in machines:
        kind, examples = _machine_kind(root / m)
        kinds.setdefault(kind, []).append((m, examples))
    if len(kinds) > 1:
        kinds.pop("empty", None)  # a folder without audio says nothing about the layout
    if set(kinds) == {"empty"}:
        kinds = {"folder": kinds["empty"]}
    if is_mimii:
        kinds.setdefault("mimii", []).append(("MIMII id_XX folders", []))
    if len(kinds) > 1 or "mixed" in kinds:
        lines = []
        for kind, items in sorted(kinds.items()):
            what = _KINDS.get(kind, "MIMII folders" if kind == "mimii" else "DCASE 2020 and 2022-2025 names together")
            examples = [str(p) for _, ex in items for p in ex][:4]
            lines.append(f"{what}: {', '.join(m for m, _ in items)}"
                         + (f" (e.g. {', '.join(examples)})" if examples else ""))
        raise DatasetError(
            f"{root}: mixed dataset layouts in one root; keep one layout per data folder (or list the "
            "clips in a manifest CSV):\n  " + listing(lines)
        )
    kind = next(iter(kinds))
    if kind == "dcase2022+":
        sections = {
            dcase.LABELED_PATTERN.match(p.name) or dcase.UNLABELED_PATTERN.match(p.name)
            for m in machines for s in SPLITS for p in audio_files(root / m / s)
        }
        numbers = {mt["section"] for mt in sections if mt}
        if numbers - {"00"}:
            return "dcase2022", (f"DCASE 2022-2025 names with sections {', '.join(sorted(numbers))} "
                                 "(several sections per machine type: DCASE 2022)")
        return "dcase2023", ("DCASE 2022-2025 names with one section (00): DCASE 2023-2025 "
                             "(2023, 2024 and 2025 share naming and official score)")
    return kind, _KINDS[kind]


def scan_dataset(
    root: str | Path,
    dataset: str = "auto",
    machines: list[str] | None = None,
    splits: tuple[str, ...] = SPLITS,
    subset: str | None = None,
    mimii_split: str = "baseline",
) -> Scan:
    """Scan ``root`` with the parser of ``dataset`` (detected when ``"auto"``).

    Args:
        root: dataset folder (``dev_data``/``eval_data``/``raw`` are resolved, see
            :func:`stetho.datasets.base.resolve_root`) or a manifest CSV.
        dataset: one of :data:`DATASETS`.
        machines: machine types to keep (default: all).
        splits: ``("train",)``, ``("test",)`` or both.
        subset: ``"dev"`` or ``"eval"`` when ``root`` holds both ``dev_data`` and ``eval_data``.
        mimii_split: MIMII train/test rule, ``"baseline"``, ``"cande"`` or ``"cande-overlap"``.

    Returns:
        The :class:`Scan` (its ``dataset`` is the layout used, its ``root`` the folder read).
        Logged as warnings: files that are not audio (:attr:`Scan.ignored`, one line), and any
        ``labels.csv`` that the layout used does not read (only ``folder`` reads them).
    """
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset '{dataset}'; choose from {', '.join(DATASETS)}")
    root = resolve_root(root, subset)
    detected = dataset == "auto"
    if detected:
        dataset, reason = detect(root)
        log.info("dataset layout: %s (%s)", dataset, reason)
    scan = LAYOUTS[dataset].scan(root, machines=machines, splits=splits, mimii_split=mimii_split)
    inner = scan.dataset.partition(":")[2]
    if inner and inner not in LAYOUTS:
        raise DatasetError(f"{root}: the dataset column says '{inner}', which is not a layout stetho knows "
                           f"({', '.join(LAYOUTS)})")
    if scan.ignored:
        log.warning("%s", ignored_message(scan.ignored, root))
    _warn_unused_labels(root, scan, detected)
    return scan


#: (labels.csv, layout) pairs already warned about: a run scans its data several times.
_WARNED_LABELS: set[tuple[Path, str]] = set()


def _warn_unused_labels(root: Path, scan: Scan, detected: bool) -> None:
    """Warn (once per file and layout in a process) about ``labels.csv`` files that the layout
    used does not read: only the ``folder`` layout takes labels from them."""
    if scan.dataset == "folder" or not root.is_dir():
        return
    tables = [root / folder.LABELS_FILE] + sorted(
        p for p in root.glob(f"*/{folder.LABELS_FILE}") if not p.parent.name.startswith("."))
    for table in tables:
        key = (table.resolve(), scan.dataset)
        if not table.is_file() or key in _WARNED_LABELS:
            continue
        _WARNED_LABELS.add(key)
        title = get_layout(scan.dataset).title
        source = "the folder names (normal/abnormal)" if scan.dataset == "mimii" else "the file names"
        how = "detected by --dataset auto" if detected else f"--dataset {scan.dataset}"
        log.warning("%s ignored: the data follows the %s layout (%s), whose labels come from %s; use "
                    "--dataset folder to take the labels from labels.csv", table, title, how, source)
