"""Run configuration: defaults, YAML recipes, ``key=value`` overrides, validation.

A recipe is a YAML mapping with the keys of :data:`DEFAULTS`; nested keys are addressed with dots
in overrides (``params.epochs=5``). Values of overrides are parsed as YAML (``5`` → int,
``[fan,pump]`` → list, ``null`` → None).

Everything but the model's hyper-parameters (``params``, checked by the model) is validated here,
before any data is read: a key that appears twice, an unknown key, a value of the wrong type or
out of range is a one-line :class:`ConfigError` naming the file (or ``config``) and the key.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from stetho.datasets import DATASETS
from stetho.datasets.mimii import SPLIT_RULES
from stetho.datasets.names import check_name, quote
from stetho.errors import ConfigError
from stetho.metrics import FORMULAS, METRIC_KEYS

DEFAULTS: dict[str, Any] = {
    "data": None,           # dataset root (<machine>/{train,test}/...) or a manifest .csv
    "dataset": "auto",      # layout: auto | dcase2020 ... dcase2025 | mimii | folder | manifest
    "subset": None,         # dev | eval, when data holds dev_data/ and eval_data/
    "mimii_split": "baseline",  # MIMII train/test rule: baseline | cande | cande-overlap
    "formula": None,        # official-score formula (default: the dataset's own year)
    "machines": None,       # machine types to use (default: all found)
    "model": "ae",          # registry name
    "params": {},           # model hyper-parameters (constructor arguments)
    "out": None,            # run folder
    "overwrite": False,     # allow replacing an existing run folder's results
    "seed": 13711,
    "device": "auto",       # auto | cpu | cuda
    "threads": "auto",      # torch threads: auto (1 on <= 2 cores, else min(cores // 2, 4)) or a number
    "channel": 0,           # channel of multi-channel files
    "resample": True,       # resample other sample rates (soxr HQ), else refuse such files
    "skip_bad": False,      # leave out bad files (listed in skipped.csv) instead of failing
    "cache": True,          # cache features on disk
    "cache_dir": None,      # default: $STETHO_CACHE_DIR or ~/.cache/stetho
    "progress": True,       # progress bars
    "test": {"score": "all", "data": None},  # score modes to write; test data root (default: data)
    "toy": None,            # if set, `stetho run` first generates toy data into `data` when missing
    "compare": None,        # if set, `stetho run` trains and tests every variant × seed, then compares
    "resources": {"cpus": 1, "gpus": 0},  # what each task of `stetho run --engine ray` asks Ray for
    "search": None,         # if set, `stetho run` searches params.* through Ray Tune (stetho.pipeline.search)
}
#: Keys of ``compare:``: ``variants`` (name -> config overrides, e.g. ``{params: {variant: separate}}``),
#: ``seeds`` (one run per seed and variant) and ``reuse`` (keep a finished run of the same config).
COMPARE_KEYS = ("variants", "seeds", "reuse")
#: Keys of ``search:`` (see :func:`_validate_search` and :mod:`stetho.pipeline.search`).
SEARCH_KEYS = ("method", "samples", "seed", "space", "metric", "mode", "score", "keep")
#: Search methods: every combination of the listed values, or ``samples`` random draws.
SEARCH_METHODS = ("grid", "random")
#: Distributions of a ``search.space`` entry (random search only); ``randint`` includes both ends.
SEARCH_DISTRIBUTIONS = ("uniform", "loguniform", "randint")
#: Which run folders a search keeps: the best trial's only, or every trial's.
SEARCH_KEEP = ("best", "all")


def metric_name(key: str) -> str:
    """The ``search.metric`` spelling of a metric key: ``"AUC (source)"`` → ``"auc_source"``."""
    return re.sub(r"[^a-z0-9]+", "_", key.lower()).strip("_")


#: ``search.metric`` values: ``official`` (the official score of the score mode), or a metric of
#: :data:`stetho.metrics.METRIC_KEYS` (its arithmetic mean over the sections) by its
#: :func:`metric_name` -> that key.
SEARCH_METRICS: dict[str, str] = {"official": "official", **{metric_name(k): k for k in METRIC_KEYS}}
#: Seeds are 32-bit unsigned integers: numpy's legacy seeding and torch.manual_seed take no more.
SEED_MAX = 2**32 - 1
#: Keys holding yes/no switches.
BOOL_KEYS = ("overwrite", "resample", "skip_bad", "cache", "progress")
#: Keys holding a path (or nothing).
PATH_KEYS = ("data", "out", "cache_dir")


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2 numbers: ``1e-3`` and ``5E4`` are floats (PyYAML's YAML 1.1 rules read
    an exponent without a dot, ``lr: 1e-3``, as the string ``"1e-3"``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                 |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                 |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                 |[-+]?\.(?:inf|Inf|INF)
                 |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """PyYAML keeps the last of two equal keys without a word; a recipe that says ``seed`` twice
    (two recipes pasted together, an edit gone wrong) is refused instead."""
    lines: dict[Any, int] = {}
    for key_node, _ in node.value:  # before merging ``<<: *anchor`` keys, which may be overridden
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            first = lines.get(key)
            lines[key] = line
        except TypeError:
            continue  # an unhashable key: the base constructor reports it
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (lines {first} and {line})", key_node.start_mark)
    loader.flatten_mapping(node)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def yaml_error(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (``line 3, column 7``)."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def yaml_load(text: str) -> Any:
    """Parse YAML text as recipes and overrides are parsed (:class:`_Loader`)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


#: Top-level keys whose value is a mapping or None (unset): ``compare: null`` turns a comparison off.
_OPTIONAL_MAPPINGS = ("toy", "compare", "search")


def _merge(base: dict, extra: Mapping, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if key not in base:
            raise ConfigError(f"{where}: unknown key '{key}'; known keys: {', '.join(base)}")
        if isinstance(base[key], dict) and base[key] and not (value is None and key in _OPTIONAL_MAPPINGS):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: {key} must be a mapping with the keys {', '.join(base[key])}, "
                                  f"got {_shown(value)}")
            out[key] = _merge(base[key], value, f"{where}.{key}")
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe (not yet merged with defaults).

    Raises:
        ConfigError: the file is missing or unreadable, not UTF-8, not valid YAML (a file cut
            short mostly is not), repeats a key, or is not a mapping of keys to values; one line
            naming the file.
    """
    path = Path(path)
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: recipe file does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a recipe file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start}); a recipe is YAML text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({yaml_error(exc)}); is the file complete?") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping of keys to values (key: value lines), "
                          f"got {_shown(data)}; is the file complete?")
    return data


def _shown(value: Any) -> str:
    """A value as a message shows it: its type and (shortened) repr."""
    if isinstance(value, (dict, list)):
        return f"a {'list' if isinstance(value, list) else 'mapping'} {quote(value)}"
    return quote(value)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` → ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' must look like key=value (e.g. params.epochs=5)")
        try:
            value = yaml_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with another override")
        node[parts[-1]] = value
    return out


def resolve(*layers: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """Defaults, then each layer in turn (recipe, overrides, CLI options); then validated.

    Args:
        layers: mappings of config keys.
        where: what the messages name (the recipe file, ``RUN/config.yaml``, ``config``).

    Raises:
        ConfigError: ``"<where>: ..."``, one line: an unknown key, a value of the wrong type or
            out of range (see :func:`validate`).
    """
    cfg = copy.deepcopy(DEFAULTS)
    for layer in layers:
        if not isinstance(layer, Mapping):
            raise ConfigError(f"{where}: must be a mapping of keys to values, got {_shown(layer)}")
        params = layer.get("params")
        if params is not None and not isinstance(params, Mapping):
            raise ConfigError(f"{where}: params must be a mapping of model hyper-parameters "
                              f"(e.g. params: {{epochs: 5}}), got {_shown(params)}")
        rest = {k: v for k, v in layer.items() if k != "params"}
        cfg = _merge(cfg, rest, where)
        cfg["params"].update(params or {})  # model params are checked against the model's signature
    validate(cfg, where)
    return cfg


def validate(cfg: dict[str, Any], where: str = "config") -> None:
    """Check types and values that can be checked without touching data (in place: a
    comma-separated ``machines`` string becomes a list).

    Raises:
        ConfigError: ``"<where>: <key> ..."`` naming the key, what it must be and the value.
    """
    def fail(message: str) -> None:
        raise ConfigError(f"{where}: {message}")

    if cfg["dataset"] not in DATASETS:
        fail(f"dataset {_shown(cfg['dataset'])} is not supported; choose from {', '.join(DATASETS)}")
    if cfg["subset"] not in (None, "dev", "eval"):
        fail(f"subset must be dev or eval, got {_shown(cfg['subset'])}")
    if cfg["mimii_split"] not in SPLIT_RULES:
        fail(f"mimii_split must be one of {', '.join(SPLIT_RULES)}, got {_shown(cfg['mimii_split'])}")
    if cfg["formula"] is not None and cfg["formula"] not in FORMULAS:
        fail(f"formula {_shown(cfg['formula'])} is unknown; choose from {', '.join(FORMULAS)}")
    for key in PATH_KEYS:
        value = cfg[key]
        if value is not None and (not isinstance(value, (str, Path)) or not str(value).strip()
                                  or "\x00" in str(value)):
            fail(f"{key} must be a path, got {_shown(value)}")
    if cfg["machines"] is not None:
        if isinstance(cfg["machines"], str):
            cfg["machines"] = [m.strip() for m in cfg["machines"].split(",") if m.strip()]
        if not isinstance(cfg["machines"], list):
            fail(f"machines must be a list of machine type names (or comma-separated), got {_shown(cfg['machines'])}")
        for m in cfg["machines"]:
            check_name(m, "machine type", f"{where}: machines", ConfigError)
    if not isinstance(cfg["model"], str) or not cfg["model"]:
        fail(f"model must be a model name, got {_shown(cfg['model'])}")
    for key in BOOL_KEYS:
        if not isinstance(cfg[key], bool):
            fail(f"{key} must be true or false, got {_shown(cfg[key])}")
    channel = cfg["channel"]
    if isinstance(channel, bool) or not isinstance(channel, int) or channel < 0:
        fail(f"channel must be a non-negative integer (0 = the first channel), got {_shown(channel)}")
    check_seed(cfg["seed"], f"{where}: seed")
    if not isinstance(cfg["device"], str) or (cfg["device"] not in ("auto", "cpu", "cuda")
                                              and not re.fullmatch(r"cuda:\d+", cfg["device"])):
        fail(f"device must be auto, cpu or cuda[:N], got {_shown(cfg['device'])}")
    threads = cfg["threads"]
    if threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        fail(f"threads must be auto or a positive integer, got {_shown(threads)}")
    if not isinstance(cfg["params"], dict):
        fail("params must be a mapping of model hyper-parameters")
    score, test_data = cfg["test"]["score"], cfg["test"]["data"]
    if not (isinstance(score, str) and score) and not (
            isinstance(score, list) and score and all(isinstance(x, str) and x for x in score)):
        fail(f"test.score must be all, a score mode or a list of them, got {_shown(score)}")
    if test_data is not None and (not isinstance(test_data, (str, Path)) or not str(test_data).strip()):
        fail(f"test.data must be a path, got {_shown(test_data)}")
    if cfg["toy"] is not None and not isinstance(cfg["toy"], Mapping):
        fail(f"toy must be a mapping of toy-data settings (e.g. toy: {{machines: [fan]}}), got {_shown(cfg['toy'])}")
    for key, low in (("cpus", 1), ("gpus", 0)):
        value = cfg["resources"][key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
            fail(f"resources.{key} must be a number >= {low} (Ray may split a CPU or GPU: 0.5), got {_shown(value)}")
    if cfg["compare"] is not None:
        try:
            _validate_compare(cfg["compare"])
        except ConfigError as exc:
            fail(str(exc))
    if cfg["search"] is not None:
        if cfg["compare"] is not None:
            fail("search and compare cannot be combined: search the parameters first, then compare "
                 "best_recipe.yaml's variants over seeds")
        try:
            _validate_search(cfg["search"])
        except ConfigError as exc:
            fail(str(exc))


def check_seed(seed: Any, what: str = "seed") -> int:
    """``seed`` when it is an integer in [0, 2**32 - 1] (what numpy and torch accept).

    Raises:
        ConfigError: ``"<what> must be an integer from 0 to 4294967295, got ..."``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"{what} must be an integer from 0 to {SEED_MAX}, got {_shown(seed)}")
    return seed


def _validate_compare(spec: Any) -> None:
    """Shape of ``compare:``; each variant's overrides are checked when the comparison starts."""
    if not isinstance(spec, Mapping):
        raise ConfigError("compare must be a mapping with variants (name: overrides) and seeds (a list)")
    unknown = sorted(set(spec) - set(COMPARE_KEYS))
    if unknown:
        raise ConfigError(f"compare: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(COMPARE_KEYS)}")
    seeds = spec.get("seeds")
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in seeds) or len(set(seeds)) != len(seeds):
            raise ConfigError(f"compare.seeds must be a non-empty list of distinct integers, got {_shown(seeds)}")
        for x in seeds:
            check_seed(x, "compare.seeds")
    variants = spec.get("variants")
    if variants is not None:
        if not isinstance(variants, Mapping) or not variants:
            raise ConfigError("compare.variants must map variant names to config overrides")
        for name, over in variants.items():
            check_name(name, "variant name (it names a folder)", "compare.variants", ConfigError)
            if over is not None and not isinstance(over, Mapping):
                raise ConfigError(f"compare.variants.{name} must be a mapping of config overrides")
            fixed = sorted({"out", "seed", "compare", "toy"} & set(over or {}))
            if fixed:
                raise ConfigError(f"compare.variants.{name} may not set {', '.join(fixed)} "
                                  "(the comparison sets them for every run)")


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _validate_search(spec: Any) -> None:
    """Shape of ``search:``; the values of ``space`` are checked by the model when the search starts."""
    if not isinstance(spec, Mapping):
        raise ConfigError("search must be a mapping with method, space (params.NAME: values) and metric")
    unknown = sorted(set(spec) - set(SEARCH_KEYS))
    if unknown:
        raise ConfigError(f"search: unknown key(s) {', '.join(map(str, unknown))}; "
                          f"known keys: {', '.join(SEARCH_KEYS)}")
    method = spec.get("method", "grid")
    if method not in SEARCH_METHODS:
        raise ConfigError(f"search.method must be grid or random, got {_shown(method)}")
    samples = spec.get("samples")
    if method == "grid" and samples is not None:
        raise ConfigError("search.samples is for method: random (a grid runs every combination once)")
    if method == "random" and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise ConfigError(f"search.samples (the number of random trials) must be a positive integer, "
                          f"got {_shown(samples)}")
    if spec.get("seed") is not None:
        check_seed(spec["seed"], "search.seed")
    if spec.get("metric", "official") not in SEARCH_METRICS:
        raise ConfigError(f"search.metric {_shown(spec.get('metric'))} is unknown; "
                          f"choose from {', '.join(SEARCH_METRICS)}")
    if spec.get("mode", "max") not in ("max", "min"):
        raise ConfigError(f"search.mode must be max or min, got {_shown(spec.get('mode'))}")
    score = spec.get("score", "auto")
    if not isinstance(score, str) or not score:
        raise ConfigError(f"search.score must be auto or a score mode of the model, got {_shown(score)}")
    if spec.get("keep", "best") not in SEARCH_KEEP:
        raise ConfigError(f"search.keep must be best or all, got {_shown(spec.get('keep'))}")
    space = spec.get("space")
    if not isinstance(space, Mapping) or not space:
        raise ConfigError("search.space must map params.NAME to a list of values or a distribution "
                          "({uniform|loguniform|randint: [low, high]}), e.g. space: {params.k: [1, 3]}")
    for key, values in space.items():
        where = f"search.space.{key}"
        if not isinstance(key, str) or not key.startswith("params.") or not key[len("params."):].isidentifier():
            raise ConfigError(f"{where}: a search runs over model hyper-parameters only: write params.NAME")
        if isinstance(values, list):
            if not values:
                raise ConfigError(f"{where}: the list of values is empty")
            if any(isinstance(v, (list, dict)) for v in values):
                raise ConfigError(f"{where}: values must be numbers, strings, true/false or null, got {_shown(values)}")
            if len({repr(v) for v in values}) != len(values):
                raise ConfigError(f"{where}: a value is listed twice in {_shown(values)}")
            continue
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where} must be a list of values or a distribution "
                              f"({{uniform|loguniform|randint: [low, high]}}), got {_shown(values)}")
        if method == "grid":
            raise ConfigError(f"{where}: a distribution needs method: random (a grid lists its values)")
        if len(values) != 1 or next(iter(values)) not in SEARCH_DISTRIBUTIONS:
            raise ConfigError(f"{where} must be one of {', '.join(SEARCH_DISTRIBUTIONS)}: [low, high], "
                              f"got {_shown(values)}")
        (dist, bounds), = values.items()
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(_number(b) for b in bounds)
                and bounds[0] < bounds[1]):
            raise ConfigError(f"{where}.{dist} must be [low, high] with numbers low < high, got {_shown(bounds)}")
        if dist == "loguniform" and bounds[0] <= 0:
            raise ConfigError(f"{where}.loguniform needs low > 0, got {_shown(bounds)}")
        if dist == "randint" and not all(isinstance(b, int) for b in bounds):
            raise ConfigError(f"{where}.randint needs integer bounds (both included), got {_shown(bounds)}")


def dump(cfg: Mapping[str, Any]) -> str:
    """YAML text of a resolved config (paths as strings)."""
    def plain(v):
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return yaml.safe_dump(plain(dict(cfg)), sort_keys=False)
