"""Contexts of CANDE-CP: which column names a clip's context, the embedding table, per-file
context votes, the weighted window over past files, and the streaming order (METHODS.md §4).

Small pure functions on clips and numpy arrays; the detector wires them together.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from stetho.datasets.base import listing
from stetho.datasets.clip import Clip
from stetho.errors import ConfigError, DatasetError

#: ``context`` values: what a clip's context is made of.
#: ``machine_id``: machine type × machine ID (MIMII, DCASE 2020; the SNR is not part of it);
#: ``machine_section``: machine type × section (DCASE 2021-2025; for MIMII the section holds the
#: SNR too); ``attributes``: machine type × the clip's attribute values (machine type alone for
#: clips without attributes); ``machine``: the machine type; ``auto``: ``machine_id`` when every
#: clip has a machine ID, else ``machine_section``.
CONTEXT_COLUMNS = ("auto", "machine_id", "machine_section", "attributes", "machine")
#: Orders in which test files are streamed through the window.
STREAM_ORDERS = ("path", "shuffle")


def resolve_context_column(clips: Sequence[Clip], column: str) -> str:
    """``column``, with ``"auto"`` resolved for ``clips`` (see :data:`CONTEXT_COLUMNS`)."""
    if column not in CONTEXT_COLUMNS:
        raise ConfigError(f"unknown context column {column!r}; choose from {', '.join(CONTEXT_COLUMNS)}")
    if column != "auto":
        return column
    return "machine_id" if clips and all(c.get_meta("id") is not None for c in clips) else "machine_section"


def context_of(clip: Clip, column: str) -> str:
    """The context name of ``clip`` under a resolved ``column`` (not ``"auto"``).

    Raises:
        DatasetError: ``machine_id`` asked of a clip without a machine ID (the file is named).
    """
    if column == "machine_id":
        mid = clip.get_meta("id")
        if mid is None:
            raise DatasetError(f"{clip.path}: no machine ID (context 'machine_id' needs MIMII or DCASE 2020 "
                               "clips); use context=machine_section or attributes")
        return f"{clip.machine}_id_{mid}"
    if column == "machine_section":
        return f"{clip.machine}_section_{clip.section}"
    if column == "attributes":
        return "_".join([clip.machine, *(f"{k}_{v}" for k, v in clip.attributes)])
    if column == "machine":
        return clip.machine
    raise ConfigError(f"unknown context column {column!r}; choose from {', '.join(CONTEXT_COLUMNS[1:])}")


def context_indices(clips: Sequence[Clip], column: str, contexts: Sequence[str], what: str) -> np.ndarray:
    """Index into ``contexts`` of every clip's context.

    Raises:
        DatasetError: a clip whose context is not in ``contexts``; every such file is listed.
    """
    index = {name: k for k, name in enumerate(contexts)}
    names = [context_of(c, column) for c in clips]
    unknown = [f"{c.path} ({n})" for c, n in zip(clips, names) if n not in index]
    if unknown:
        raise DatasetError(
            f"{len(unknown)} {what} clip(s) have a context ({column}) that was never seen in training "
            f"(trained on {', '.join(contexts)}):\n  " + listing(unknown) + "\nThe model knows only the contexts "
            "of its training clips: train on data that has these contexts, or choose a coarser context column "
            f"({', '.join(c for c in CONTEXT_COLUMNS[1:] if c != column)})."
        )
    return np.array([index[n] for n in names], dtype=np.int64)


def embedding_table(embeddings: np.ndarray, contexts: np.ndarray, n_contexts: int) -> np.ndarray:
    """Context embedding table ``(n_contexts, dim)``: the mean embedding of each context's
    frames, then min-max normalised per dimension across contexts (to [0, 1]).

    A dimension equal for every context (or a single context) has no range: it becomes 0.

    Args:
        embeddings: per-frame embeddings ``(n_frames, dim)`` (the predictor's 64-unit layer).
        contexts: the true context index of each frame ``(n_frames,)``.
        n_contexts: number of contexts; each needs at least one frame.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    contexts = np.asarray(contexts, dtype=np.int64)
    counts = np.bincount(contexts, minlength=n_contexts)
    if (counts == 0).any():
        raise ValueError(f"contexts {np.flatnonzero(counts == 0).tolist()} have no frames")
    sums = np.zeros((n_contexts, embeddings.shape[1]))
    np.add.at(sums, contexts, embeddings)
    means = sums / counts[:, None]
    lo, hi = means.min(axis=0), means.max(axis=0)
    span = hi - lo
    return np.where(span > 0, (means - lo) / np.where(span > 0, span, 1.0), 0.0)


def file_votes(frame_predictions: np.ndarray, owners: np.ndarray, n_files: int, n_contexts: int) -> np.ndarray:
    """Frame votes per file ``(n_files, n_contexts)``: how many of each file's frames the
    predictor assigned to each context."""
    votes = np.zeros((n_files, n_contexts), dtype=np.int64)
    np.add.at(votes, (np.asarray(owners), np.asarray(frame_predictions)), 1)
    return votes


def file_modes(votes: np.ndarray) -> np.ndarray:
    """Per-file context = the mode of its frame predictions; a tie goes to the lowest index."""
    return np.asarray(votes).argmax(axis=1)


def window_weights(n: int, lam: float) -> np.ndarray:
    """Weights of the ``n`` predictions in a window, oldest first: ``(1 − λ)^(n − t)``, t = 1…n
    (the newest has weight 1)."""
    t = np.arange(1, n + 1)
    return (1.0 - lam) ** (n - t)


def windowed_predictions(
    predictions: Sequence[int], n_contexts: int, window: int = 50, lam: float = 0.1,
    groups: Sequence[Hashable] | None = None,
) -> np.ndarray:
    """Context of each file in a stream from the weighted window of the last ``window`` file
    predictions (the file's own included): the context with the largest weight sum, weights
    :func:`window_weights`. A tie goes to the most recent of the tied predictions.

    Args:
        predictions: per-file predicted contexts, in stream order.
        n_contexts: number of contexts.
        window: W, the most predictions a window holds.
        lam: λ, the forgetting rate.
        groups: a key per file (e.g. its directory): the window restarts when it changes;
            ``None`` = one stream.
    """
    preds = np.asarray(predictions, dtype=np.int64)
    out = np.empty(len(preds), dtype=np.int64)
    start = 0
    for n in range(len(preds)):
        if groups is not None and n > 0 and groups[n] != groups[n - 1]:
            start = n
        recent = preds[max(start, n - window + 1): n + 1]
        sums = np.zeros(n_contexts)
        np.add.at(sums, recent, window_weights(len(recent), lam))
        tied = np.flatnonzero(np.isclose(sums, sums.max(), rtol=0, atol=1e-12))
        if len(tied) == 1:
            out[n] = tied[0]
        else:  # the newest prediction among the tied contexts
            out[n] = next(p for p in recent[::-1] if p in tied)
    return out


def stream_order(clips: Sequence[Clip], order: str = "path", seed: int = 0) -> np.ndarray:
    """Indices of ``clips`` in streaming order: sorted by path (``"path"``), or a seeded
    permutation of that (``"shuffle"``, to measure how much the window owes to the order)."""
    if order not in STREAM_ORDERS:
        raise ConfigError(f"unknown stream order {order!r}; choose from {', '.join(STREAM_ORDERS)}")
    idx = np.array(sorted(range(len(clips)), key=lambda i: (str(clips[i].path), clips[i].name)), dtype=np.int64)
    if order == "shuffle":
        idx = idx[np.random.default_rng(seed).permutation(len(idx))]
    return idx
