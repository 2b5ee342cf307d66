"""Hyper-parameter search through Ray Tune: a recipe's ``search:`` block (``stetho run RECIPE``).

::

    search:
      method: grid            # grid (every combination of the lists) | random (samples draws)
      samples: 8              # random only: how many trials
      seed: 0                 # random only: the draws (default: the recipe's seed)
      space:                  # model hyper-parameters only (params.NAME)
        params.k: [1, 3, 5]                   # a list: grid values, or a uniform choice when random
        params.lr: {loguniform: [1.0e-4, 1.0e-2]}   # random only; also uniform, randint (both ends included)
      metric: official        # official | auc_source | pauc | ... (config.SEARCH_METRICS)
      mode: max               # max | min
      score: auto             # the score mode measured: auto = the trial's default mode
      keep: best              # best | all: which trials' run folders stay

Each trial is one ordinary training and test of the recipe with the trial's parameters and the
recipe's ``seed`` (one seed per trial: the best recipe then reproduces the best trial's files byte
for byte; judge it over more seeds afterwards with a ``compare:`` of ``best_recipe.yaml``). A
trial is a Ray Tune function trainable (:func:`_run_trial`) asking for the recipe's
``resources``; it trains and tests in its worker with
:func:`stetho.pipeline.ray_engine.finish_cell`, so its files are those of ``stetho run``.
The metric is read from the test outcome: the official score (or the arithmetic mean over
sections of one metric) of the score mode on the **development** test split. Evaluation data
is refused before anything runs (:func:`check_development_data`): picking parameters on the
evaluation set would make its score an optimistic, no longer independent estimate.

Outputs in ``OUT`` (the recipe's ``out``): ``search_results.csv`` (every trial: its parameters,
score mode, metric, run folder, error), ``best_recipe.yaml`` (the recipe with ``search:``
removed and the best parameters filled in; ``stetho run`` runs it as it is), the trials' run
folders ``trials/trial_NNNNN/`` (the best one only with ``keep: best``), Ray Tune's experiment
folder ``tune/`` and the task log ``ray_tasks.log``.
"""

from __future__ import annotations

import itertools
import logging
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stetho.config import DEFAULTS, SEARCH_METRICS, dump, resolve
from stetho.datasets.base import resolve_root
from stetho.datasets.dcase import MACHINES
from stetho.errors import ConfigError, DatasetError, StethoError
from stetho.fileio import atomic_write_text, csv_text, make_dirs
from stetho.metrics import EvaluationResult
from stetho.pipeline.common import make_detector, missing_data_message, scan_split, score_modes

log = logging.getLogger("stetho.pipeline")

#: The results table, the best configuration and the trials' folder in the output folder.
RESULTS_CSV = "search_results.csv"
BEST_RECIPE = "best_recipe.yaml"
TRIALS = "trials"
TUNE_DIR = "tune"
#: Combinations of a grid checked one by one before the search (beyond: each value alone).
GRID_CHECK_LIMIT = 1000
#: Sections of the DCASE 2021 and 2022 evaluation sets (00-02 are the development sections).
EVAL_SECTIONS = {"dcase2021": {"03", "04", "05"}, "dcase2022": {"03", "04", "05"}}
#: How many machine types of each year are development types (the rest of
#: :data:`stetho.datasets.dcase.MACHINES` are the evaluation set's).
DEV_MACHINE_COUNT = 7


@dataclass
class Trial:
    """One trial of a search: its number, parameters (``NAME -> value``), the score mode
    measured, the metric's value (NaN when undefined or failed), run folder and error text."""

    index: int
    params: dict[str, Any]
    score_mode: str | None
    value: float
    run_dir: Path
    error: str | None = None


@dataclass
class SearchOutcome:
    """What :func:`search` produced (see the module docstring for the files)."""

    out: Path
    metric: str
    mode: str
    trials: list[Trial] = field(default_factory=list)
    best: Trial | None = None
    results_csv: Path | None = None
    best_recipe: Path | None = None

    def format_text(self) -> str:
        """The trials as a plain table, the best marked with ``*``."""
        names = list(dict.fromkeys(k for t in self.trials for k in t.params))
        header = ["trial", *[f"params.{n}" for n in names], "score mode", self.metric]
        rows = []
        for t in self.trials:
            value = f"{t.value:.4f}" if math.isfinite(t.value) else ("failed" if t.error else "nan")
            star = "*" if self.best is not None and t.index == self.best.index else ""
            rows.append([f"{star}{t.index}", *[str(t.params.get(n)) for n in names], t.score_mode or "-", value])
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header, *rows])


def search_spec(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg["search"]`` with its defaults filled in (``seed``: the recipe's)."""
    spec = dict(cfg["search"] or {})
    spec.setdefault("method", "grid")
    spec.setdefault("samples", 1 if spec["method"] == "grid" else None)
    spec["seed"] = cfg["seed"] if spec.get("seed") is None else spec["seed"]
    spec.setdefault("metric", "official")
    spec.setdefault("mode", "max")
    spec.setdefault("score", "auto")
    spec.setdefault("keep", "best")
    return spec


def trial_config(base: Mapping[str, Any], params: Mapping[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """The resolved config of one trial: ``base`` (without ``search:``) with ``params`` set, run
    into ``run_dir``."""
    return resolve({**base, "search": None, "compare": None, "toy": None},
                   {"params": dict(params), "out": str(run_dir), "overwrite": True})


def metric_value(result: EvaluationResult | None, metric: str) -> float:
    """``metric`` of a test result: ``official`` is the official score (NaN when partial); any
    other :data:`~stetho.config.SEARCH_METRICS` name the arithmetic mean of that metric over the
    sections where it is defined (NaN when it is nowhere)."""
    if result is None:
        return math.nan
    key = SEARCH_METRICS[metric]
    if key == "official":
        return float(result.official_score)
    values = [s.metrics.get(key, math.nan) for s in result.sections]
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan


def measured_mode(cfg: Mapping[str, Any], score: str) -> str:
    """The score mode a trial is measured in: ``score``, or for ``auto`` the detector's default
    (its ``score_mode`` parameter when it has one, else its first mode). It must be one the
    recipe's ``test.score`` writes."""
    det = make_detector(cfg)
    mode = (getattr(det, "score_mode", None) or det.score_modes[0]) if score == "auto" else score
    modes = score_modes(det, cfg["test"]["score"])
    if mode not in modes:
        raise ConfigError(f"search.score: score mode {mode!r} is not among the modes the recipe tests "
                          f"(test.score: {', '.join(modes)}); add it to test.score or choose search.score")
    return mode


# -- development data only ----------------------------------------------------------------------------
def check_development_data(cfg: Mapping[str, Any]) -> None:
    """Refuse a search on evaluation data: ``subset: eval``, a data or test folder in an
    ``eval_data`` folder, unlabelled test clips, or the evaluation sections (2021, 2022: 03-05)
    or machine types (2023-2025: those beyond the seven development types) of a DCASE set. Reads
    file names only.

    Raises:
        ConfigError: naming what is evaluation data and why the search must not see it.
    """
    why = ("a search picks parameters on the data it measures, so its score is no longer an "
           "independent estimate: search on the development set, then test the best recipe on the evaluation set once")
    if cfg["subset"] == "eval":
        raise ConfigError(f"search: subset is eval; {why}")
    test_root = cfg["test"]["data"] or cfg["data"]
    for root in dict.fromkeys([cfg["data"], test_root]):
        path = resolve_root(root, cfg["subset"])
        if _in_eval_folder(path):
            raise ConfigError(f"search: {path} is an evaluation set (an eval_data folder); {why}")
    scan, _ = scan_split({**cfg, "dataset": cfg["dataset"]}, test_root, "test", cfg["machines"])
    if not scan.clips:
        raise DatasetError(f"{test_root}: no test clips to measure the search on")
    layout = scan.dataset.partition(":")[2] if scan.dataset.startswith("manifest") else scan.dataset
    for clip in scan.clips:
        reason = None
        if clip.label is None:
            reason = "has no label (unlabelled test clips are an evaluation set's)"
        elif _in_eval_folder(clip.path):
            reason = "lies in an eval_data folder"
        elif clip.section in EVAL_SECTIONS.get(layout, ()):
            reason = f"is in section {clip.section}, an evaluation section of {layout}"
        elif layout in MACHINES and clip.machine in MACHINES[layout][DEV_MACHINE_COUNT:]:
            reason = f"is of machine type {clip.machine}, one of {layout}'s evaluation set"
        if reason:
            raise ConfigError(f"search: test clip {clip.path} {reason}; {why}")


def _in_eval_folder(path: Path) -> bool:
    return any(part.lower() == "eval_data" for part in Path(path).parts)


# -- the space ----------------------------------------------------------------------------------------
def tune_space(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``search.space`` as a Ray Tune param space keyed by parameter name (without ``params.``):
    lists become ``tune.grid_search`` (grid) or ``tune.choice`` (random), distributions
    ``tune.uniform``, ``tune.loguniform`` or ``tune.randint`` (upper end included)."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, values in spec["space"].items():
        name = key[len("params."):]
        if isinstance(values, list):
            out[name] = tune.grid_search(list(values)) if spec["method"] == "grid" else tune.choice(list(values))
            continue
        (dist, (low, high)), = values.items()
        out[name] = {"uniform": lambda: tune.uniform(low, high), "loguniform": lambda: tune.loguniform(low, high),
                     "randint": lambda: tune.randint(low, high + 1)}[dist]()
    return out


def check_space(cfg: Mapping[str, Any], spec: Mapping[str, Any]) -> int:
    """Every value of the space (each list value, each distribution's ends) is a valid parameter
    of the model with the recipe's others, and the measured score mode is tested; a grid's
    combinations are checked together (up to :data:`GRID_CHECK_LIMIT`). Returns the number of
    trials. No data is read.

    Raises:
        ConfigError: ``search.space.params.NAME: <the model's message>``.
    """
    space = spec["space"]
    for key, values in space.items():
        name = key[len("params."):]
        if isinstance(values, list):
            ends = values
        else:  # uniform and loguniform draw floats, randint integers
            (dist, ends), = values.items()
            ends = ends if dist == "randint" else [float(b) for b in ends]
        for value in ends:
            try:
                measured_mode(trial_config(cfg, {**cfg["params"], name: value}, "check"), spec["score"])
            except ConfigError as exc:
                raise ConfigError(f"search.space.{key}: value {value!r}: {exc}") from None
    if spec["method"] == "random":
        return int(spec["samples"])
    names = [k[len("params."):] for k in space]
    combos = list(itertools.product(*space.values()))
    if len(combos) <= GRID_CHECK_LIMIT:
        for combo in combos:
            params = {**cfg["params"], **dict(zip(names, combo))}
            try:
                measured_mode(trial_config(cfg, params, "check"), spec["score"])
            except ConfigError as exc:
                shown = ", ".join(f"params.{n}={v!r}" for n, v in zip(names, combo))
                raise ConfigError(f"search.space: the combination {shown}: {exc}") from None
    return len(combos)


# -- a trial (runs in a Ray worker) -------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """A Tune-sampled value as a plain Python number (numpy scalars do not go into YAML)."""
    return value.item() if hasattr(value, "item") else value


def _trial_index(trial_id: str) -> int:
    """The number of a trial from its Tune id (``<prefix>_NNNNN``, the variant generator's counter)."""
    return int(trial_id.rsplit("_", 1)[-1])


def _run_trial(config: dict[str, Any], base: dict[str, Any], out: str, metric: str, score: str,
               journal: str) -> None:
    """Ray Tune function trainable: train and test the recipe with ``config``'s parameters into
    ``OUT/trials/trial_NNNNN`` and report the metric (``value``) with the trial's number, score
    mode and run folder."""
    from ray import tune

    from stetho.pipeline.ray_engine import finish_cell

    index = _trial_index(tune.get_context().get_trial_id())
    params = {k: _plain(v) for k, v in config.items()}
    run_dir = Path(out) / TRIALS / f"trial_{index:05d}"
    mode = None
    try:
        cfg = trial_config(base, {**base["params"], **params}, run_dir)
        mode = measured_mode(cfg, score)
        det = make_detector(cfg)
        outcome = finish_cell(cfg, score_modes(det, cfg["test"]["score"]), None, Path(journal))
    except StethoError as exc:
        # reported, not raised: Tune would retry it (retries are for workers that die) and fail again
        tune.report({"value": math.nan, "trial": index, "score_mode": mode, "run": str(run_dir),
                     "error": " ".join(str(exc).split())})
        return
    tune.report({"value": metric_value(outcome.results.get(mode), metric), "trial": index,
                 "score_mode": mode, "run": str(run_dir), "error": None})


# -- the driver ---------------------------------------------------------------------------------------
def search(cfg: Mapping[str, Any], address: str | None = None, num_cpus: int | None = None) -> SearchOutcome:
    """Run the ``search:`` block of ``cfg`` through Ray Tune (see the module docstring) on the
    connected Ray instance, the cluster at ``address``, or a new local one of ``num_cpus`` CPUs.

    Raises:
        ConfigError: a bad space or metric, evaluation data, an output folder holding an earlier
            search without ``overwrite``, resources the cluster lacks.
        StethoError: every trial failed (the first trial's error).
    """
    try:
        from ray import tune
        from ray.tune.search import BasicVariantGenerator
    except ImportError:
        raise ConfigError("a recipe with search: runs through Ray Tune: pip install 'stetho[ray]' "
                          "(ray[tune])") from None

    from stetho.pipeline.ray_engine import JOURNAL, MAX_RETRIES, absolute_config, connected

    cfg = resolve(cfg)
    if cfg["search"] is None:
        raise ConfigError("the recipe has no search: block")
    if not cfg["out"]:
        raise ConfigError("no output folder given (out: in the recipe, or out=DIR)")
    if not cfg["data"]:
        raise ConfigError(missing_data_message(cfg))
    progress = cfg["progress"]
    base = absolute_config({**cfg, "search": None})
    spec = search_spec(cfg)
    out = Path(base["out"])
    check_development_data(base)
    n_trials = check_space(base, spec)
    if (out / RESULTS_CSV).exists() or (out / TRIALS).exists():
        if not cfg["overwrite"]:
            raise ConfigError(f"{out}: holds an earlier search ({RESULTS_CSV}, {TRIALS}/); "
                              "set overwrite: true (or overwrite=true) to replace it, or choose another out")
        for name in (TRIALS, TUNE_DIR, RESULTS_CSV, BEST_RECIPE, JOURNAL):
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    make_dirs(out)
    journal = out / JOURNAL
    res = base["resources"]
    with connected(address, num_cpus):
        import ray

        have = ray.cluster_resources()
        for key, name in (("cpus", "CPU"), ("gpus", "GPU")):
            if res[key] > have.get(name, 0):
                raise ConfigError(f"resources.{key} is {res[key]} but the Ray cluster has {have.get(name, 0):g} "
                                  f"{name}(s); lower it or add machines")
        log.info("search: %d trial(s) (%s) on a Ray cluster of %g CPU(s), %s of %s; tasks logged in %s",
                 n_trials, spec["method"], have.get("CPU", 0), spec["mode"], spec["metric"], journal)
        trainable = tune.with_resources(
            tune.with_parameters(_run_trial, base=base, out=str(out), metric=spec["metric"], score=spec["score"],
                                 journal=str(journal)),
            {"cpu": res["cpus"], "gpu": res["gpus"]})
        tuner = tune.Tuner(
            trainable, param_space=tune_space(spec),
            tune_config=tune.TuneConfig(num_samples=int(spec["samples"]),
                                        search_alg=BasicVariantGenerator(random_state=spec["seed"]),
                                        trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(out), verbose=1 if progress else 0,
                                      failure_config=tune.FailureConfig(max_failures=MAX_RETRIES)))
        grid = tuner.fit()
        trials = [_trial_of(result, out) for result in grid]
    trials.sort(key=lambda t: t.index)
    return _finish(cfg, base, spec, out, trials)


def _trial_of(result: Any, out: Path) -> Trial:
    """A :class:`Trial` from a Ray Tune result (a failed one: its error, NaN); its number from
    its folder's name (:func:`_trial_dirname`), which a trial that failed before reporting has too."""
    metrics = result.metrics or {}
    index = int(Path(result.path).name.rsplit("_", 1)[-1])
    error = metrics.get("error")
    if result.error is not None:
        cause = getattr(result.error, "cause", None)
        error = " ".join(str(cause if isinstance(cause, Exception) else result.error).split())
    return Trial(index=index, params={k: _plain(v) for k, v in (result.config or {}).items()},
                 score_mode=metrics.get("score_mode"), value=float(metrics.get("value", math.nan)),
                 run_dir=out / TRIALS / f"trial_{index:05d}", error=error)


def _trial_dirname(trial: Any) -> str:
    """Tune's folder of a trial, ``tune/trial_NNNNN`` (the number of its run folder)."""
    return f"trial_{_trial_index(trial.trial_id):05d}"


def _finish(cfg: Mapping[str, Any], base: Mapping[str, Any], spec: Mapping[str, Any], out: Path,
            trials: list[Trial]) -> SearchOutcome:
    """Pick the best trial, write ``search_results.csv`` and ``best_recipe.yaml``, drop the other
    run folders unless ``keep: all``."""
    outcome = SearchOutcome(out=out, metric=spec["metric"], mode=spec["mode"], trials=trials)
    scored = [t for t in trials if math.isfinite(t.value)]
    if scored:
        sign = 1.0 if spec["mode"] == "max" else -1.0
        outcome.best = max(scored, key=lambda t: (sign * t.value, -t.index))  # ties: the first trial
    names = list(dict.fromkeys(k[len("params."):] for k in spec["space"]))
    rows = [[t.index, *[_cell(t.params.get(n)) for n in names], t.score_mode, _cell(t.value),
             int(outcome.best is not None and t.index == outcome.best.index), str(t.run_dir), t.error]
            for t in trials]
    outcome.results_csv = out / RESULTS_CSV
    atomic_write_text(outcome.results_csv, csv_text(
        rows, ["trial", *[f"params.{n}" for n in names], "score_mode", spec["metric"], "best", "run", "error"]))
    if outcome.best is None:
        failed = [t for t in trials if t.error]
        if failed:
            raise StethoError(f"search: every trial failed; trial {failed[0].index}: {failed[0].error} "
                              f"(all in {outcome.results_csv})")
        raise StethoError(f"search: the metric {spec['metric']} is undefined in every trial (an official score "
                          "needs every machine type and section of the data: is the result partial?); "
                          f"choose another search.metric ({outcome.results_csv})")
    for t in trials:
        if t.error:
            log.warning("search: trial %d failed: %s", t.index, t.error)
    if spec["keep"] == "best":
        for t in trials:
            if t.index != outcome.best.index:
                shutil.rmtree(t.run_dir, ignore_errors=True)
                (t.run_dir.parent / f".{t.run_dir.name}.lock").unlink(missing_ok=True)  # its run_lock file
    outcome.best_recipe = write_best_recipe(cfg, base, outcome)
    log.info("search: best trial %d (%s = %s): %s; %s", outcome.best.index, spec["metric"],
             f"{outcome.best.value:.4f}", outcome.best.run_dir, outcome.best_recipe)
    return outcome


def _cell(value: Any) -> Any:
    """A CSV cell: floats in full precision (``repr``), so the file holds the exact values tried."""
    return repr(value) if isinstance(value, float) else value


def write_best_recipe(cfg: Mapping[str, Any], base: Mapping[str, Any], outcome: SearchOutcome) -> Path:
    """``OUT/best_recipe.yaml``: the keys of the recipe that differ from the defaults, with
    ``search:`` (and ``toy:``, the data being there) removed, the best trial's parameters filled
    in, paths absolute and ``out: OUT/best``. ``stetho run`` runs it as it is and writes the
    best trial's files."""
    best = outcome.best
    assert best is not None
    recipe = {k: v for k, v in base.items() if k in ("data", "model", "seed") or v != DEFAULTS[k]}
    recipe.pop("search", None)
    recipe.pop("toy", None)
    recipe["params"] = {**base["params"], **best.params}
    recipe["out"] = str(outcome.out / "best")
    recipe["progress"] = cfg["progress"]
    if recipe["progress"] == DEFAULTS["progress"]:
        del recipe["progress"]
    resolve(recipe, where=BEST_RECIPE)  # what stetho run will read
    head = (f"# The best of the search in {outcome.out} ({RESULTS_CSV}): trial {best.index}, {outcome.metric} = "
            f"{best.value!r} ({best.score_mode}), run folder {best.run_dir}.\n"
            "# Searched on development data only; test this recipe on the evaluation set once.\n")
    path = outcome.out / BEST_RECIPE
    atomic_write_text(path, head + dump(recipe))
    return path
