"""What every dataset layout shares: the scan result, root resolution, common checks.

Each layout (DCASE 2020, 2021, 2022-2025, MIMII, one's own folders, a manifest CSV) is a module
with a ``scan(root, machines, splits, **options) -> Scan`` function; :mod:`stetho.datasets.layouts`
registers them and detects which one a folder follows.
"""

from __future__ import annotations

import csv
import difflib
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stetho.audio.io import audio_extensions
from stetho.datasets.clip import ANOMALY, NORMAL, Clip
from stetho.datasets.names import name_message, quote
from stetho.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
#: How many items an error message lists before "... and N more".
LIST_LIMIT = 20
#: The extensions scanned as audio (every format libsndfile reads here, any case).
AUDIO_EXTENSIONS: frozenset[str] = audio_extensions()
#: Regular-expression tail matching ``.<any audio extension>`` in any case, for file-name patterns.
AUDIO_SUFFIX = r"\.(?i:" + "|".join(re.escape(e[1:]) for e in sorted(AUDIO_EXTENSIONS, key=len, reverse=True)) + r")$"
#: How many ignored files the log line names.
IGNORED_EXAMPLES = 3


@dataclass
class Scan:
    """What a dataset scan found.

    Attributes:
        clips: parsed clips, sorted by path.
        problems: ``(file, reason)`` for files that could not be used (names that do not parse,
            machine types or sections that are not safe names); never dropped silently: the
            caller decides whether they are fatal.
        ignored: files in the scanned folders that are not audio by their extension (notes,
            READMEs ...), sorted; :func:`stetho.datasets.scan_dataset` logs them in one line.
        dataset: the layout name (``"dcase2021"``, ``"mimii"`` ...), after auto-detection.
        root: the folder (or manifest file) actually scanned, after ``dev_data``/``eval_data``
            and ``raw`` resolution.
    """

    clips: list[Clip] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    dataset: str = ""
    root: Path | None = None

    def sort(self) -> "Scan":
        self.clips.sort(key=lambda c: str(c.path))
        self.ignored = sorted(set(self.ignored))
        return self


def listing(items: Sequence[object], limit: int = LIST_LIMIT, sep: str = "\n  ") -> str:
    """``items`` joined by ``sep``, at most ``limit`` of them, then "... and N more"."""
    shown = [str(x) for x in items[:limit]]
    if len(items) > limit:
        shown.append(f"... and {len(items) - limit} more")
    return sep.join(shown)


def audio_files(folder: Path, recursive: bool = False, ignored: list[Path] | None = None) -> list[Path]:
    """Audio files in ``folder`` (any extension of :data:`AUDIO_EXTENSIONS`, any case), sorted;
    hidden files and folders are skipped. Other files are appended to ``ignored`` when given."""
    if not folder.is_dir():
        return []
    found = folder.rglob("*") if recursive else folder.iterdir()
    out = []
    for p in found:
        if any(part.startswith(".") for part in p.relative_to(folder).parts) or not p.is_file():
            continue
        if p.suffix.lower() in AUDIO_EXTENSIONS:
            out.append(p)
        elif ignored is not None:
            ignored.append(p)
    return sorted(out)


def ignored_message(ignored: Sequence[Path], root: Path) -> str:
    """``"<root>: ignored N file(s) that are not audio (a.txt, b.pdf, ...)"``, one line."""
    def short(p: Path) -> str:
        try:
            return p.relative_to(root).as_posix()
        except ValueError:
            return str(p)
    shown = ", ".join(short(p) for p in ignored[:IGNORED_EXAMPLES])
    more = ", ..." if len(ignored) > IGNORED_EXAMPLES else ""
    common = ", ".join(e for e in (".wav", ".flac", ".ogg", ".mp3", ".aiff") if e in AUDIO_EXTENSIONS)
    return (f"{root}: ignored {len(ignored)} file(s) that are not audio ({shown}{more}); audio files "
            f"are those libsndfile reads ({common} ...)")


def nested_audio_problems(folder: Path, ignored: list[Path] | None = None) -> list[tuple[Path, str]]:
    """Audio files in sub-folders of ``folder``, as problems: DCASE layouts keep clips directly
    in their split folder, and a file that is not read must not vanish without a word."""
    if not folder.is_dir():
        return []
    nested_ignored: list[Path] = []
    out = [(p, f"lies in a sub-folder of {folder.name}/; this layout reads only files directly in it "
               "(use --dataset folder for nested recordings)")
           for p in audio_files(folder, recursive=True, ignored=nested_ignored) if p.parent != folder]
    if ignored is not None:
        ignored += [p for p in nested_ignored if p.parent != folder]
    return out


def parse_folder(scan: Scan, folder: Path, parse: Callable[[Path], Clip]) -> None:
    """Parse every audio file directly in ``folder`` into ``scan.clips``; names that do not parse
    (the parser's :class:`DatasetError`) and files in sub-folders go to ``scan.problems``,
    files that are not audio to ``scan.ignored``."""
    scan.problems += nested_audio_problems(folder, scan.ignored)
    for path in audio_files(folder, ignored=scan.ignored):
        try:
            scan.clips.append(parse(path))
        except DatasetError as exc:
            scan.problems.append((path, str(exc).split(": ", 1)[1]))


def drop_unsafe_names(scan: Scan) -> None:
    """Move clips whose machine type or section is not a safe name (they would become file
    names: :mod:`stetho.datasets.names`) from ``scan.clips`` to ``scan.problems``."""
    kept = []
    for clip in scan.clips:
        why = name_message(clip.machine, "machine type") or name_message(clip.section, "section")
        if why is None:
            kept.append(clip)
        else:
            scan.problems.append((clip.path, why))
    scan.clips = kept


def machine_dirs(root: Path, split_dirs: Iterable[str]) -> list[str]:
    """Sub-folders of ``root`` holding at least one of ``split_dirs``, sorted.

    Raises:
        DatasetError: ``root`` is not a folder.
    """
    if not root.is_dir():
        raise DatasetError(f"{root}: data folder does not exist" if not root.exists()
                           else f"{root}: is a file, not a data folder")
    split_dirs = tuple(split_dirs)
    return sorted(
        p.name for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and any((p / s).is_dir() for s in split_dirs)
    )


def found_machines(root: Path, split_dirs: Iterable[str], expected: str) -> list[str]:
    """:func:`machine_dirs` of ``root``; none is an error that says what the layout expects."""
    available = machine_dirs(root, split_dirs)
    if not available:
        raise DatasetError(f"{root}: no machine folders found; expected {expected}")
    return available


def finish_scan(scan: Scan, root: Path) -> Scan:
    """The end of every layout's scan: clips with unsafe names moved to the problems, file names
    checked unique per machine type, everything sorted."""
    drop_unsafe_names(scan)
    check_unique_names(scan.clips, root)
    return scan.sort()


def choose_machines(available: Sequence[str], machines: Sequence[str] | None, root: Path) -> list[str]:
    """``machines`` checked against ``available`` (all of them when ``machines`` is empty)."""
    if not machines:
        return list(available)
    machines = list(dict.fromkeys(machines))  # "fan,fan" would scan fan twice
    unknown = [m for m in machines if m not in available]
    if unknown:
        hints = []
        for m in unknown:
            close = difflib.get_close_matches(m, available, n=1, cutoff=0.6)
            if close:
                hints.append(f"{quote(m)} (did you mean '{close[0]}'?)")
            else:
                hints.append(quote(m))
        raise ConfigError(
            f"unknown machine type(s) {', '.join(hints)} in {root}; available: {', '.join(available)}"
        )
    return list(machines)


def warn_unfamiliar_machines(names: Iterable[str], known: Sequence[str], title: str) -> None:
    """Log a warning for machine folders that look like a misspelt known machine type."""
    lower = {k.lower(): k for k in known}
    for name in names:
        if name in known or name_message(name, "") is not None:  # unsafe names are problems instead
            continue
        if name.lower() in lower:
            close = [lower[name.lower()]]
        else:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        if close:
            log.warning(
                "machine type folder '%s' is not a %s machine type; did you mean '%s'? "
                "(it is used as it is)", name, title, close[0],
            )


LABEL_WORDS = {
    "0": NORMAL, "normal": NORMAL, "ok": NORMAL, "good": NORMAL,
    "1": ANOMALY, "anomaly": ANOMALY, "anomalous": ANOMALY, "abnormal": ANOMALY,
}


def parse_label(text: str) -> int:
    """``normal``/``0`` → 0 and ``anomaly``/``abnormal``/``1`` → 1 (case-insensitive).

    Raises:
        ValueError: any other text (the caller adds the file and line).
    """
    value = LABEL_WORDS.get(str(text).strip().lower())
    if value is None:
        raise ValueError(f"label '{text}' is not one of normal/anomaly/abnormal/0/1")
    return value


def parse_pairs(text: str) -> tuple[tuple[str, str], ...]:
    """``"speed=28V;load=high"`` → ``(("speed", "28V"), ("load", "high"))``; empty → ``()``."""
    out = []
    for item in filter(None, (s.strip() for s in str(text or "").split(";"))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"'{item}' is not name=value")
        out.append((name.strip(), value.strip()))
    return tuple(out)


def format_pairs(pairs: Iterable[tuple[str, str]]) -> str:
    """Inverse of :func:`parse_pairs`."""
    return ";".join(f"{k}={v}" for k, v in pairs)


def table_rows(
    path: Path, required: Sequence[str], known: Sequence[str], missing_hint: str, unknown_hint: str,
) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of a CSV with a header (cells stripped, blank rows skipped), after
    checking that every ``required`` column is there and no column is outside ``known``.

    Every row must have as many cells as the header: a longer row would lose its last cells (empty
    ones are allowed) and a shorter one would read its missing cells as empty (an unknown label,
    no domain), both without a word. An empty cell (``a.wav,fan,test,``) leaves a value unknown.

    Raises:
        DatasetError: a missing, unknown or repeated column, named with the hint that says what
            is expected; a row with more or fewer cells than the header; a file that is not UTF-8.
    """
    try:
        yield from _table_rows(path, required, known, missing_hint, unknown_hint)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not a UTF-8 text file (byte {exc.start}); save the table as UTF-8 CSV") from None
    except csv.Error as exc:
        raise DatasetError(f"{path}: not a readable CSV file ({exc})") from None


def _table_rows(
    path: Path, required: Sequence[str], known: Sequence[str], missing_hint: str, unknown_hint: str,
) -> Iterator[tuple[int, dict[str, str]]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in reader.fieldnames or []]
        repeated = sorted({h for h in header if header.count(h) > 1})
        if repeated:
            raise DatasetError(f"{path}: column(s) {', '.join(repeated)} appear more than once in the header")
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; {missing_hint}")
        unknown = [c for c in header if c not in known]
        if unknown:
            raise DatasetError(f"{path}: unknown column(s) {', '.join(unknown)}; {unknown_hint}")
        for raw in reader:
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            extra = [v for v in raw.get(None) or [] if v.strip()]  # type: ignore[call-overload]
            if not any(row.values()) and not extra:
                continue
            # reader.line_num is the physical line (the reader skips blank lines)
            if extra:  # empty cells past the header lose nothing (spreadsheets write them)
                raise DatasetError(f"{path}: line {reader.line_num} has {len(header) + len(raw[None])} cells "
                                   f"but the header has {len(header)} columns ({','.join(header)}); the "
                                   f"cell(s) past the header ({', '.join(map(repr, extra[:3]))}) would be lost")
            if any(v is None for v in raw.values()):
                cells = sum(v is not None for v in raw.values())
                raise DatasetError(f"{path}: line {reader.line_num} has {cells} cell(s) but the header has "
                                   f"{len(header)} columns ({','.join(header)}); leave an unknown value as "
                                   "an empty cell")
            yield reader.line_num, row


def check_unique_names(clips: Sequence[Clip], root: Path) -> None:
    """Scores are joined by name per machine type and split: a repeated name is an error."""
    seen: dict[tuple[str, str, str], list[Path]] = defaultdict(list)
    for c in clips:
        seen[(c.machine, c.split, c.name)].append(c.path)
    dups = [(k, v) for k, v in seen.items() if len(v) > 1]
    if dups:
        lines = [f"{m}/{s}: '{n}' is the name of {', '.join(str(p) for p in paths)}" for (m, s, n), paths in dups]
        raise DatasetError(
            f"{root}: {len(dups)} clip name(s) occur more than once within a machine type and split; "
            "scores are joined by name, so names must be unique (give a `key` column in a manifest, "
            "or rename the files):\n  " + listing(lines)
        )


def resolve_root(root: str | Path, subset: str | None = None) -> Path:
    """The folder that holds the machine folders.

    DCASE downloads unpack as ``dev_data/`` and ``eval_data/`` (and the baselines' scripts put
    them under ``.../dev_data/raw/``): when ``root`` holds ``dev_data``/``eval_data``, ``subset``
    (``"dev"`` or ``"eval"``) chooses one (required when both exist); a ``raw/`` folder alone
    below it is entered as well.

    Raises:
        DatasetError: the folder does not exist, or the subset is ambiguous or missing.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: data folder does not exist")
    if subset is not None and subset not in ("dev", "eval"):
        raise ConfigError(f"subset must be dev or eval, got {subset!r}")
    if root.is_file():
        return root
    present = [s for s in ("dev", "eval") if (root / f"{s}_data").is_dir()]
    if present:
        if subset is None:
            if len(present) > 1:
                raise DatasetError(
                    f"{root} holds both dev_data/ and eval_data/: choose one with --subset dev|eval "
                    "(or `subset:` in the recipe)"
                )
            subset = present[0]
            log.info("using %s (the only DCASE subset folder in %s)", f"{subset}_data", root)
        elif subset not in present:
            raise DatasetError(f"{root}: --subset {subset} asks for {subset}_data/, which is not there "
                               f"(found: {', '.join(s + '_data' for s in present)})")
        root = root / f"{subset}_data"
    elif subset is not None:
        log.info("--subset %s ignored: %s has no dev_data/ or eval_data/ folder", subset, root)
    raw = root / "raw"
    if raw.is_dir() and not any(
        p.is_dir() and p.name != "raw" and not p.name.startswith(".") for p in root.iterdir()
    ):
        root = raw
    return root
