"""Train/test splits for labelled sets that do not come with a usable one (``stetho benchmark``).

Small real sets rarely have the split an unsupervised detector needs — normal clips to train on,
and normal *and* anomalous clips to test on:

* :func:`move_to_test`: a DCASE2020 subset with 75 training normals but 3 normal test clips
  moves ``n`` training normals (evenly spread over the sorted names) to the test split;
* :func:`reference_normals`: MIMII puts every normal clip of a small subset in the test split;
  the last ``n`` normals by name become the training reference;
* :func:`clips_from_rules`: a folder of one's own recordings (BLDC motors, a fan's states) is
  described by glob rules naming the machine type, section, label and split of the files each
  matches (``split: alternate`` puts every other file, by sorted name, in train and test).

Every function returns new :class:`Clip` lists; no clip is ever in both splits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from stetho.datasets.clip import NORMAL, Clip
from stetho.errors import ConfigError

#: Keys of a rule of :func:`clips_from_rules`.
RULE_KEYS = ("files", "machine", "section", "label", "split")
#: The ``split`` values of a rule: all clips to one split, or every other one (sorted by name).
RULE_SPLITS = ("train", "test", "alternate")


def move_to_test(clips: Sequence[Clip], n: int, where: str = "split") -> list[Clip]:
    """Move ``n`` training normals of each machine type, evenly spread over their sorted file
    names, to the test split. A training file whose name a test file also has is never moved
    (DCASE2020 reuses names across train/ and test/; score files are joined by name)."""
    if n < 1:
        raise ConfigError(f"{where}: move_to_test must be a positive number of clips, got {n}")
    out = list(clips)
    for machine in sorted({c.machine for c in clips}):
        taken = {c.name for c in clips if c.machine == machine and c.split == "test"}
        train = sorted((c for c in clips if c.machine == machine and c.split == "train" and c.name not in taken),
                       key=lambda c: c.name)
        if len(train) <= n:
            raise ConfigError(f"{where}: {machine} has {len(train)} movable training clip(s); cannot move {n} "
                              "to the test split and keep any for training")
        moved = {train[min(len(train) - 1, int((i + 0.5) * len(train) / n))].path for i in range(n)}
        out = [replace(c, split="test") if c.path in moved else c for c in out]
    return out


def reference_normals(clips: Sequence[Clip], n: int, where: str = "split") -> list[Clip]:
    """Make the last ``n`` normal clips (by name) of each (machine type, section) the training
    reference; every other clip is tested."""
    if n < 1:
        raise ConfigError(f"{where}: reference_normals must be a positive number of clips, got {n}")
    keep: set[Path] = set()
    for key in sorted({(c.machine, c.section) for c in clips}):
        normals = sorted((c for c in clips if (c.machine, c.section) == key and c.label == NORMAL),
                         key=lambda c: c.name)
        if len(normals) <= n:
            raise ConfigError(f"{where}: {key[0]} section {key[1]} has {len(normals)} normal clip(s); "
                              f"keeping {n} as reference leaves none to test")
        keep |= {c.path for c in normals[-n:]}
    return [replace(c, split="train" if c.path in keep else "test") for c in clips]


def clips_from_rules(root: str | Path, rules: Sequence[Mapping[str, Any]], where: str = "clips") -> list[Clip]:
    """Clips of ``root`` described by glob rules.

    Each rule: ``files`` (a glob relative to ``root``), ``machine``, ``section`` (default ``00``),
    ``label`` (``normal`` or ``anomaly``) and ``split`` (``train``, ``test`` or ``alternate``: the
    matched files sorted by path, the first, third ... to train, the others to test). A clip's
    name in score files is its path below ``root`` with ``/`` and spaces as ``_`` (file names
    repeat across folders: ``Healthy/M1/1400.wav``, ``Propeller/M1/1400.wav``).

    Raises:
        ConfigError: an unknown or missing key, a bad value, a rule matching no file, a file
            matched by two rules.
    """
    root = Path(root)
    clips: list[Clip] = []
    seen: dict[Path, int] = {}
    for i, rule in enumerate(rules):
        at = f"{where}[{i}]"
        if not isinstance(rule, Mapping):
            raise ConfigError(f"{at}: must be a mapping with keys {', '.join(RULE_KEYS)}")
        unknown = sorted(set(rule) - set(RULE_KEYS))
        missing = [k for k in ("files", "machine", "label", "split") if k not in rule]
        if unknown or missing:
            raise ConfigError(f"{at}: " + "; ".join(
                ([f"unknown key(s) {', '.join(unknown)}"] if unknown else [])
                + ([f"missing key(s) {', '.join(missing)}"] if missing else [])) + f" (keys: {', '.join(RULE_KEYS)})")
        label = {"normal": 0, "anomaly": 1}.get(str(rule["label"]))
        if label is None:
            raise ConfigError(f"{at}: label must be normal or anomaly, got {rule['label']!r}")
        split = str(rule["split"])
        if split not in RULE_SPLITS:
            raise ConfigError(f"{at}: split must be one of {', '.join(RULE_SPLITS)}, got {split!r}")
        if label == 1 and split != "test":
            raise ConfigError(f"{at}: anomalous clips belong to the test split (a detector trains on normal "
                              f"clips only), got split {split!r}")
        files = sorted(p for p in root.glob(str(rule["files"])) if p.is_file())
        if not files:
            raise ConfigError(f"{at}: {root / str(rule['files'])} matches no file")
        for j, path in enumerate(files):
            if path in seen:
                raise ConfigError(f"{at}: {path} is also matched by {where}[{seen[path]}]")
            seen[path] = i
            s = split if split != "alternate" else ("train" if j % 2 == 0 else "test")
            key = path.relative_to(root).as_posix().replace("/", "_").replace(" ", "_")
            clips.append(Clip(path=path, machine=str(rule["machine"]), section=str(rule.get("section", "00")),
                              split=s, label=label, key=key))
    return clips
