"""Run configuration: defaults, YAML recipes, ``key=value`` overrides, validation.

A recipe is a YAML mapping with the keys of :data:`DEFAULTS`; nested keys are addressed with dots
in overrides (``params.epochs=5``). Values of overrides are parsed as YAML (``5`` → int,
``[fan,pump]`` → list, ``null`` → None).
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
from stetho.errors import ConfigError
from stetho.metrics import FORMULAS

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
}
#: Keys of ``compare:``: ``variants`` (name -> config overrides, e.g. ``{params: {variant: separate}}``),
#: ``seeds`` (one run per seed and variant) and ``reuse`` (keep a finished run of the same config).
COMPARE_KEYS = ("variants", "seeds", "reuse")


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


def yaml_load(text: str) -> Any:
    """Parse YAML text as recipes and overrides are parsed (:class:`_Loader`)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _merge(base: dict, extra: Mapping, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if key not in base:
            raise ConfigError(f"{where}: unknown key '{key}'; known keys: {', '.join(base)}")
        if isinstance(base[key], dict) and base[key] and isinstance(value, Mapping):
            out[key] = _merge(base[key], value, f"{where}.{key}")
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe (not yet merged with defaults)."""
    path = Path(path)
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: recipe file does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping of keys to values")
    return data


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
    """Defaults, then each layer in turn (recipe, overrides, CLI options); then validated."""
    cfg = copy.deepcopy(DEFAULTS)
    for layer in layers:
        params = dict(layer.get("params") or {}) if isinstance(layer, Mapping) else {}
        rest = {k: v for k, v in layer.items() if k != "params"}
        cfg = _merge(cfg, rest, where)
        cfg["params"].update(params)  # model params are checked against the model's signature
    validate(cfg)
    return cfg


def validate(cfg: dict[str, Any]) -> None:
    """Check types and values that can be checked without touching data."""
    if cfg["dataset"] not in DATASETS:
        raise ConfigError(f"dataset '{cfg['dataset']}' is not supported; choose from {', '.join(DATASETS)}")
    if cfg["subset"] not in (None, "dev", "eval"):
        raise ConfigError(f"subset must be dev or eval, got {cfg['subset']!r}")
    if cfg["mimii_split"] not in SPLIT_RULES:
        raise ConfigError(f"mimii_split must be one of {', '.join(SPLIT_RULES)}, got {cfg['mimii_split']!r}")
    if cfg["formula"] is not None:
        if cfg["formula"] not in FORMULAS:
            raise ConfigError(f"formula '{cfg['formula']}' is unknown; choose from {', '.join(FORMULAS)}")
    if cfg["machines"] is not None:
        if isinstance(cfg["machines"], str):
            cfg["machines"] = [m for m in cfg["machines"].split(",") if m]
        if not isinstance(cfg["machines"], list) or not all(isinstance(m, str) for m in cfg["machines"]):
            raise ConfigError("machines must be a list of machine type names (or comma-separated)")
    if not isinstance(cfg["channel"], int) or cfg["channel"] < 0:
        raise ConfigError(f"channel must be a non-negative integer, got {cfg['channel']!r}")
    if not isinstance(cfg["seed"], int):
        raise ConfigError(f"seed must be an integer, got {cfg['seed']!r}")
    if cfg["device"] not in ("auto", "cpu", "cuda") and not str(cfg["device"]).startswith("cuda:"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {cfg['device']!r}")
    threads = cfg["threads"]
    if threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be auto or a positive integer, got {threads!r}")
    if not isinstance(cfg["params"], dict):
        raise ConfigError("params must be a mapping of model hyper-parameters")
    if cfg["compare"] is not None:
        _validate_compare(cfg["compare"])


def _validate_compare(spec: Any) -> None:
    """Shape of ``compare:``; each variant's overrides are checked when the comparison starts."""
    if not isinstance(spec, Mapping):
        raise ConfigError("compare must be a mapping with variants (name: overrides) and seeds (a list)")
    unknown = sorted(set(spec) - set(COMPARE_KEYS))
    if unknown:
        raise ConfigError(f"compare: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(COMPARE_KEYS)}")
    seeds = spec.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds
                              or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)
                              or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"compare.seeds must be a non-empty list of distinct integers, got {seeds!r}")
    variants = spec.get("variants")
    if variants is not None:
        if not isinstance(variants, Mapping) or not variants:
            raise ConfigError("compare.variants must map variant names to config overrides")
        for name, over in variants.items():
            if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
                raise ConfigError(f"compare.variants: {name!r} is not a usable name (it names a folder)")
            if over is not None and not isinstance(over, Mapping):
                raise ConfigError(f"compare.variants.{name} must be a mapping of config overrides")
            fixed = sorted({"out", "seed", "compare", "toy"} & set(over or {}))
            if fixed:
                raise ConfigError(f"compare.variants.{name} may not set {', '.join(fixed)} "
                                  "(the comparison sets them for every run)")


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
