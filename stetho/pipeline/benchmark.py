"""``stetho benchmark SUITE.yaml``: every (dataset, method, seed) cell of a suite trained and
tested, fusions of their scores, and a leaderboard.

A suite (``recipes/bench_real.yaml``) is a YAML mapping::

    out: build/bench_real            # where cells, data manifests and the leaderboard go
    data_root: [../shared/data/real] # folders tried in turn for relative dataset paths
    seeds: [13711, 1, 2]
    jobs: 2                          # cells run at once, each in its own process
    threads: 1                       # torch / OpenMP threads of each cell
    defaults: {device: cpu}          # config keys (as in a recipe) of every cell
    datasets:
      gearbox: {data: dcase2021t2_dev_subset, about: "..."}
      slider: {data: dcase2020t2_dev_subset, machines: [slider], split: {move_to_test: 20}}
      fan: {data: mimii_fan_id00_subset, dataset: mimii, split: {reference_normals: 10}}
      bldc: {data: bldc_motor, clips: [{files: "Healthy/M1/*.wav", machine: bldc, section: M1,
                                        label: normal, split: alternate}, ...]}
    methods:
      ae: {model: ae, params: {epochs: 30}, score: [mse, mahalanobis]}
      cande: {model: cande, datasets: [gearbox]}     # only where it applies
    ensembles:
      ae+disc: {members: [ae/mse, discriminative/density], weights: [1, 1]}

A dataset's ``split`` (:mod:`stetho.datasets.resplit`) or ``clips`` rules are written as a
manifest into ``OUT/data/<dataset>.csv``; other keys of a dataset or method are recipe keys
(``dataset``, ``machines``, ``channel``, ``params`` ...). Each cell is an ordinary run folder,
``OUT/runs/<dataset>/<method>/seed_<seed>/``, trained and tested by ``stetho run`` in a child
process (so a crash or a leak stays in its cell, and its peak memory is its own: ``wait4``'s
``ru_maxrss``); its record — config hash, status, seconds, peak memory, the error's last line —
is ``OUT/cells/<dataset>/<method>/seed_<seed>.json``. A cell whose record says ``ok`` for the
same config hash is reused on a rerun; a failed one is tried again. A fusion
(:mod:`stetho.pipeline.ensemble`) of the same dataset and seed follows its members.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stetho.config import DEFAULTS, check_seed, load_recipe, resolve
from stetho.errors import ConfigError, StethoError
from stetho.fileio import atomic_write_text, file_sha256, make_dirs

log = logging.getLogger("stetho.pipeline")

SUITE_KEYS = ("include", "out", "title", "data_root", "seeds", "jobs", "threads", "defaults", "datasets", "methods", "ensembles")
#: Keys of a dataset that are not recipe keys.
DATASET_KEYS = ("split", "clips", "about")
SPLIT_KEYS = ("move_to_test", "reference_normals")
#: Keys of a method that are not recipe keys.
METHOD_KEYS = ("score", "datasets")
ENSEMBLE_KEYS = ("members", "weights", "datasets", "decision_fpr")


@dataclass
class Cell:
    """One (dataset, method, seed) run of a suite."""

    dataset: str
    method: str
    seed: int
    cfg: dict[str, Any]
    modes: list[str]
    run_dir: Path
    record: Path
    digest: str = ""


@dataclass
class Suite:
    """A validated suite (see the module docstring)."""

    path: Path
    out: Path
    title: str
    seeds: list[int]
    jobs: int
    threads: int
    datasets: dict[str, dict[str, Any]]
    methods: dict[str, dict[str, Any]]
    ensembles: dict[str, dict[str, Any]]
    data_root: Path | None
    defaults: dict[str, Any] = field(default_factory=dict)
    about: dict[str, str] = field(default_factory=dict)


def _mapping(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, Mapping):
        raise ConfigError(f"{where}: must be a mapping, got {type(v).__name__}")
    return dict(v)


def _unknown(d: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    bad = sorted(set(d) - set(allowed))
    if bad:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(bad)}; allowed: {', '.join(allowed)}")


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base``: mappings key by key (``methods.ae.params.epochs=5`` changes
    one parameter), anything else replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def _read_suite(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A suite file's keys; with ``include: OTHER.yaml`` (relative to the file's folder) the other
    suite's keys, each top-level key the file gives replacing the included one whole (a tuning
    suite takes the datasets of the leaderboard and gives methods of its own)."""
    raw = load_recipe(path)
    _unknown(raw, SUITE_KEYS, str(path))
    inc = raw.pop("include", None)
    if inc is None:
        return raw
    other = (path.parent / str(inc)).resolve()
    if other in seen or other == path.resolve():
        raise ConfigError(f"{path}: include: {inc} includes itself")
    return {**_read_suite(other, (*seen, path.resolve())), **raw}


def load_suite(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Suite:
    """Read and check a suite file; ``overrides`` (nested mappings, as :func:`stetho.config.
    parse_overrides` gives them) are merged into it (``seeds``, ``out``, ``methods.ae.params`` ...). Relative ``data_root`` folders are taken from the current
    folder, as recipe paths are; the first that exists is used (``None``: none exists)."""
    path = Path(path)
    raw = _deep_merge(_read_suite(path), overrides or {})
    where = str(path)
    _unknown(raw, SUITE_KEYS, where)
    for key in ("out", "datasets", "methods"):
        if not raw.get(key):
            raise ConfigError(f"{where}: no {key}: given")
    seeds = raw.get("seeds") or [DEFAULTS["seed"]]
    if not isinstance(seeds, list):
        seeds = [seeds]
    seeds = [check_seed(s, f"{where}: seeds") for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds repeat: {seeds}")
    jobs, threads = raw.get("jobs", 1), raw.get("threads", 1)
    for key, v in (("jobs", jobs), ("threads", threads)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{where}: {key} must be a positive whole number, got {v!r}")
    roots = raw.get("data_root") or []
    roots = [roots] if isinstance(roots, str) else list(roots)
    data_root = next((Path(r) for r in roots if Path(r).is_dir()), None)
    datasets = {str(k): _mapping(v, f"{where}: datasets.{k}") for k, v in _mapping(raw["datasets"], f"{where}: datasets").items()}
    methods = {str(k): _mapping(v, f"{where}: methods.{k}") for k, v in _mapping(raw["methods"], f"{where}: methods").items()}
    ensembles = {str(k): _mapping(v, f"{where}: ensembles.{k}")
                 for k, v in _mapping(raw.get("ensembles") or {}, f"{where}: ensembles").items()}
    for name, ds in datasets.items():
        if "data" not in ds:
            raise ConfigError(f"{where}: datasets.{name}: no data: given (a folder or manifest)")
        split = _mapping(ds.get("split") or {}, f"{where}: datasets.{name}.split")
        _unknown(split, SPLIT_KEYS, f"{where}: datasets.{name}.split")
        if split and ds.get("clips"):
            raise ConfigError(f"{where}: datasets.{name}: give split: or clips:, not both")
    for name, m in methods.items():
        if "model" not in m:
            raise ConfigError(f"{where}: methods.{name}: no model: given")
        if "/" in name:
            raise ConfigError(f"{where}: methods.{name}: a method name may not contain '/'")
        for ds in m.get("datasets") or []:
            if ds not in datasets:
                raise ConfigError(f"{where}: methods.{name}.datasets: unknown dataset {ds!r}; "
                                  f"the suite has {', '.join(datasets)}")
    for name, e in ensembles.items():
        _unknown(e, ENSEMBLE_KEYS, f"{where}: ensembles.{name}")
        members = e.get("members") or []
        if len(members) < 2:
            raise ConfigError(f"{where}: ensembles.{name}: members: needs at least two <method>/<mode> entries")
        for mem in members:
            method = str(mem).split("/")[0]
            if method not in methods:
                raise ConfigError(f"{where}: ensembles.{name}: member {mem!r} names no method of the suite "
                                  f"({', '.join(methods)})")
        weights = e.get("weights")
        if weights is not None and len(weights) != len(members):
            raise ConfigError(f"{where}: ensembles.{name}: {len(weights)} weights for {len(members)} members")
        if name in methods:
            raise ConfigError(f"{where}: ensembles.{name}: a method has the same name")
    about = {k: str(v.get("about", "")) for k, v in datasets.items()}
    return Suite(path=path, out=Path(raw["out"]), title=str(raw.get("title") or f"stetho benchmark: {path.name}"),
                 seeds=seeds, jobs=jobs, threads=threads, datasets=datasets, methods=methods, ensembles=ensembles,
                 data_root=data_root, defaults=_mapping(raw.get("defaults") or {}, f"{where}: defaults"), about=about)


def _data_path(suite: Suite, name: str) -> Path:
    data = Path(str(suite.datasets[name]["data"]))
    if data.is_absolute():
        return data
    if suite.data_root is None:
        raise ConfigError(f"{suite.path}: datasets.{name}: {data} is relative and no data_root folder exists")
    return suite.data_root / data


def prepare_data(suite: Suite, name: str) -> tuple[Path, dict[str, Any]]:
    """The ``data`` of a dataset's cells (its folder, or a manifest written to ``OUT/data``) and
    its recipe keys."""
    from stetho.datasets import scan_dataset
    from stetho.datasets.manifest import write_manifest
    from stetho.datasets.resplit import clips_from_rules, move_to_test, reference_normals

    spec = suite.datasets[name]
    keys = {k: v for k, v in spec.items() if k not in DATASET_KEYS and k != "data"}
    root = _data_path(suite, name)
    if not root.exists():
        raise ConfigError(f"{suite.path}: datasets.{name}: {root} does not exist")
    where = f"{suite.path}: datasets.{name}"
    if spec.get("clips"):
        clips = clips_from_rules(root, spec["clips"], where=f"{where}.clips")
        dataset = None
    elif spec.get("split"):
        scan = scan_dataset(root, dataset=keys.get("dataset", "auto"), machines=keys.get("machines"),
                            mimii_split=keys.get("mimii_split", "baseline"))
        clips, dataset = scan.clips, scan.dataset
        split = spec["split"]
        if "move_to_test" in split:
            clips = move_to_test(clips, int(split["move_to_test"]), where=f"{where}.split")
        if "reference_normals" in split:
            clips = reference_normals(clips, int(split["reference_normals"]), where=f"{where}.split")
    else:
        return root.resolve(), keys
    manifest = write_manifest(suite.out / "data" / f"{name}.csv", clips, dataset=dataset)
    keys = {k: v for k, v in keys.items() if k not in ("dataset", "mimii_split")}
    return manifest.resolve(), keys


def plan(suite: Suite) -> list[Cell]:
    """Every cell of the suite, configs resolved and each model's parameters checked (before
    any training: a typo fails in a second, not after an hour)."""
    from stetho.pipeline.common import make_detector, score_modes

    cells = []
    defaults = suite.defaults
    for ds in suite.datasets:
        data, ds_keys = prepare_data(suite, ds)
        digest_data = file_sha256(data) if data.is_file() else str(data)
        for method, spec in suite.methods.items():
            if spec.get("datasets") and ds not in spec["datasets"]:
                continue
            keys = {k: v for k, v in spec.items() if k not in METHOD_KEYS}
            score = spec.get("score", "all")
            for seed in suite.seeds:
                run_dir = suite.out / "runs" / ds / method / f"seed_{seed}"
                cfg = resolve(defaults, ds_keys, keys, {
                    "data": str(data), "seed": seed, "out": str(run_dir), "overwrite": True, "progress": False,
                    "threads": suite.threads, "test": {"score": score if isinstance(score, str) else ",".join(score)},
                }, where=f"{suite.path}: methods.{method} on {ds}")
                det = make_detector(cfg)
                modes = score_modes(det, cfg["test"]["score"])
                cell = Cell(ds, method, seed, cfg, modes, run_dir, suite.out / "cells" / ds / method / f"seed_{seed}.json")
                # every parameter the model will use, defaults included: a changed default reruns the cell
                cell.digest = _digest({**cfg, "out": None, "progress": None, "params": det.get_params()}, digest_data)
                cells.append(cell)
    return cells


def _digest(cfg: Mapping[str, Any], data: str) -> str:
    text = json.dumps({"cfg": cfg, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def finished(cell: Cell) -> bool:
    """True when the cell's record says ``ok`` for this config and its run holds every mode's
    results."""
    rec = _read_record(cell.record)
    return (rec.get("status") == "ok" and rec.get("digest") == cell.digest
            and all((cell.run_dir / "results" / m / "sections.csv").is_file() for m in cell.modes)
            and (cell.run_dir / "summary.csv").is_file())


def run_cell(cell: Cell, threads: int) -> dict[str, Any]:
    """Train and test one cell with ``stetho run`` in a child process; write and return its
    record (status ``ok`` or ``failed: <last error line>``, seconds, peak RSS in MB)."""
    make_dirs(cell.record.parent)
    recipe = cell.record.with_suffix(".yaml")
    atomic_write_text(recipe, yaml.safe_dump(cell.cfg, sort_keys=False))
    logfile = cell.record.with_suffix(".log")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "stetho.cli", "-q", "run", str(recipe), "--no-report"]
    t0 = time.perf_counter()
    with open(logfile, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    rec: dict[str, Any] = {"dataset": cell.dataset, "method": cell.method, "seed": cell.seed, "digest": cell.digest,
                           "seconds": seconds, "peak_mb": usage.ru_maxrss / 1024.0, "modes": cell.modes}
    if proc.returncode == 0:
        rec["status"] = "ok"
    else:
        lines = [x for x in logfile.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()]
        rec["status"] = "failed: " + (lines[-1].strip() if lines else f"exit code {proc.returncode}")
    atomic_write_text(cell.record, json.dumps(rec, indent=2) + "\n")
    return rec


@dataclass
class BenchmarkOutcome:
    """What :func:`benchmark` produced."""

    out: Path
    board: Any
    files: dict[str, Path]
    ran: int
    reused: int


def benchmark(suite: Suite, only: Sequence[str] | None = None, tabulate_only: bool = False) -> BenchmarkOutcome:
    """Run every unfinished cell of ``suite`` (``jobs`` at a time), then its fusions, then write
    the leaderboard into ``suite.out``. ``only``: ``dataset`` or ``dataset/method`` patterns
    limiting which cells run (the leaderboard shows every finished cell). ``tabulate_only``:
    run nothing, tabulate what is finished."""
    from stetho.outputs.leaderboard import leaderboard, write_leaderboard

    cells = plan(suite)
    done_before = [finished(c) for c in cells]
    todo = [c for c, done in zip(cells, done_before) if not done and _selected(c, only)] if not tabulate_only else []
    reused = sum(done_before)
    log.info("benchmark %s: %d cell(s), %d finished, %d to run with %d job(s)", suite.path, len(cells), reused,
             len(todo), suite.jobs)
    lock = threading.Lock()
    done = [0]

    def work(cell: Cell) -> None:
        rec = run_cell(cell, suite.threads)
        with lock:
            done[0] += 1
            log.info("[%d/%d] %s / %s / seed %d: %s in %.0f s, peak %.0f MB", done[0], len(todo), cell.dataset,
                     cell.method, cell.seed, rec["status"], rec["seconds"], rec["peak_mb"])

    if todo:
        with ThreadPoolExecutor(max_workers=suite.jobs) as pool:
            list(pool.map(work, todo))
    records = []
    for cell in cells:
        records += _cell_rows(cell, _read_record(cell.record))
    with _metric_notes_muted():
        records += run_ensembles(suite, cells)
    board = leaderboard(records)
    notes = [f"data root: {suite.data_root}", f"seeds: {', '.join(map(str, suite.seeds))}; "
             f"{suite.threads} thread(s) per cell, {suite.jobs} cell(s) at once"]
    files = write_leaderboard(suite.out, board, title=suite.title, about=suite.about, notes=notes)
    return BenchmarkOutcome(out=suite.out, board=board, files=files, ran=len(todo), reused=reused)


class _MutedNotes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING


@contextlib.contextmanager
def _metric_notes_muted():
    """The evaluator's per-section warnings (e.g. "no domains, so precision/recall/F1 ... are
    NaN") while fusions are evaluated: each member cell's log already holds them once, and a
    suite would repeat them for every fusion and seed."""
    logger = logging.getLogger("stetho.metrics")  # the one logger of the metrics package
    muted = _MutedNotes()
    logger.addFilter(muted)
    try:
        yield
    finally:
        logger.removeFilter(muted)


def _selected(cell: Cell, only: Sequence[str] | None) -> bool:
    return not only or any(p in (cell.dataset, f"{cell.dataset}/{cell.method}") for p in only)


def _cell_rows(cell: Cell, rec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Leaderboard rows of a cell, one per score mode (a missing or failed cell: its status)."""
    from stetho.outputs.leaderboard import cell_metrics

    rows = []
    for mode in cell.modes:
        row: dict[str, Any] = {"dataset": cell.dataset, "entry": f"{cell.method}/{mode}", "seed": cell.seed}
        if rec.get("status") == "ok" and rec.get("digest") == cell.digest:
            try:
                row.update(cell_metrics(cell.run_dir, mode), status="ok", **{"peak MB": rec.get("peak_mb")})
            except (OSError, KeyError, ValueError) as exc:
                row["status"] = f"unreadable: {exc}"
        else:
            row["status"] = rec.get("status", "not run") if rec.get("digest") in (None, cell.digest) else "stale"
        rows.append(row)
    return rows


def run_ensembles(suite: Suite, cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """Fuse the finished members of every ensemble per dataset and seed (reused when its members
    are unchanged); its leaderboard rows."""
    from stetho.outputs.leaderboard import cell_metrics

    rows = []
    by_key = {(c.dataset, c.method, c.seed): c for c in cells}
    for name, spec in suite.ensembles.items():
        members = [str(m).split("/", 1) for m in spec["members"]]
        weights = spec.get("weights") or [1.0] * len(members)
        for ds in suite.datasets:
            if spec.get("datasets") and ds not in spec["datasets"]:
                continue
            if not all((ds, m[0], suite.seeds[0]) in by_key for m in members):
                continue  # a member method does not run on this dataset
            for seed in suite.seeds:
                row: dict[str, Any] = {"dataset": ds, "entry": name, "seed": seed}
                mcells = [by_key[(ds, m[0], seed)] for m in members]
                if not all(finished(c) for c in mcells):
                    rows.append({**row, "status": "members not finished"})
                    continue
                out = suite.out / "runs" / ds / name / f"seed_{seed}"
                record = suite.out / "cells" / ds / name / f"seed_{seed}.json"
                digest = _digest({"members": spec["members"], "weights": weights,
                                  "decision_fpr": spec.get("decision_fpr", 0.1)}, ",".join(c.digest for c in mcells))
                try:
                    if _read_record(record).get("digest") != digest or not (out / "summary.csv").is_file():
                        _fuse(out, mcells, members, weights, spec.get("decision_fpr", 0.1), name)
                        make_dirs(record.parent)
                        atomic_write_text(record, json.dumps({"digest": digest, "status": "ok"}) + "\n")
                    metrics = cell_metrics(out, name)
                    peak = max(_read_record(c.record).get("peak_mb", float("nan")) for c in mcells)
                    rows.append({**row, **metrics, "status": "ok", "peak MB": peak})
                except (StethoError, OSError, ValueError) as exc:
                    rows.append({**row, "status": f"failed: {exc}"})
    return rows


def _fuse(out: Path, cells: Sequence[Cell], members: Sequence[Sequence[str]], weights: Sequence[float],
          decision_fpr: float, name: str) -> None:
    from stetho.pipeline.ensemble import ensemble

    if out.exists():
        shutil.rmtree(out)  # a fusion is cheap: its folder is written whole, never patched
    ensemble([(c.run_dir, m[1] if len(m) > 1 else None, float(w)) for c, m, w in zip(cells, members, weights)],
             out, name=name, decision_fpr=decision_fpr)
