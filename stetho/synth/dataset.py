"""The toy dataset: which files it has (:func:`plan_toy_dataset`) and writing them
(:func:`make_toy_dataset`) in the DCASE2023 Task 2 development layout, one section, ``00``, per
machine type::

    OUT/<machine>/train/section_00_{source|target}_train_normal_NNNN_<attrs>.wav
    OUT/<machine>/test/section_00_{source|target}_test_{normal|anomaly}_NNNN_<attrs>.wav
    OUT/<machine>/attributes_00.csv      # file_name,d1p,d1v,d2p,d2v,...

Every clip draws from its own generator, seeded from ``(seed, machine, split, domain, label,
index)`` through :class:`numpy.random.SeedSequence` with names hashed by ``zlib.crc32`` (stable
across processes, unlike ``hash()``), so a machine generated alone is identical to the same
machine generated next to others, and clips can be synthesised in parallel threads.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stetho.audio.io import write_wav
from stetho.datasets.clip import ANOMALY, DOMAINS, NORMAL, SOURCE, TARGET, Clip
from stetho.errors import ConfigError
from stetho.fileio import atomic_write_text, csv_text
from stetho.synth.domain_shift import check_shift
from stetho.synth.machines import MACHINES, machine_type
from stetho.synth.recording import check_duration_sr, synthesize_clip

log = logging.getLogger(__name__)

SECTION = "00"

#: DCASE2023 Task 2 development file names, e.g.
#: ``section_00_source_train_normal_0000_spd_28_load_3.wav``.
FILE_NAME_RE = re.compile(
    r"^section_(?P<section>\d{2})_(?P<domain>source|target)_(?P<split>train|test)_"
    r"(?P<label>normal|anomaly)_(?P<index>\d{4})(?P<attrs>(?:_[^_/]+_[^_/]+)*)\.wav$"
)


@dataclass(frozen=True)
class ToyClipPlan:
    """What one file of the toy dataset will contain (known before any audio is made).

    Attributes:
        machine, split, domain: as in :class:`~stetho.datasets.clip.Clip`.
        label: 0 normal, 1 anomaly.
        index: the per-(domain, split, label) counter in the file name.
        attributes: ``(name, value)`` pairs in file-name order.
        anomaly: the fault kind of an anomalous clip (never written in the file name), else None.
        seed: the dataset seed.
    """

    machine: str
    split: str
    domain: str
    label: int
    index: int
    attributes: tuple[tuple[str, str], ...]
    anomaly: str | None
    seed: int

    @property
    def file_name(self) -> str:
        state = "anomaly" if self.label == ANOMALY else "normal"
        attrs = "".join(f"_{k}_{v}" for k, v in self.attributes)
        return f"section_{SECTION}_{self.domain}_{self.split}_{state}_{self.index:04d}{attrs}.wav"

    @property
    def relative_path(self) -> str:
        """``<machine>/<split>/<file name>``, as in ``attributes_00.csv``."""
        return f"{self.machine}/{self.split}/{self.file_name}"

    def rngs(self) -> tuple[np.random.Generator, np.random.Generator]:
        """(generator that picks the fault kind, generator that synthesises the audio)."""
        return _clip_rngs(self.seed, self.machine, self.split, self.domain, self.label, self.index)


def _crc(s: str) -> int:
    return zlib.crc32(s.encode("utf-8"))


def _clip_rngs(seed: int, machine: str, split: str, domain: str, label: int, index: int):
    ss = np.random.SeedSequence([seed, _crc(machine), _crc(split), _crc(domain), label, index])
    pick, audio = ss.spawn(2)
    return np.random.default_rng(pick), np.random.default_rng(audio)


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    if value > 9999:
        raise ConfigError(f"{name} must be at most 9999 (4-digit file counter), got {value!r}")
    return int(value)


def _resolve_machines(machines: Sequence[str] | None) -> list[str]:
    if machines is None:
        return list(MACHINES)
    if isinstance(machines, str):  # a lone name, not a sequence of characters
        machines = [machines]
    names: list[str] = []
    for m in machines:
        machine_type(m)
        if m not in names:
            names.append(m)
    if not names:
        raise ConfigError(f"no machines given; known machines: {', '.join(MACHINES)}")
    return names


def plan_toy_dataset(
    machines: Sequence[str] | None = None,
    train_clips: int = 100,
    target_train_clips: int = 10,
    test_clips: int = 20,
    seed: int = 0,
) -> list[ToyClipPlan]:
    """The files :func:`make_toy_dataset` writes for these arguments, with each anomaly's kind.

    Attribute combinations are assigned round-robin per (domain, split, label), so every
    combination is covered evenly; anomaly kinds are drawn per clip from its own generator.
    Arguments as in :func:`make_toy_dataset`. Returns plans sorted by relative path.
    """
    names = _resolve_machines(machines)
    counts = {
        ("train", SOURCE, NORMAL): _check_count("train_clips", train_clips),
        ("train", TARGET, NORMAL): _check_count("target_train_clips", target_train_clips),
    }
    tc = _check_count("test_clips", test_clips)
    for dom in DOMAINS:
        for lab in (NORMAL, ANOMALY):
            counts[("test", dom, lab)] = tc
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    plans = []
    for m in names:
        mtype = MACHINES[m]
        for (split, dom, lab), count in counts.items():
            combos = mtype.combinations(dom)
            for i in range(count):
                kind = None
                if lab == ANOMALY:
                    pick, _ = _clip_rngs(int(seed), m, split, dom, lab, i)
                    kind = str(pick.choice(mtype.anomalies))
                plans.append(ToyClipPlan(m, split, dom, lab, i, combos[i % len(combos)], kind, int(seed)))
    return sorted(plans, key=lambda p: p.relative_path)


def render_plan(plan: ToyClipPlan, duration: float, sr: int, domain_shift: str = "mild") -> np.ndarray:
    """The audio of one planned file: float32, shape ``(round(duration * sr),)``."""
    _, audio_rng = plan.rngs()
    attrs = dict(plan.attributes)
    return synthesize_clip(plan.machine, plan.domain, plan.anomaly, attrs, duration, sr, audio_rng, domain_shift)


def make_toy_dataset(
    out: str | Path,
    machines: Sequence[str] | None = None,
    train_clips: int = 100,
    target_train_clips: int = 10,
    test_clips: int = 20,
    duration: float = 10.0,
    seed: int = 0,
    sr: int = 16000,
    progress: bool = False,
    domain_shift: str = "mild",
) -> list[Clip]:
    """Write a synthetic dataset in the DCASE2023 Task 2 development layout.

    Per machine type: ``train_clips`` source and ``target_train_clips`` target normal training
    clips, and ``test_clips`` clips for each of source-normal, source-anomaly, target-normal and
    target-anomaly in the test split, as 16-bit mono WAV, plus ``attributes_00.csv``. Files are
    identical byte for byte for the same arguments, and a machine's files do not depend on which
    other machines are generated with it. Toy-named WAV files already in ``OUT/<machine>/train``
    or ``test`` that are not part of this dataset (left from a bigger run) are deleted, so the
    folder always holds exactly this dataset.

    Args:
        out: output folder (created).
        machines: machine types (keys of :data:`~stetho.synth.machines.MACHINES`); ``None`` means all.
        train_clips: source-domain normal training clips per machine.
        target_train_clips: target-domain normal training clips per machine.
        test_clips: test clips per (domain, label) per machine.
        duration: clip length in seconds.
        seed: dataset seed (non-negative integer).
        sr: sample rate in Hz.
        progress: show a progress bar (tqdm) on stderr.
        domain_shift: ``"mild"`` (default), ``"strong"`` or ``"factory"``: how much louder,
            browner and more humming the target site is, and whether factory events come and go
            at both sites (:data:`~stetho.synth.domain_shift.DOMAIN_SHIFTS`).

    Returns:
        The written clips, sorted by path.

    Raises:
        ConfigError: unknown machine, negative count, non-positive duration, bad seed or sr.
    """
    check_duration_sr(duration, sr)
    check_shift(domain_shift)
    plans = plan_toy_dataset(machines, train_clips, target_train_clips, test_clips, seed)
    out = Path(out)
    names = _resolve_machines(machines)
    for m in names:
        _remove_stale(out / m, {p.relative_path for p in plans if p.machine == m})
    log.info("writing %d toy clips (%s) to %s", len(plans), ", ".join(names), out)

    def work(plan: ToyClipPlan) -> None:
        write_wav(out / plan.relative_path, render_plan(plan, duration, sr, domain_shift), sr)

    # numpy and scipy release the GIL in the heavy parts, so threads use the cores; every clip has
    # its own generator, so the result does not depend on scheduling.
    workers = max(1, min(4, os.cpu_count() or 1))
    from tqdm import tqdm

    with ThreadPoolExecutor(workers) as pool, tqdm(
        total=len(plans), disable=None if progress else True, desc="toy dataset", unit="clip"
    ) as bar:
        for _ in pool.map(work, plans):
            bar.update(1)

    for m in names:
        _write_attributes(out / m, [p for p in plans if p.machine == m])
    return sorted(
        (
            Clip(out / p.relative_path, p.machine, SECTION, p.split, p.domain, p.label, p.attributes)
            for p in plans
        ),
        key=lambda c: c.path,
    )


def _remove_stale(machine_dir: Path, keep: set[str]) -> None:
    """Delete toy-named WAVs of an earlier, different run from ``machine_dir/{train,test}``."""
    stale = []
    for split in ("train", "test"):
        folder = machine_dir / split
        if folder.is_dir():
            stale += [
                f
                for f in folder.iterdir()
                if FILE_NAME_RE.match(f.name) and f"{machine_dir.name}/{split}/{f.name}" not in keep
            ]
    for f in stale:
        f.unlink()
    if stale:
        log.info("removed %d toy file(s) of an earlier run from %s", len(stale), machine_dir)


def _write_attributes(machine_dir: Path, plans: Sequence[ToyClipPlan]) -> None:
    """Write ``attributes_00.csv`` (DCASE2023: ``file_name,d1p,d1v,d2p,d2v,...``), atomically."""
    width = max((len(p.attributes) for p in plans), default=len(MACHINES[machine_dir.name].attribute_names))
    header = ["file_name"] + [f"d{i}{s}" for i in range(1, width + 1) for s in ("p", "v")]
    rows = []
    for p in sorted(plans, key=lambda p: p.relative_path):
        cells = [x for kv in p.attributes for x in kv]
        rows.append([p.relative_path, *cells, *[""] * (2 * width - len(cells))])
    atomic_write_text(machine_dir / f"attributes_{SECTION}.csv", csv_text(rows, header=header))
