"""``stetho run`` (toy data, train, test, report), ``compare`` (variants × seeds) and ``report``."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stetho.config import resolve
from stetho.errors import ConfigError, DatasetError, StethoError
from stetho.outputs.compare import Comparison, compare_runs
from stetho.pipeline.common import load_run_config, make_detector, missing_data_message, score_modes
from stetho.pipeline.testing import TestOutcome, test
from stetho.pipeline.training import train

if TYPE_CHECKING:
    from stetho.pipeline.search import SearchOutcome

log = logging.getLogger("stetho.pipeline")


@dataclass
class Cell:
    """One run of a recipe: its name (``<variant>/seed_<seed>`` in a comparison), resolved
    config and score modes."""

    name: str
    cfg: dict[str, Any]
    modes: list[str]

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg["out"])


ENGINES = ("local", "ray")


def run(cfg: Mapping[str, Any], report: bool = True, engine: str = "local", address: str | None = None,
        num_cpus: int | None = None) -> TestOutcome | Comparison | SearchOutcome:
    """``stetho run``: generate toy data if the recipe asks for it, then train, test, evaluate —
    or, when the recipe has ``compare:``, every variant × seed and their :func:`compare`.

    With ``report`` (the default) the HTML report follows: ``RUN/report.html`` (or, for a
    comparison, ``OUT/report.html`` over all its runs), figures also as PNGs beside the CSVs.

    ``engine``: ``local`` (one run after the other in this process) or ``ray`` (each run, and
    each machine type of a run, as a Ray task: :mod:`stetho.pipeline.ray_engine`; ``address``
    joins a cluster, else a local instance of ``num_cpus`` CPUs is started). Both write the
    same files.

    A recipe with ``search:`` runs its hyper-parameter search through Ray Tune whatever the
    ``engine`` (:func:`stetho.pipeline.search.search`: ``address`` joins a cluster, else a local
    instance) and returns its :class:`~stetho.pipeline.search.SearchOutcome`."""
    cfg = resolve(cfg)
    if cfg["search"] is None:
        _check_engine(engine, address)
    elif engine not in ENGINES:
        _check_engine(engine, None)
    cfg = with_toy_data(cfg)
    if cfg["search"] is not None:
        from stetho.pipeline.search import search

        outcome = search(cfg, address=address, num_cpus=num_cpus)
        if report and outcome.best is not None:
            _report([outcome.best.run_dir], outcome.best.run_dir / "report.html")
        return outcome
    if cfg["compare"] is not None:
        comparison = compare(cfg, engine=engine, address=address, num_cpus=num_cpus)
        if report:
            runs = list(dict.fromkeys(p for pairs in comparison.runs.values() for p, _ in pairs))
            _report(runs, Path(cfg["out"]) / "report.html")
        return comparison
    if engine == "ray":
        from stetho.pipeline.ray_engine import run_cells

        if not cfg["out"]:
            raise ConfigError("no run folder given (--out RUN or `out:` in the recipe)")
        if not cfg["data"]:
            raise ConfigError(missing_data_message(cfg))
        run_dir = Path(cfg["out"])
        cell = Cell(run_dir.name, cfg, score_modes(make_detector(cfg), cfg["test"]["score"]))
        journal = run_dir.parent / f"{run_dir.name}.ray_tasks.log"
        outcome = run_cells([cell], journal, address=address, num_cpus=num_cpus)[cell.name]
        outcome.run_dir = run_dir
    else:
        run_dir = train(cfg)
        outcome = test(run_dir, progress=cfg["progress"])
    if report and any(r is not None for r in outcome.results.values()):
        _report([run_dir], run_dir / "report.html")
    return outcome


def with_toy_data(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with its toy data generated into ``data`` (default ``toy_data``) when the recipe
    has ``toy:`` and the folder is missing; ``data`` then names it."""
    if cfg["toy"] is not None:
        from stetho.synth import make_toy_dataset

        data = Path(cfg["data"] or "toy_data")
        if not data.exists():
            toy = dict(cfg["toy"])
            log.info("generating toy data in %s (%s)", data, ", ".join(f"{k}={v}" for k, v in toy.items()))
            make_toy_dataset(data, progress=cfg["progress"], **toy)
        cfg["data"] = str(data)
    return cfg


def report(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """``stetho report``: the self-contained HTML report of tested runs, every run locked and
    recovered first (see :func:`stetho.outputs.report.report_runs`); returns the HTML file."""
    from stetho.outputs.report import report_runs

    return report_runs(run_dirs, out)


def _report(run_dirs: Sequence[Path], out: Path) -> None:
    """The report at the end of ``stetho run``; a failure to draw it does not fail the finished run."""
    try:
        report(run_dirs, out)  # logs where it was written
    except (StethoError, OSError, ValueError) as exc:
        log.warning("report not written: %s", exc)


def compare(cfg: Mapping[str, Any], engine: str = "local", address: str | None = None,
            num_cpus: int | None = None) -> Comparison:
    """Train and test every variant of ``cfg["compare"]`` with every seed, then compare them.

    Runs go to ``OUT/<variant>/seed_<seed>/`` (ordinary run folders); the comparison of every
    (variant, score mode) over the seeds to ``OUT/comparison_settings.csv``,
    ``comparison_models.csv`` and ``comparison.txt`` (see :mod:`stetho.outputs.compare`). A model
    is named ``<variant>/<mode>``, or ``<variant>`` when the variant is tested in one mode only.
    Every variant's config is checked before the first run. With ``compare.reuse``, a run
    folder already tested with the same model, parameters, seed and data is kept as it is.
    ``engine``, ``address`` and ``num_cpus``: as in :func:`run` (the files are the same).
    """
    _check_engine(engine, address)
    cfg = resolve(cfg)
    spec = cfg["compare"] or {}
    out, cells = plan_compare(cfg)
    todo = []
    for cell in cells:
        if spec.get("reuse") and _finished(cell.run_dir, cell.cfg, cell.modes):
            log.info("compare: %s: reusing the finished run in %s", cell.name, cell.run_dir)
        else:
            todo.append(cell)
    if engine == "ray":
        from stetho.pipeline.ray_engine import JOURNAL, run_cells

        outcomes = run_cells(todo, out / JOURNAL, address=address, num_cpus=num_cpus)
    else:
        outcomes = {}
        for cell in todo:
            log.info("compare: %s → %s", cell.name, cell.run_dir)
            train(cell.cfg)
            outcomes[cell.name] = test(cell.run_dir, score=cell.modes, progress=cell.cfg["progress"])
            _check_labeled(cell.cfg, outcomes[cell.name])
        for cell in todo:
            _check_labeled(cell.cfg, outcomes[cell.name])
    models: dict[str, list[tuple[Path, str]]] = {}
    for cell in cells:
        variant = cell.name.split("/")[0]
        for mode in cell.modes:
            models.setdefault(variant if len(cell.modes) == 1 else f"{variant}/{mode}", []).append((cell.run_dir, mode))
    comparison = compare_runs(models)
    comparison.write(out)
    return comparison


def plan_compare(cfg: Mapping[str, Any]) -> tuple[Path, list[Cell]]:
    """The output folder and the runs (:class:`Cell`: name
    ``<variant>/seed_<seed>``, config, score modes) of a resolved config with ``compare:``;
    every variant's parameters are checked here, before any training."""
    spec = cfg["compare"] or {}
    if not cfg["out"]:
        raise ConfigError("no output folder given (out: in the recipe, or out=DIR)")
    out = Path(cfg["out"])
    seeds = spec.get("seeds") or [cfg["seed"]]
    variants = spec.get("variants") or {cfg["model"]: {}}
    base = {**cfg, "compare": None, "toy": None}
    cells = []
    for name, over in variants.items():
        for seed in seeds:
            run_cfg = resolve(base, over or {}, {"seed": seed, "out": str(out / name / f"seed_{seed}"), "overwrite": True},
                              where=f"compare.variants.{name}")
            det = make_detector(run_cfg)  # parameter errors before any training
            cells.append(Cell(f"{name}/seed_{seed}", run_cfg, score_modes(det, run_cfg["test"]["score"])))
    if not cfg["data"]:
        raise ConfigError(missing_data_message(cfg))
    return out, cells


def _check_labeled(cfg: Mapping[str, Any], outcome: TestOutcome | None) -> None:
    if outcome is not None and any(r is None for r in outcome.results.values()):
        raise DatasetError(f"{cfg['data']}: the test clips carry no labels; nothing to compare")


def _check_engine(engine: str, address: str | None) -> None:
    if engine not in ENGINES:
        raise ConfigError(f"engine {engine!r} is unknown; choose from {', '.join(ENGINES)}")
    if address and engine != "ray":
        raise ConfigError("--address joins a Ray cluster: it needs --engine ray")


def _finished(run_dir: Path, cfg: Mapping[str, Any], modes: Sequence[str]) -> bool:
    """True when ``run_dir`` holds a tested run of the same model, parameters, seed and data."""
    if not all((run_dir / "results" / m / "sections.csv").is_file() for m in modes):
        return False
    try:
        done = load_run_config(run_dir)
    except StethoError:
        return False
    same = ("model", "params", "seed", "dataset", "mimii_split", "machines", "channel")
    return (all(done[k] == cfg[k] for k in same if k != "dataset" or cfg[k] != "auto")
            and Path(done["data"]) == Path(cfg["data"]).resolve())
