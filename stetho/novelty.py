"""Novelty detection on images (or any vectors): protocols p1 / p2, AUC and F1, multi-seed tables.

A protocol turns an :class:`~stetho.datasets.images.ImageSet` and a set of normal classes into a
seeded split (METHODS.md §7):

- ``p1``: the normal classes' images of both official splits are merged and shuffled with the
  seed, then split 60/20/20 into train / validation / test normals; anomalies (other classes,
  drawn with the same seed) are added to the test set so that they make a fraction ``p`` of it.
- ``p2``: train on the official train split of the normal classes (a seeded ``val_fraction`` of it
  held out as validation normals), test on the whole official test split.

Scores are anomaly scores (higher = more anomalous); AUC has the anomaly as positive class; F1 is
computed at a threshold chosen on the **normal validation images only** (their
``threshold_quantile`` quantile), never on test data. :func:`run_novelty` runs every model × normal
set × seed, optionally also under an L∞ latent attack on the test normals, and writes the tables.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score, roc_auc_score

from stetho.config import yaml_load
from stetho.datasets.images import ImageSet, load_image_set
from stetho.errors import ConfigError
from stetho.fileio import atomic_write_bytes, atomic_write_text, write_dict_csv
from stetho.models import MODELS, Detector, get_model

log = logging.getLogger(__name__)

PROTOCOLS = ("p1", "p2")
#: Registry model of a ``models:`` entry without a ``model:`` key.
DEFAULT_MODEL = "arae"
#: Methods a detector needs to run here (on image arrays), and to be attacked (``attack:``).
ARRAY_METHODS = ("fit_arrays", "score_arrays")
ATTACK_METHODS = ("attack", "scale_arrays")
NOVELTY_DEFAULTS: dict[str, Any] = {
    "dataset": "digits",        # digits | mnist | fashion_mnist | coil100
    "root": None,               # folder of the IDX files / PNGs (not for digits)
    "protocol": "p2",           # p1 | p2
    "normal_classes": "each",   # "each" (one-class, every class in turn) or a list of class lists
    "anomaly_fraction": 0.5,    # p1: fraction of anomalies in the test set
    "val_fraction": 0.2,        # p2: share of the normal training images held out for the threshold
    "threshold_quantile": 0.95,  # quantile of validation-normal scores used as the F1 threshold
    "seeds": [0],
    "models": {"arae": {"variant": "linf"}, "plain_ae": {"variant": "plain"}},  # name -> [model: +] params
    "attack": None,             # {eps, steps}: also score with test normals attacked by L∞ latent PGD
    "coil_size": 32,            # COIL-100 images resized to this size (grayscale)
    "device": "cpu",
    "out": "runs/novelty",
}


@dataclass(frozen=True)
class NoveltySplit:
    """Indices into an :class:`ImageSet` for one normal set and seed.

    Attributes:
        train, val: normal images to train on / to choose the threshold on.
        test: test images; ``test_labels`` is 1 for anomalies, 0 for normals.
    """

    normal: tuple[int, ...]
    seed: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray


def make_split(data: ImageSet, normal: Sequence[int], protocol: str = "p2", seed: int = 0,
               anomaly_fraction: float = 0.5, val_fraction: float = 0.2) -> NoveltySplit:
    """The seeded ``protocol`` split of ``data`` with ``normal`` classes as normal (see module doc)."""
    normal = tuple(sorted(int(c) for c in normal))
    missing = set(normal) - set(data.classes)
    if missing:
        raise ConfigError(f"{data.name}: no class {sorted(missing)}; classes are {data.classes}")
    rng = np.random.default_rng(seed)
    is_normal = np.isin(data.y, normal)
    if protocol == "p1":
        if not 0.0 <= anomaly_fraction < 1.0:
            raise ConfigError(f"anomaly_fraction must be in [0, 1), got {anomaly_fraction}")
        idx = rng.permutation(np.flatnonzero(is_normal))
        n_train, n_val = int(round(0.6 * len(idx))), int(round(0.2 * len(idx)))
        train, val, test_n = idx[:n_train], idx[n_train:n_train + n_val], idx[n_train + n_val:]
        n_anom = int(round(anomaly_fraction / (1 - anomaly_fraction) * len(test_n)))
        pool = np.flatnonzero(~is_normal)
        if n_anom > len(pool):
            raise ConfigError(f"{data.name}: {n_anom} anomalies needed for p={anomaly_fraction}, only {len(pool)} exist")
        test_a = rng.choice(pool, size=n_anom, replace=False)
        test = np.concatenate([test_n, np.sort(test_a)])
    elif protocol == "p2":
        if not (data.split == "test").any():
            raise ConfigError(f"{data.name} has no official test split: use protocol p1")
        idx = rng.permutation(np.flatnonzero(is_normal & (data.split == "train")))
        n_val = int(round(val_fraction * len(idx)))
        val, train = np.sort(idx[:n_val]), np.sort(idx[n_val:])
        test = np.flatnonzero(data.split == "test")
    else:
        raise ConfigError(f"unknown protocol '{protocol}'; choose from {', '.join(PROTOCOLS)}")
    if not len(train) or not len(val):
        raise ConfigError(f"{data.name}: too few images of classes {normal} for a train and validation set")
    labels = (~np.isin(data.y[test], normal)).astype(np.int64)
    return NoveltySplit(normal, seed, np.sort(train), np.sort(val), test, labels)


def novelty_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC-AUC (anomaly = positive) and F1 of ``scores > threshold``."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    auc = float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else float("nan")
    f1 = float(f1_score(labels, (scores > threshold).astype(np.int64), zero_division=0.0))
    return {"auc": auc, "f1": f1}


def array_models() -> list[str]:
    """Registered models that score image arrays (they have :data:`ARRAY_METHODS`)."""
    return [name for name, cls in MODELS.items() if all(hasattr(cls, m) for m in ARRAY_METHODS)]


def _model_class(name: str, params: Any, attack: bool, where: str) -> type[Detector]:
    """The registry class of one ``models:`` entry, checked to work here (and be attackable)."""
    if not isinstance(params, Mapping):
        raise ConfigError(f"{where}: a model entry is a mapping of parameters, not {params!r}")
    model = params.get("model", DEFAULT_MODEL)
    cls = get_model(model)
    if model not in array_models():
        raise ConfigError(f"{where}: model '{model}' does not score image arrays; "
                          f"models that do: {', '.join(array_models())}")
    if attack and not all(hasattr(cls, m) for m in ATTACK_METHODS):
        raise ConfigError(f"{where}: model '{model}' cannot be attacked (attack: needs {', '.join(ATTACK_METHODS)})")
    unknown = sorted(set(params) - {"model"} - set(cls.param_defaults()))
    if unknown:
        raise ConfigError(f"{where}: unknown parameter(s) {', '.join(unknown)} for model '{model}'")
    return cls


def attacked_normal_scores(det: Detector, x: np.ndarray, eps: float, steps: int, seed: int = 0) -> np.ndarray:
    """Scores of ``x`` after a white-box L∞ latent PGD attack (radius ``eps``, ``steps`` steps of
    ``2.5·eps/steps``) against ``det``'s own encoder."""
    if not len(x):
        return np.zeros(0)
    gen = torch.Generator().manual_seed(seed)
    adv = det.attack(det.scale_arrays(x), "linf", eps=eps, steps=steps, step_size=2.5 * eps / steps, generator=gen)
    return det.score_arrays(adv, scaled=True)


def _normal_sets(spec: Any, data: ImageSet) -> list[tuple[int, ...]]:
    if spec == "each":
        return [(c,) for c in data.classes]
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        return [tuple(int(c) for c in (s if isinstance(s, Sequence) else [s])) for s in spec]
    raise ConfigError(f"normal_classes must be 'each' or a list of class lists, not {spec!r}")


def resolve_novelty(cfg: Mapping[str, Any] | None = None, where: str = "novelty config") -> dict[str, Any]:
    """``NOVELTY_DEFAULTS`` updated with ``cfg`` (unknown keys are errors)."""
    out = copy.deepcopy(NOVELTY_DEFAULTS)
    for key, value in (cfg or {}).items():
        if key not in out:
            raise ConfigError(f"{where}: unknown key '{key}'; known keys: {', '.join(out)}")
        out[key] = copy.deepcopy(value)
    if out["protocol"] not in PROTOCOLS:
        raise ConfigError(f"{where}: protocol must be one of {', '.join(PROTOCOLS)}")
    if not out["models"]:
        raise ConfigError(f"{where}: no models")
    for name, params in out["models"].items():
        if params is not None:  # `models.<name>=null` leaves a recipe's model out
            _model_class(name, params, bool(out["attack"]), f"{where}: models.{name}")
    return out


def apply_overrides(cfg: Mapping[str, Any], overrides: Mapping[str, Any], where: str = "override") -> dict[str, Any]:
    """``cfg`` with nested ``overrides`` merged in (``{"models": {"arae": {"epochs": 5}}}`` changes one
    model parameter); top-level keys must be known."""
    def merge(base: dict, extra: Mapping) -> dict:
        out = copy.deepcopy(base)
        for k, v in extra.items():
            if isinstance(v, Mapping) and isinstance(out.get(k), dict):
                out[k] = merge(out[k], v)
            else:
                out[k] = copy.deepcopy(v)
        return out

    return resolve_novelty(merge(dict(cfg), overrides), where=where)


def load_novelty_recipe(path: str | Path) -> dict[str, Any]:
    """A novelty recipe (YAML with the keys of :data:`NOVELTY_DEFAULTS`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file does not exist")
    cfg = yaml_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping")
    return resolve_novelty(cfg, where=str(path))


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per model and metric: mean over normal sets for each seed, then mean ± std over seeds."""
    metrics = [m for m in ("auc", "f1", "auc_attacked", "f1_attacked") if any(m in r for r in rows)]
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        row: dict[str, Any] = {"model": model}
        for m in metrics:
            per_seed = []
            for seed in sorted({r["seed"] for r in rows}):
                vals = [r[m] for r in rows if r["model"] == model and r["seed"] == seed and m in r]
                if vals:
                    per_seed.append(float(np.mean(vals)))
            row[f"{m}_mean"] = float(np.mean(per_seed))
            row[f"{m}_std"] = float(np.std(per_seed))
        row["seeds"] = len({r["seed"] for r in rows if r["model"] == model})
        row["normal_sets"] = len({r["normal"] for r in rows if r["model"] == model})
        out.append(row)
    return out


def run_novelty(cfg: Mapping[str, Any], data: ImageSet | None = None, write: bool = True) -> dict[str, Any]:
    """Every model × normal set × seed of a resolved novelty config; returns ``{"rows", "summary"}``
    and, with ``write``, writes ``config.json``, ``results.csv`` (one row per model, normal set and
    seed), ``summary.csv``, ``splits.json`` (the sizes of every split) and ``splits.npz`` (the image indices of
    every split, ``<normal>_seed<seed>_{train,val,test}``) into ``cfg["out"]``."""
    cfg = resolve_novelty(cfg)
    if data is None:
        opts = {"size": cfg["coil_size"]} if cfg["dataset"] == "coil100" else {}
        data = load_image_set(cfg["dataset"], cfg["root"], **opts)
    rows: list[dict[str, Any]] = []
    splits: list[dict[str, Any]] = []
    indices: dict[str, np.ndarray] = {}
    attack = cfg["attack"]
    for normal in _normal_sets(cfg["normal_classes"], data):
        for seed in cfg["seeds"]:
            sp = make_split(data, normal, cfg["protocol"], int(seed), cfg["anomaly_fraction"], cfg["val_fraction"])
            name = "+".join(str(c) for c in normal)
            splits.append({"normal": name, "seed": int(seed), "train": len(sp.train), "val": len(sp.val),
                           "test": len(sp.test), "test_anomalies": int(sp.test_labels.sum())})
            for part in ("train", "val", "test"):
                indices[f"{name}_seed{seed}_{part}"] = getattr(sp, part)
            for model, params in cfg["models"].items():
                if params is None:  # `models.<name>=null` leaves a recipe's model out
                    continue
                cls = _model_class(model, params, bool(attack), f"models.{model}")
                params = {k: v for k, v in params.items() if k != "model"}
                accepted = cls.param_defaults()
                # threshold=official: the model trains on every image of the protocol's train split
                # (the F1 threshold comes from the validation normals below, not from the model).
                given = {"image_shape": list(data.image_shape), "device": cfg["device"], "scale": "none",
                         "threshold": "official"}
                params.update({k: v for k, v in given.items() if k in accepted and k not in params})
                params["seed"] = int(seed)
                t0 = time.perf_counter()
                det = cls(**params)
                det.check_params()
                det.fit_arrays(data.x[sp.train])
                thr = float(np.quantile(det.score_arrays(data.x[sp.val]), cfg["threshold_quantile"]))
                scores = det.score_arrays(data.x[sp.test])
                row: dict[str, Any] = {"model": model, "variant": getattr(det, "variant", ""), "normal": name,
                                       "seed": int(seed),
                                       **novelty_metrics(sp.test_labels, scores, thr), "threshold": thr}
                if attack:
                    normals = sp.test_labels == 0
                    att = scores.copy()
                    att[normals] = attacked_normal_scores(det, data.x[sp.test[normals]], float(attack["eps"]),
                                                          int(attack.get("steps", 40)), seed=int(seed))
                    m = novelty_metrics(sp.test_labels, att, thr)
                    row.update({"auc_attacked": m["auc"], "f1_attacked": m["f1"]})
                row["seconds"] = round(time.perf_counter() - t0, 2)
                log.info("%s normal=%s seed=%s: AUC %.4f%s", model, name, seed, row["auc"],
                         f", attacked {row['auc_attacked']:.4f}" if attack else "")
                rows.append(row)
    summary = summarize(rows)
    if write:
        out = Path(cfg["out"])
        atomic_write_text(out / "config.json", json.dumps(cfg, indent=2, default=str) + "\n")
        atomic_write_text(out / "splits.json", json.dumps(splits, indent=2) + "\n")
        buf = io.BytesIO()
        np.savez_compressed(buf, **indices)
        atomic_write_bytes(out / "splits.npz", buf.getvalue())
        write_dict_csv(out / "results.csv", rows)
        write_dict_csv(out / "summary.csv", summary)
    return {"rows": rows, "summary": summary, "splits": splits}


def format_table(rows: Sequence[Mapping[str, Any]], metric: str = "auc") -> str:
    """Per normal set (rows) and model (columns): ``metric`` averaged over seeds, and the mean row."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    sets = list(dict.fromkeys(r["normal"] for r in rows))
    cell = {(n, m): float(np.mean([r[metric] for r in rows if r["normal"] == n and r["model"] == m]))
            for n in sets for m in models}
    width = max(12, *(len(m) + 2 for m in models))
    lines = ["normal".ljust(8) + "".join(m.rjust(width) for m in models)]
    lines += [n.ljust(8) + "".join(f"{cell[n, m]:.4f}".rjust(width) for m in models) for n in sets]
    lines.append("mean".ljust(8) + "".join(f"{np.mean([cell[n, m] for n in sets]):.4f}".rjust(width) for m in models))
    return "\n".join(lines)


def format_summary(summary: Sequence[Mapping[str, Any]]) -> str:
    """The summary as text lines, one per model."""
    lines = []
    for r in summary:
        parts = [f"{k.removesuffix('_mean')} {r[k]:.4f} ± {r[k.replace('_mean', '_std')]:.4f}"
                 for k in r if k.endswith("_mean")]
        lines.append(f"{r['model']}: " + ", ".join(parts) + f" ({r['normal_sets']} normal sets, {r['seeds']} seed(s))")
    return "\n".join(lines)
