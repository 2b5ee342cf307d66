"""Pseudo-attributes for machine types whose clips carry no attributes (Fujimura et al. 2024).

Per machine type: the embeddings of its clips are reduced to 2-D with UMAP (umap-learn; 15
neighbours, min_dist 0.1, Euclidean, seeded), then, per domain, a full-covariance Gaussian
mixture is fitted to the *training* points with the component count chosen by BIC (1..16 for
the source domain, 1..2 for the target domain; ``source_components`` fixes the source count
instead); each training clip's pseudo-attribute is its component. The seed's code fitted UMAP on
training **and test** clips; here only training clips are used unless ``transductive=True``
(METHODS.md §8: no test data in any fitting step by default).
The GMM is seeded (the seed's was not).
"""

from __future__ import annotations

import csv
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.mixture import GaussianMixture

from stetho.errors import DatasetError
from stetho.fileio import atomic_write_text, csv_text

log = logging.getLogger(__name__)

#: Largest component count tried per domain (the seed's 16 source / 2 target).
MAX_COMPONENTS = {"source": 16, "target": 2}


@dataclass
class Clustering:
    """Pseudo-attribute of each training clip of one machine type, and how it was chosen.

    Attributes:
        labels: cluster index per training clip (in the order given), counted per domain.
        n_components: chosen component count per domain.
        bic: BIC of every tried count per domain.
        coords: the 2-D UMAP coordinates of every clip given (training first, then extra ones).
    """

    labels: np.ndarray
    n_components: dict[str, int]
    bic: dict[str, list[float]]
    coords: np.ndarray


def umap_2d(x: np.ndarray, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1) -> np.ndarray:
    """``(n, 2)`` UMAP coordinates of ``x`` ``(n, d)`` (Euclidean, seeded)."""
    n = len(x)
    if n < 4:
        raise ValueError(f"UMAP needs at least 4 embeddings, got {n}")
    import umap  # imported lazily: numba compiles on first use (~10 s)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state", numba notices
        reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, n - 1), min_dist=min_dist,
                            metric="euclidean", random_state=seed)
        return np.asarray(reducer.fit_transform(np.asarray(x, dtype=np.float32)), dtype=np.float64)


def gmm_bic(points: np.ndarray, max_components: int, seed: int = 0,
            fixed: int | None = None) -> tuple[np.ndarray, int, list[float]]:
    """Fit full-covariance GMMs with 1..``max_components`` components, keep the lowest BIC
    (or, with ``fixed``, fit that many components only; at most half the points).

    Returns:
        (component of each point, chosen count, BIC of each tried count).
    """
    n = len(points)
    if n == 0:
        return np.zeros(0, dtype=np.int64), 0, []
    cap = n // 2 if n >= 4 else 1
    top = max(1, min(max_components if fixed is None else fixed, cap))
    counts = range(1, top + 1) if fixed is None else [top]
    bics, models = [], []
    for k in counts:
        gm = GaussianMixture(n_components=k, covariance_type="full", n_init=3, random_state=seed,
                             reg_covar=1e-6).fit(points)
        bics.append(float(gm.bic(points)))
        models.append(gm)
    best = int(np.argmin(bics))
    return models[best].predict(points).astype(np.int64), models[best].n_components, bics


def cluster_machine(
    train: np.ndarray, domains: Sequence[str | None], extra: np.ndarray | None = None, seed: int = 0,
    max_components: dict[str, int] = MAX_COMPONENTS, source_components: int | None = None,
) -> Clustering:
    """Pseudo-attributes of one machine type's training clips (see the module docstring).

    Args:
        train: training embeddings ``(n, d)``.
        domains: domain of each training clip (``None`` counts as source).
        extra: embeddings that shape the UMAP map but get no label (test clips, transductive).
        seed: UMAP and GMM seed.
        max_components: largest count per domain.
        source_components: a fixed component count for the source domain instead of BIC (when
            the number of operating conditions is known; BIC on a few dozen 2-D points tends to
            choose too few). The target domain keeps BIC.
    """
    x = train if extra is None or len(extra) == 0 else np.concatenate([train, extra])
    coords = umap_2d(x, seed=seed)
    labels = np.zeros(len(train), dtype=np.int64)
    chosen, bics = {}, {}
    dom = np.array([d or "source" for d in domains])
    for d in ("source", "target"):
        idx = np.flatnonzero(dom == d)
        if len(idx) == 0:
            continue
        fixed = source_components if d == "source" else None
        labels[idx], chosen[d], bics[d] = gmm_bic(coords[idx], max_components.get(d, 1), seed, fixed=fixed)
    return Clustering(labels, chosen, bics, coords)


def write_pseudo_labels(path: str | Path, rows: Sequence[tuple[str, str, str, str]]) -> Path:
    """Write ``file,machine,domain,label`` rows (atomically)."""
    return atomic_write_text(path, csv_text(rows, header=("file", "machine", "domain", "label")))


def read_pseudo_labels(path: str | Path) -> dict[str, str]:
    """``{absolute file: label}`` from a file written by :func:`write_pseudo_labels`.

    Raises:
        DatasetError: missing file or columns, or a file listed twice.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: pseudo-label file does not exist")
    out: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not {"file", "label"} <= set(reader.fieldnames or []):
            raise DatasetError(f"{path}: expected the columns file,machine,domain,label")
        for row in reader:
            key = str(Path(row["file"]).resolve())
            if key in out:
                raise DatasetError(f"{path}:{reader.line_num}: {row['file']} is listed twice")
            out[key] = row["label"]
    return out
