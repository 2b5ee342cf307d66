"""The context predictor of CANDE-CP (METHODS.md §4): an MLP frame classifier over the training
contexts, trained with the one :class:`~stetho.models.training.Trainer` (best epoch by validation
frame accuracy); the frozen context embedding table from its 64-unit layer; and the context of
every file of a test stream (its frames' majority, then windowed over the past files), and how
often those are right.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stetho.datasets.clip import Clip
from stetho.models.cande.context import embedding_table, file_modes, file_votes, stream_order, windowed_predictions
from stetho.models.cande.torch_model import ContextPredictor
from stetho.models.training import BestState, FrameVectors, Trainer, optimizer_step

log = logging.getLogger(__name__)


class ContextFrames:
    """Frame vectors of a set of files with each file's context index."""

    def __init__(self, vectors: FrameVectors, contexts: np.ndarray) -> None:
        self.vectors = vectors
        self.contexts = np.asarray(contexts, dtype=np.int64)
        self._ctx = torch.from_numpy(self.contexts)
        self.all = torch.arange(len(vectors))

    def context_of(self, owner: torch.Tensor) -> torch.Tensor:
        """Context index of each vector, from its owning file ``owner``."""
        return self._ctx[owner]

    def vectors_of(self, k: int) -> torch.Tensor:
        """Indices of the vectors of context ``k``'s files."""
        return torch.nonzero(self._ctx[self.vectors.clip_index] == k).flatten()


def train_predictor(
    tr: Trainer, trp: ContextFrames, vap: ContextFrames | None, n_contexts: int, hidden: Sequence[int], lr: float,
    batch_size: int, epochs: int, checkpoint: Path | None, fp: Any,
) -> tuple[ContextPredictor, dict[str, list], int | None]:
    """Train a fresh predictor on the frames of ``trp`` in trainer ``tr`` (Adam, ``lr``; checkpoint
    ``checkpoint`` with fingerprint ``("predictor", fp)``); the weights of the epoch of best
    validation frame accuracy on ``vap`` are kept (no ``vap``: the last epoch's).

    Returns:
        The predictor (eval mode), its history (with ``val_accuracy`` and ``best`` columns) and
        the best epoch (``None``: no validation).
    """
    device = tr.device
    net = ContextPredictor(trp.vectors.dim, n_contexts, hidden).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    best = BestState(net, higher_is_better=True)
    accuracy: list[float] = []

    def step(batch) -> float:
        x, owner = batch
        x, y = x.to(device, non_blocking=True), trp.context_of(owner).to(device)
        return optimizer_step(opt, torch.nn.functional.cross_entropy(net(x), y))

    def validate() -> float:
        net.eval()
        total, correct = 0.0, 0
        with torch.no_grad():
            for x, owner in vap.vectors.batches(torch.arange(len(vap.vectors)), 8192):
                logits, y = net(x.to(device)), vap.context_of(owner).to(device)
                total += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
        net.train()
        accuracy.append(correct / len(vap.vectors))
        return total / len(vap.vectors)

    def on_epoch(epoch: int, hist: dict) -> None:
        value = accuracy[-1] if vap is not None else float("nan")
        hist.setdefault("val_accuracy", []).append(value)
        best.update(epoch, value)

    net.train()
    history = tr.run(
        step, lambda e: trp.vectors.batches(trp.all, batch_size, shuffle=True, generator=tr.generator),
        epochs, evaluate=validate if vap is not None else None, on_epoch=on_epoch,
        desc="context predictor epochs", checkpoint=checkpoint,
        state={"net": net, "opt": opt, "best": best}, fingerprint=("predictor", fp),
    )
    best_epoch = best.restore()
    history["best"] = [int(e == best_epoch) for e in history["epoch"]]
    if best_epoch is None:
        log.info("context predictor: no validation files, the last epoch is kept")
    else:
        log.info("context predictor: best epoch %d, validation frame accuracy %.4f", best_epoch, best.value)
    return net.eval(), history, best_epoch


def context_embedding_table(predictor: ContextPredictor, trp: ContextFrames, n_contexts: int,
                            device: torch.device) -> np.ndarray:
    """The frozen context embeddings ``(n_contexts, width)`` from the predictor's 64-unit layer over
    the training frames of ``trp`` (:func:`~stetho.models.cande.context.embedding_table`)."""
    chunks, owners = [], []
    with torch.no_grad():
        for x, owner in trp.vectors.batches(trp.all, 8192):
            chunks.append(predictor.embed(x.to(device)).double().cpu().numpy())
            owners.append(owner.numpy())
    return embedding_table(np.concatenate(chunks), trp.contexts[np.concatenate(owners)], n_contexts)


def predict_stream_contexts(
    predictor: ContextPredictor, clips: Sequence[Clip], vectors: FrameVectors, n_contexts: int, order: str,
    seed: int, window: int, window_lambda: float, reset_per_directory: bool,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Contexts of the files ``clips`` (frame vectors ``vectors``) streamed in ``order``
    (:func:`~stetho.models.cande.context.stream_order`): ``"predicted"`` (the mode of each file's
    frame predictions), ``"predicted_window"`` (weighted over the last ``window`` files, forgetting
    rate ``window_lambda``, restarted per directory when ``reset_per_directory``) and ``"order"``
    (each file's stream position); and the frame votes ``(n_files, n_contexts)``."""
    device = next(predictor.parameters()).device
    preds, owners = [], []
    with torch.no_grad():
        for x, owner in vectors.batches(torch.arange(len(vectors)), 8192):
            preds.append(predictor(x.to(device)).argmax(1).cpu().numpy())
            owners.append(owner.numpy())
    votes = file_votes(np.concatenate(preds), np.concatenate(owners), len(clips), n_contexts)
    raw = file_modes(votes)
    streamed = stream_order(clips, order, seed)
    groups = [str(clips[i].path.parent) for i in streamed] if reset_per_directory else None
    windowed = np.empty_like(raw)
    windowed[streamed] = windowed_predictions(raw[streamed], n_contexts, window, window_lambda, groups)
    position = np.empty(len(clips), dtype=np.int64)
    position[streamed] = np.arange(len(clips))
    return {"predicted": raw, "predicted_window": windowed, "order": position}, votes


def context_accuracy_rows(stream: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Context-prediction accuracy of a context stream (rows as in
    :meth:`~stetho.models.cande.CANDEDetector.report_tables`): one row overall (``scope`` ``all``), then per machine type and per true context, with the
    number of files and the share right without (``accuracy``) and with the window
    (``accuracy (window)``)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {("all", "all"): list(stream)}
    for r in stream:
        groups.setdefault(("machine", r["machine"]), []).append(r)
    for r in stream:
        groups.setdefault(("context", r["context"]), []).append(r)
    out = []
    for (scope, name), rows in groups.items():
        out.append({
            "scope": scope, "name": name, "files": len(rows),
            "accuracy": float(np.mean([r["predicted"] == r["context"] for r in rows])),
            "accuracy (window)": float(np.mean([r["predicted_window"] == r["context"] for r in rows])),
        })
    return out
