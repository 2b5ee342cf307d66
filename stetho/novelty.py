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
import csv
import io
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score, roc_auc_score

from stetho.config import yaml_load
from stetho.datasets.images import ImageSet, canonical_image_set, load_image_set
from stetho.errors import ConfigError
from stetho.fileio import atomic_write_bytes, atomic_write_text, write_dict_csv
from stetho.models import MODELS, Detector, get_model
from stetho.models.base import FitContext
from stetho.models.training import TrainingStopped

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
    "train_subset": None,       # train on a seeded random subset of this many normal images per class
    "curve": False,             # score the test split after every epoch: a test-AUC learning curve
    "reference": True,          # add the distance-to-the-mean-training-image score as a reference row
    "max_minutes": None,        # stop (resumably) once this many minutes have passed
    "resume": True,             # keep the finished cells (and checkpoints) of an earlier run in `out`
    "device": "cpu",
    "out": "runs/novelty",
}
#: Keys that may differ between a stopped run and the run that resumes it.
RUN_CONTROL_KEYS = ("max_minutes", "resume", "device", "out")
#: The reference row's model name (score = squared distance to the mean training image).
MEAN_IMAGE = "mean_image"
#: A model whose clean AUC is within this of the mean-image score's gets a collapse warning.
COLLAPSE_MARGIN = 0.01
#: ... or whose reconstructions vary less than this fraction of its inputs' variance.
COLLAPSE_DEPENDENCE = 1e-3
#: Seconds between the per-epoch log lines of a cell's training (every epoch when epochs are longer).
EPOCH_LOG_SECONDS = 5.0


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
               anomaly_fraction: float = 0.5, val_fraction: float = 0.2,
               train_subset: int | None = None) -> NoveltySplit:
    """The seeded ``protocol`` split of ``data`` with ``normal`` classes as normal (see module doc);
    ``train_subset``: keep a seeded random ``train_subset`` of the training images (validation and
    test unchanged)."""
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
    if train_subset is not None:
        if int(train_subset) < 1:
            raise ConfigError(f"train_subset must be a positive number of images, got {train_subset}")
        if int(train_subset) < len(train):
            train = np.random.default_rng([seed, 1]).choice(train, size=int(train_subset), replace=False)
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


def attack_normals(det: Detector, x: np.ndarray, eps: float, steps: int,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, adversarial inputs)`` of ``x`` after a white-box L∞ latent PGD attack (radius
    ``eps``, ``steps`` steps of ``2.5·eps/steps``) against ``det``'s own encoder; the inputs are
    in the network's units (``score_arrays(..., scaled=True)``)."""
    if not len(x):
        return np.zeros(0), np.zeros((0, x.shape[1] if x.ndim == 2 else 0), dtype=np.float32)
    gen = torch.Generator().manual_seed(seed)
    adv = det.attack(det.scale_arrays(x), "linf", eps=eps, steps=steps, step_size=2.5 * eps / steps, generator=gen)
    return det.score_arrays(adv, scaled=True), adv.numpy()


def mean_image_scores(train: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``Σ (x − m)²`` per row of ``x``, ``m`` the mean training image: the score of a model that
    reconstructs every input as the same image (a collapsed autoencoder)."""
    m = np.asarray(train, dtype=np.float64).mean(axis=0)
    return ((np.asarray(x, dtype=np.float64) - m) ** 2).sum(axis=1)


def collapse_diagnostics(det: Detector, x: np.ndarray, normals: np.ndarray,
                         adversarial: np.ndarray | None = None) -> dict[str, float]:
    """How much a fitted autoencoder's output depends on its input (``det`` with ``encode_arrays``
    and ``reconstruct_arrays``; ``{}`` for other models).

    - ``recon_dependence``: total variance of the reconstructions of ``x`` across images over the
      total variance of ``x`` (≈ 1: reconstructions follow the inputs; ≈ 0: one image for all).
    - ``latent_spread``: mean ‖E(x) − mean E(x)‖₂ over the normal rows (``normals``) of ``x``.
    - ``latent_shift``: mean ‖E(x') − E(x)‖₂ the attack achieved over the normal rows, given their
      ``adversarial`` versions (network units); an attack that cannot move the code is a sign of
      an encoder that ignores its input, not of robustness.
    """
    if not all(hasattr(det, m) for m in ("encode_arrays", "reconstruct_arrays")) or not len(x):
        return {}
    xs = det.scale_arrays(x).numpy().astype(np.float64)
    rec = det.reconstruct_arrays(xs, scaled=True).astype(np.float64)
    out = {"recon_dependence": float(rec.var(axis=0).sum() / max(xs.var(axis=0).sum(), 1e-12))}
    z = det.encode_arrays(xs[normals], scaled=True).astype(np.float64)
    if len(z):
        out["latent_spread"] = float(np.linalg.norm(z - z.mean(axis=0), axis=1).mean())
        if adversarial is not None and len(adversarial):
            z_adv = det.encode_arrays(adversarial, scaled=True).astype(np.float64)
            out["latent_shift"] = float(np.linalg.norm(z_adv - z, axis=1).mean())
    return out


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
    metrics = [m for m in ("auc", "f1", "auc_attacked", "f1_attacked", "recon_dependence", "latent_shift")
               if any(m in r for r in rows)]
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        row: dict[str, Any] = {"model": model}
        for m in metrics:
            per_seed = []
            for seed in sorted({r["seed"] for r in rows}):
                vals = [r[m] for r in rows if r["model"] == model and r["seed"] == seed and m in r]
                if vals:
                    per_seed.append(float(np.mean(vals)))
            if per_seed:
                row[f"{m}_mean"] = float(np.mean(per_seed))
                row[f"{m}_std"] = float(np.std(per_seed))
        row["seeds"] = len({r["seed"] for r in rows if r["model"] == model})
        row["normal_sets"] = len({r["normal"] for r in rows if r["model"] == model})
        out.append(row)
    return out


def collapse_warning(what: str, row: Mapping[str, Any], reference: float | None) -> str | None:
    """The warning for a result ``row`` of ``what`` (``"arae normal=1 seed=0"``) whose AUC is within
    :data:`COLLAPSE_MARGIN` of the mean-image ``reference`` AUC (no better than that reference) or
    whose ``recon_dependence`` is below :data:`COLLAPSE_DEPENDENCE` (collapsed: it reconstructs
    every input alike), with its collapse numbers; ``None`` when neither holds."""
    near = reference is not None and abs(row["auc"] - reference) <= COLLAPSE_MARGIN
    flat = row.get("recon_dependence", 1.0) < COLLAPSE_DEPENDENCE
    if not (near or flat):
        return None
    why = []
    if near:
        why.append(f"AUC {row['auc']:.4f} is within {COLLAPSE_MARGIN} of the distance-to-the-mean-image "
                   f"score {reference:.4f}")
    if flat:
        why.append(f"its reconstructions vary less than {COLLAPSE_DEPENDENCE:g} of its inputs' variance")
    verdict = ("the model reconstructs every input alike (collapsed)" if flat else
               "no better than that reference here" + (" (its reconstructions do follow the input)"
                                                       if "recon_dependence" in row else ""))
    text = f"{what}: {' and '.join(why)}: {verdict}"
    if "recon_dependence" in row:
        text += f"; reconstruction dependence on the input {row['recon_dependence']:.3g}"
    if "latent_shift" in row:
        text += (f", latent shift by the attack {row['latent_shift']:.3g} "
                 f"(spread of the codes {row['latent_spread']:.3g})")
    return text


def _curve_points(model: str, name: str, seed: int, history: Mapping[str, list]) -> list[dict[str, Any]]:
    """One ``curve.csv`` row per epoch of a training's ``history`` (train loss, test AUC if scored)."""
    points = []
    for k, ep in enumerate(history.get("epoch", [])):
        point = {"model": model, "normal": name, "seed": int(seed), "epoch": int(ep),
                 "train_loss": float(history["train_loss"][k])}
        if k < len(history.get("test_auc", [])):
            point["test_auc"] = float(history["test_auc"][k])
        points.append(point)
    return points


def _mean_image_row(name: str, seed: int, sp: NoveltySplit, data: ImageSet, quantile: float) -> dict[str, Any]:
    train = data.x[sp.train]
    thr = float(np.quantile(mean_image_scores(train, data.x[sp.val]), quantile))
    return {"model": MEAN_IMAGE, "variant": "", "normal": name, "seed": int(seed),
            **novelty_metrics(sp.test_labels, mean_image_scores(train, data.x[sp.test]), thr), "threshold": thr}


def _evaluate(det: Detector, sp: NoveltySplit, data: ImageSet, quantile: float, attack: Mapping[str, Any] | None,
              seed: int) -> dict[str, Any]:
    """A fitted model's AUC and F1 on the split's test set (threshold: the ``quantile`` of the
    validation normals' scores), the same with the test normals attacked, and its collapse numbers."""
    x_test, normals = data.x[sp.test], sp.test_labels == 0
    thr = float(np.quantile(det.score_arrays(data.x[sp.val]), quantile))
    scores = det.score_arrays(x_test)
    row: dict[str, Any] = {**novelty_metrics(sp.test_labels, scores, thr), "threshold": thr}
    adversarial = None
    if attack:
        att = scores.copy()
        att[normals], adversarial = attack_normals(det, x_test[normals], float(attack["eps"]),
                                                   int(attack.get("steps", 40)), seed=seed)
        m = novelty_metrics(sp.test_labels, att, thr)
        row.update({"auc_attacked": m["auc"], "f1_attacked": m["f1"]})
    row.update(collapse_diagnostics(det, x_test, normals, adversarial))
    return row


def _cell_key(row: Mapping[str, Any]) -> tuple[str, str, int]:
    return str(row["model"]), str(row["normal"]), int(row["seed"])


_TEXT_COLUMNS = {"model", "variant", "normal"}


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``results.csv`` / ``curve.csv`` written by :func:`run_novelty`, typed back."""
    out = []
    with path.open(encoding="utf-8", newline="") as fh:
        for raw in csv.DictReader(fh):
            row: dict[str, Any] = {}
            for k, v in raw.items():
                if k in _TEXT_COLUMNS:
                    row[k] = v or ""
                elif v in ("", None):
                    continue
                elif k in ("seed", "epoch"):
                    row[k] = int(v)
                else:
                    try:
                        row[k] = float(v)
                    except ValueError:
                        row[k] = v
            out.append(row)
    return out


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


def _comparable(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in cfg.items() if k not in RUN_CONTROL_KEYS}, default=str))


def _earlier_rows(cfg: Mapping[str, Any], out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The finished rows and curve points of an earlier run of the same config in ``out``
    (resume), or nothing; a different config there is an error rather than a silent mixture."""
    results = out / "results.csv"
    if not cfg["resume"]:
        for name in ("results.csv", "curve.csv", "summary.csv"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "work", ignore_errors=True)
        return [], []
    if not (out / "config.json").is_file() or not results.is_file():
        return [], []
    try:
        before = json.loads((out / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{out / 'config.json'}: cannot read the earlier run's config ({exc})") from None
    now, then = _comparable(cfg), {k: v for k, v in before.items() if k not in RUN_CONTROL_KEYS}
    if now != then:
        keys = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
        raise ConfigError(f"{out}: holds results of a different novelty config (differs in {', '.join(keys)}); "
                          "give another out=, or resume=false to start again there")
    curve = _read_rows(out / "curve.csv") if (out / "curve.csv").is_file() else []
    return _read_rows(results), curve


def run_novelty(cfg: Mapping[str, Any], data: ImageSet | None = None, write: bool = True) -> dict[str, Any]:
    """Every model × normal set × seed of a resolved novelty config; returns ``{"rows", "summary",
    "splits", "curve", "stopped", "warnings"}``.

    With ``write``, ``cfg["out"]`` gets ``config.json``, ``results.csv`` (one row per model, normal
    set and seed, rewritten after every cell so a stopped run keeps what it finished),
    ``summary.csv``, ``curve.csv`` (``curve: true``: test AUC after every epoch),
    ``splits.json`` (the sizes of every split) and ``splits.npz`` (the image indices of every
    split, ``<normal>_seed<seed>_{train,val,test}``); ``work/`` holds the checkpoints of a
    training in progress. Running the same config again skips the finished cells and resumes an
    interrupted training from its last epoch (``resume: false`` starts afresh); ``max_minutes``
    stops the run after the epoch or cell that ends past the budget (``stopped`` is then True).

    Each cell also gets the distance-to-the-mean-training-image score as a reference row
    (``reference``), and autoencoders the :func:`collapse_diagnostics`; a model whose AUC is within
    :data:`COLLAPSE_MARGIN` of that reference is warned about (``warnings``).
    """
    cfg = resolve_novelty(cfg)
    t_start = time.monotonic()
    deadline = None if cfg["max_minutes"] is None else t_start + 60.0 * float(cfg["max_minutes"])

    def out_of_time() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    if data is None:
        opts = {"size": cfg["coil_size"]} if canonical_image_set(cfg["dataset"]) == "coil100" else {}
        data = load_image_set(cfg["dataset"], cfg["root"], **opts)
    out = Path(cfg["out"])
    rows, curve = _earlier_rows(cfg, out) if write else ([], [])
    done = {_cell_key(r) for r in rows}
    if done:
        log.info("resuming %s: %d finished training(s) kept", out, sum(1 for m, _, _ in done if m != MEAN_IMAGE))
    splits: list[dict[str, Any]] = []
    indices: dict[str, np.ndarray] = {}
    warnings: list[str] = []
    attack = cfg["attack"]
    models = [(m, p) for m, p in cfg["models"].items() if p is not None]  # `models.<name>=null` drops one
    sets = _normal_sets(cfg["normal_classes"], data)
    cells = len(sets) * len(cfg["seeds"]) * len(models)
    stopped = False

    def save() -> None:
        if not write:
            return
        write_dict_csv(out / "results.csv", rows, _columns(rows))
        if curve:
            write_dict_csv(out / "curve.csv", curve, _columns(curve))

    if write:
        atomic_write_text(out / "config.json", json.dumps(cfg, indent=2, default=str) + "\n")
    cell = 0
    for normal in sets:
        for seed in cfg["seeds"]:
            sp = make_split(data, normal, cfg["protocol"], int(seed), cfg["anomaly_fraction"], cfg["val_fraction"],
                            cfg["train_subset"])
            name = "+".join(str(c) for c in normal)
            splits.append({"normal": name, "seed": int(seed), "train": len(sp.train), "val": len(sp.val),
                           "test": len(sp.test), "test_anomalies": int(sp.test_labels.sum())})
            for part in ("train", "val", "test"):
                indices[f"{name}_seed{seed}_{part}"] = getattr(sp, part)
            x_test = data.x[sp.test]
            reference: float | None = None
            if cfg["reference"]:
                ref = [r for r in rows if _cell_key(r) == (MEAN_IMAGE, name, int(seed))]
                if not ref:
                    ref = [_mean_image_row(name, int(seed), sp, data, cfg["threshold_quantile"])]
                    rows.append(ref[0])
                reference = float(ref[0]["auc"])
            for model, params in models:
                cell += 1
                if (model, name, int(seed)) in done:
                    continue
                if out_of_time():
                    stopped = True
                    break
                tag = f"[{cell}/{cells}] {model} normal={name} seed={seed}"
                cls = _model_class(model, params, bool(attack), f"models.{model}")
                params = {k: v for k, v in params.items() if k != "model"}
                accepted = cls.param_defaults()
                # threshold=official: the model trains on every image of the protocol's train split
                # (the F1 threshold comes from the validation normals below, not from the model).
                given = {"image_shape": list(data.image_shape), "device": cfg["device"], "scale": "none",
                         "threshold": "official"}
                params.update({k: v for k, v in given.items() if k in accepted and k not in params})
                params["seed"] = int(seed)
                log.info("%s: training on %d images, testing on %d", tag, len(sp.train), len(sp.test))
                t0 = time.perf_counter()
                det = cls(**params)
                det.check_params()

                last_line = [-1e9]

                def on_epoch(epoch: int, fitted: Detector, _tag: str = tag) -> dict[str, float] | None:
                    extra = None
                    if cfg["curve"]:
                        extra = {"test_auc": novelty_metrics(sp.test_labels, fitted.score_arrays(x_test), 0.0)["auc"]}
                    now = time.perf_counter()
                    # every epoch of a long training (and every point of a curve); short epochs
                    # every EPOCH_LOG_SECONDS, plus the first and the last
                    if extra or epoch in (1, getattr(fitted, "epochs", 0)) or now - last_line[0] >= EPOCH_LOG_SECONDS:
                        last_line[0] = now
                        log.info("%s: epoch %d done%s (%.0f s)", _tag, epoch,
                                 f", test AUC {extra['test_auc']:.4f}" if extra else "", now - t0)
                    return extra

                work = out / "work" / f"{model}_{name}_seed{seed}" if write else None
                try:
                    det.fit_arrays(data.x[sp.train], FitContext(work_dir=work, on_epoch=on_epoch, stop=out_of_time))
                except TrainingStopped as exc:
                    log.warning("%s: %s", tag, exc)
                    stopped = True
                    break
                row = {"model": model, "variant": getattr(det, "variant", ""), "normal": name, "seed": int(seed),
                       **_evaluate(det, sp, data, cfg["threshold_quantile"], attack, int(seed))}
                if reference is not None:
                    row["auc_minus_mean_image"] = row["auc"] - reference
                row["epochs_trained"] = len(getattr(det, "history_", {}).get("epoch", []))
                row["seconds"] = round(time.perf_counter() - t0, 2)
                curve += _curve_points(model, name, int(seed), getattr(det, "history_", {}))
                log.info("%s: AUC %.4f%s (%.0f s)", tag, row["auc"],
                         f", attacked {row['auc_attacked']:.4f}" if attack else "", row["seconds"])
                text = collapse_warning(f"{model} normal={name} seed={seed}", row, reference)
                if text:
                    log.warning("%s", text)
                    warnings.append(text)
                rows.append(row)
                save()
            if stopped:
                break
        if stopped:
            break
    if stopped:
        log.warning("stopped after %.1f min (max_minutes=%s); run the same command again to resume",
                    (time.monotonic() - t_start) / 60, cfg["max_minutes"])
    summary = summarize(rows)
    if write:
        save()
        atomic_write_text(out / "splits.json", json.dumps(splits, indent=2) + "\n")
        buf = io.BytesIO()
        np.savez_compressed(buf, **indices)
        atomic_write_bytes(out / "splits.npz", buf.getvalue())
        write_dict_csv(out / "summary.csv", summary, _columns(summary))
        if not stopped:
            shutil.rmtree(out / "work", ignore_errors=True)
    return {"rows": rows, "summary": summary, "splits": splits, "curve": curve, "stopped": stopped,
            "warnings": warnings}


def format_table(rows: Sequence[Mapping[str, Any]], metric: str = "auc") -> str:
    """Per normal set (rows) and model (columns): ``metric`` averaged over seeds, and the mean row
    (models without the metric are left out; a cell not run yet shows ``-``)."""
    models = list(dict.fromkeys(r["model"] for r in rows if metric in r))
    sets = list(dict.fromkeys(r["normal"] for r in rows))
    cell = {}
    for n in sets:
        for m in models:
            vals = [r[metric] for r in rows if r["normal"] == n and r["model"] == m and metric in r]
            cell[n, m] = float(np.mean(vals)) if vals else float("nan")

    def fmt(v: float) -> str:
        return "-" if np.isnan(v) else f"{v:.4f}"

    width = max(12, *(len(m) + 2 for m in models)) if models else 12
    lines = ["normal".ljust(8) + "".join(m.rjust(width) for m in models)]
    lines += [n.ljust(8) + "".join(fmt(cell[n, m]).rjust(width) for m in models) for n in sets]
    means = []
    for m in models:
        vals = [cell[n, m] for n in sets]
        means.append(float("nan") if any(np.isnan(vals)) else float(np.mean(vals)))
    lines.append("mean".ljust(8) + "".join(fmt(v).rjust(width) for v in means))
    return "\n".join(lines)


def format_summary(summary: Sequence[Mapping[str, Any]]) -> str:
    """The summary as text lines, one per model."""
    lines = []
    for r in summary:
        parts = [f"{k.removesuffix('_mean')} {r[k]:.4f} ± {r[k.replace('_mean', '_std')]:.4f}"
                 for k in r if k.endswith("_mean")]
        lines.append(f"{r['model']}: " + ", ".join(parts) + f" ({r['normal_sets']} normal sets, {r['seeds']} seed(s))")
    return "\n".join(lines)
