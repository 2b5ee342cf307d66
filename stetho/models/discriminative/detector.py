"""Discriminative feature-space training (Fujimura et al. 2024; METHODS.md §6), as a detector.

One network for all machine types learns to tell apart the classes (machine type, attributes,
domain) of the training clips from their raw waveforms; a clip's anomaly score is how far its
embedding lies from the training embeddings of its machine type (a backend, per machine type).
Scores of several epochs (12, 14, 16) are averaged. Machine types without attributes can get
pseudo-attributes from clustering (``pseudo_labels="gmm"``).

Training goes through :class:`~stetho.models.training.Trainer` (one per network: the pseudo-label
stage, the main network, or the triplet models): checkpoints in ``FitContext.work_dir``, and a
killed training run again with the same settings and clips continues from its last checkpoint.
Thresholds are the base class's (:class:`~stetho.models.base.Detector`); with
``threshold="official"`` they come, as in the original, from the backends' cross-fitted scores of
the training embeddings of a network trained on every clip (:meth:`_in_sample_scores`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stetho.backends import BACKENDS, cross_fitted_scores, domain_parts, ensemble, l2_normalize, make_backend
from stetho.datasets.clip import SOURCE, Clip
from stetho.errors import ConfigError, StethoError
from stetho.features import AudioOptions, extract_waveforms
from stetho.models.base import Detector, FitContext
from stetho.models.discriminative.augment import feature_exchange, mixup
from stetho.models.discriminative.pseudo_labels import cluster_machine, read_pseudo_labels, write_pseudo_labels
from stetho.models.discriminative.torch_model import BranchSpec, FFTBranch, MultiResolutionNet, SCAdaCosHead, STFTBranch
from stetho.models.discriminative.waves import WaveBank
from stetho.models.params import Boolean, Check, Interval, Options, SequenceOf, String
from stetho.models.persistence import cpu_weights, plain_history
from stetho.models.training import Trainer, optimizer_step, torch_fork_rng

log = logging.getLogger(__name__)

LABEL_MODES = ("attributes", "machine_domain")


def _valid_branch(spec: Any) -> bool:
    return isinstance(spec, str) and BranchSpec.parse(spec) is not None


class DiscriminativeDetector(Detector):
    """Multi-resolution embedding network + SCAdaCos (+ subspace loss), embeddings scored by a
    backend per machine type; one model for every machine type (``joint``).

    Args:
        branches: branch specs: ``"fft"`` and ``"stft:<n_fft>:<hop>"`` (paper: FFT, 4096/2048, 256/128).
        tile_seconds: input length; shorter clips are tiled, longer ones cropped (paper: 18 s).
        sr: sample rate, Hz.
        emb_dim: embedding size per branch (128).
        channels: STFT ResNet stage channels ((16, 32, 64, 128)).
        fft_channels: FFT branch conv channels (128).
        fft_dense_layers: FFT branch dense layers (5).
        n_subclusters: SCAdaCos centres per class (16).
        subspace_weight: weight of the per-branch SCAdaCos losses (1.0; 0 turns them off).
        featex: add the feature-exchange loss (FeatEx).
        featex_prob: share of samples whose branch embeddings are exchanged.
        featex_weight: weight of the FeatEx loss.
        mixup_prob: share of samples mixed with a partner (0.5).
        epochs: training epochs (16).
        batch_size: clips per batch (64).
        lr: AdamW learning rate (1e-3).
        weight_decay: AdamW weight decay (0.01, PyTorch's default, as the seed).
        ensemble_epochs: epochs whose scores are averaged ((12, 14, 16)); each ≤ ``epochs``.
        checkpoint_every: save a checkpoint every this many epochs (and after the last) in
            ``FitContext.work_dir`` (0: none). A killed training run again with the same settings
            and clips resumes from it; the checkpoints are deleted once ``fit`` succeeds.
        labels: ``"attributes"`` (classes = machine type × attributes × domain; machine types
            without attributes: machine × domain) or ``"machine_domain"``.
        pseudo_labels: ``"none"``, ``"gmm"`` (train once with machine × domain classes for the
            machine types to pseudo-label, cluster their embeddings, retrain with the clusters as
            attributes), or the path of a pseudo-label CSV written earlier.
        pseudo_label_machines: ``"no_attributes"`` (machine types whose clips carry none) or ``"all"``.
        pseudo_label_embedding: what is clustered: ``"classifier"`` (the first-stage model's
            embeddings) or ``"triplet"`` (a self-supervised model per machine type, see
            :mod:`stetho.models.discriminative.triplet`).
        triplet_epochs: epochs of the triplet models (6).
        pseudo_label_clusters: ``None`` (BIC chooses 1-16 source clusters, the paper) or a fixed
            number of source-domain clusters per machine type (the target domain keeps BIC, 1-2).
        transductive: let the test clips (``FitContext.unlabeled``) shape the UMAP map (the
            seed's variant; off by default).
        n_clusters: k-means centres per machine type on source embeddings (16).
        knn_k: neighbours of the kNN backend (1).
        density_k: neighbours defining the local density in the ``"density"`` backend (1).
        score_mode: default backend: ``"kmeans"``, ``"knn"``, ``"mahalanobis"``, ``"density"``,
            ``"kmeans_norm"`` or ``"knn_norm"`` (:mod:`stetho.backends.embedding`).
        test_hop: crops of a clip longer than the tile are this fraction of a tile apart at test
            time; their normalised embeddings are averaged.
        seed: seeds initialisation, batches, augmentation, k-means, UMAP and GMM.
        **common: the parameters every detector takes (seed, device, channel, progress, threshold,
            calibration, decision_fpr ...; :data:`stetho.models.base.COMMON_PARAMS`).
    """

    name = "discriminative"
    score_modes = tuple(BACKENDS)  # kmeans, knn, mahalanobis, density, kmeans_norm, knn_norm
    joint = True
    _parameter_constraints = {
        "branches": [SequenceOf(Check(_valid_branch, "fft or stft:<n_fft>:<hop>"), min_len=1)],
        "tile_seconds": [Interval(float, 0, None, closed="neither")],
        "sr": [Interval(int, 1000, None)],
        "emb_dim": [Interval(int, 1, None)],
        "channels": [SequenceOf(Interval(int, 1, None), min_len=1)],
        "fft_channels": [Interval(int, 1, None)],
        "fft_dense_layers": [Interval(int, 0, None)],
        "n_subclusters": [Interval(int, 1, None)],
        "subspace_weight": [Interval(float, 0, None)],
        "featex": [Boolean()],
        "featex_prob": [Interval(float, 0, 1)],
        "featex_weight": [Interval(float, 0, None)],
        "mixup_prob": [Interval(float, 0, 1)],
        "epochs": [Interval(int, 1, None)],
        "batch_size": [Interval(int, 2, None)],
        "lr": [Interval(float, 0, None, closed="neither")],
        "weight_decay": [Interval(float, 0, None)],
        "ensemble_epochs": [SequenceOf(Interval(int, 1, None), min_len=1)],
        "checkpoint_every": [Interval(int, 0, None)],
        "labels": [Options(*LABEL_MODES)],
        "pseudo_labels": [String("none, gmm or the path of a pseudo-label CSV"), None],
        "pseudo_label_machines": [Options("no_attributes", "all")],
        "pseudo_label_embedding": [Options("classifier", "triplet")],
        "triplet_epochs": [Interval(int, 1, None)],
        "pseudo_label_clusters": [Interval(int, 1, None), None],
        "transductive": [Boolean()],
        "n_clusters": [Interval(int, 1, None)],
        "knn_k": [Interval(int, 1, None)],
        "density_k": [Interval(int, 1, None)],
        "score_mode": [Options(*score_modes)],
        "test_hop": [Interval(float, 0, 1, closed="right")],
    }

    def __init__(
        self, branches: Sequence[str] = ("fft", "stft:4096:2048", "stft:256:128"), tile_seconds: float = 18.0,
        sr: int = 16000, emb_dim: int = 128, channels: Sequence[int] = (16, 32, 64, 128), fft_channels: int = 128,
        fft_dense_layers: int = 5, n_subclusters: int = 16, subspace_weight: float = 1.0, featex: bool = False,
        featex_prob: float = 0.5, featex_weight: float = 1.0, mixup_prob: float = 0.5, epochs: int = 16,
        batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 0.01,
        ensemble_epochs: Sequence[int] = (12, 14, 16), checkpoint_every: int = 2,
        labels: str = "attributes", pseudo_labels: str = "none", pseudo_label_machines: str = "no_attributes",
        pseudo_label_embedding: str = "classifier", triplet_epochs: int = 6,
        pseudo_label_clusters: int | None = None, transductive: bool = False,
        n_clusters: int = 16, knn_k: int = 1, density_k: int = 1, score_mode: str = "kmeans",
        test_hop: float = 0.5, **common: Any,
    ) -> None:
        super().__init__(**common)
        self.branches = list(branches)
        self.tile_seconds = tile_seconds
        self.sr = sr
        self.emb_dim = emb_dim
        self.channels = list(channels)
        self.fft_channels = fft_channels
        self.fft_dense_layers = fft_dense_layers
        self.n_subclusters = n_subclusters
        self.subspace_weight = subspace_weight
        self.featex = featex
        self.featex_prob = featex_prob
        self.featex_weight = featex_weight
        self.mixup_prob = mixup_prob
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.ensemble_epochs = list(ensemble_epochs)
        self.checkpoint_every = checkpoint_every
        self.labels = labels
        self.pseudo_labels = pseudo_labels
        self.pseudo_label_machines = pseudo_label_machines
        self.pseudo_label_embedding = pseudo_label_embedding
        self.triplet_epochs = triplet_epochs
        self.pseudo_label_clusters = pseudo_label_clusters
        self.transductive = transductive
        self.n_clusters = n_clusters
        self.knn_k = knn_k
        self.density_k = density_k
        self.score_mode = score_mode
        self.test_hop = test_hop

    # -- configuration checks ---------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        """Input length in samples."""
        return int(round(self.tile_seconds * self.sr))

    def _check_params(self) -> None:
        """Ensemble epochs within the training epochs; every branch fits the tile."""
        bad = [e for e in self.ensemble_epochs if not 1 <= int(e) <= self.epochs]
        if bad:
            raise ConfigError(f"{self.name}: params.ensemble_epochs={self.ensemble_epochs} must be within "
                              f"1..{self.epochs} (params.epochs, the training epochs)")
        for spec in map(BranchSpec.parse, self.branches):
            if spec.kind == "fft":
                if self.n_samples < FFTBranch.min_samples():
                    raise ConfigError(f"{self.name}: params.tile_seconds={self.tile_seconds}: the FFT branch needs "
                                      f"at least {FFTBranch.min_samples() / self.sr:.2f} s")
                continue
            try:  # the shapes only: one channel per stage, no random numbers drawn from the caller's RNG
                with torch_fork_rng(None):
                    STFTBranch(self.n_samples, spec.n_fft, spec.hop, self.sr, 1, [1] * len(self.channels))
            except ValueError as exc:
                raise ConfigError(f"{self.name}: params.tile_seconds={self.tile_seconds}: {exc}") from None

    # -- features ---------------------------------------------------------------------------
    def extract(self, clips, resample=True, cache=None, progress=False, raise_on_error=True, desc="audio"):
        """Waveforms of ``clips`` (see :meth:`Detector.extract`). Waveforms are not cached
        (decoding is as fast as reading a cache); given a ``cache`` (the pipeline's feature cache
        is on), they are streamed instead: validated now, decoded again when used, so a
        full-size set is never held in memory (:func:`~stetho.features.extract_waveforms`)."""
        return extract_waveforms(clips, self.sr, AudioOptions(channel=self.channel, resample=resample),
                                 min_samples=self.signal_spec[1], progress=progress, raise_on_error=raise_on_error,
                                 desc=desc, stream=cache is not None)

    @property
    def signal_spec(self) -> tuple[int, int]:
        """``(sr, 1024)``: waveforms at ``sr`` Hz, as :meth:`extract` reads them."""
        return self.sr, 1024

    def signal_features(self, y, path="<signal>"):
        """The waveform itself (float32), as :meth:`extract` gives a file's."""
        return np.ascontiguousarray(y, dtype=np.float32)

    # -- class labels -----------------------------------------------------------------------
    def _pseudo_targets(self, clips: Sequence[Clip]) -> set[str]:
        machines = {c.machine for c in clips}
        if self.pseudo_label_machines == "all":
            return machines
        return {m for m in machines if not any(c.attributes for c in clips if c.machine == m)}

    def _class_names(self, clips: Sequence[Clip], pseudo: dict[str, str] | None = None,
                     plain: set[str] = frozenset()) -> list[str]:
        """Class of each clip: ``machine|attributes|domain`` (pseudo-attributes when given,
        ``machine|domain`` for machine types in ``plain``, without attributes, or in
        ``labels="machine_domain"`` mode)."""
        names = []
        for c in clips:
            domain = c.domain or SOURCE
            if pseudo is not None and str(c.path.resolve()) in pseudo:
                names.append(f"{c.machine}|pseudo-{pseudo[str(c.path.resolve())]}|{domain}")
                continue
            attrs = "_".join(f"{k}_{v}" for k, v in c.attributes)
            if self.labels == "machine_domain" or c.machine in plain or not attrs:
                names.append(f"{c.machine}|{domain}")
            else:
                names.append(f"{c.machine}|{attrs}|{domain}")
        return names

    # -- training ---------------------------------------------------------------------------
    def _checkpoint(self, work_dir: str | Path | None, machines: Sequence[str], stage: str = "") -> Path | None:
        """The checkpoint file of a training stage (``None`` without a work dir)."""
        if work_dir is None:
            return None
        return Path(work_dir) / f"{self.name}_{'+'.join(machines)}{'_' + stage if stage else ''}.ckpt"

    def _fingerprint(self, stage: str, clips: Sequence[Clip], *extra: Any) -> tuple:
        """What makes a stage's training different: the hyper-parameters (not the run-only ones),
        the stage, the training clips and ``extra`` (class labels ...)."""
        return (self._fingerprint_params(), stage, [str(c.path) for c in clips], *extra)

    def _fit(self, clips: list[Clip], feats: list[np.ndarray], context: FitContext) -> None:
        """Train one network on the training clips of every machine type at once (after the
        pseudo-label stage for ``pseudo_labels="gmm"``), embed the clips, fit the backends."""
        bank = WaveBank(feats)
        stages: list[Trainer] = []  # the pseudo-label stage's checkpoints stay until the main one is done
        pseudo: dict[str, str] | None = None
        if self.pseudo_labels == "gmm":
            pseudo = self._pseudo_label(clips, bank, context.work_dir, context.unlabeled, keep=stages)
        elif self.pseudo_labels not in ("none", "", None):
            pseudo = read_pseudo_labels(self.pseudo_labels)
        names = self._class_names(clips, pseudo)
        self.classes_ = sorted(set(names))
        if len(self.classes_) < 2:
            log.warning("only one class (%s): the network has nothing to discriminate", self.classes_[0])
        y = np.array([self.classes_.index(n) for n in names])
        nets, self.history_ = self._train(bank, y, self._checkpoint(context.work_dir, self.machines_), "main",
                                          self._fingerprint("main", clips, y))
        for tr in stages:
            tr.remove_checkpoints()
        self._fit_backends(clips, bank, nets)

    def fit_pseudo_labels(
        self, clips: Sequence[Clip], features: Sequence[np.ndarray] | None = None,
        work_dir: str | Path | None = None,
        unlabeled: tuple[Sequence[Clip], Sequence[np.ndarray]] | None = None,
    ) -> dict[str, str]:
        """Pseudo-attributes of the training clips of the machine types without attributes (or
        all, see ``pseudo_label_machines``): ``{absolute file: cluster}``, also written to
        ``work_dir/pseudo_labels.csv`` (with the stage's checkpoints while it trains). This is the
        first stage of ``pseudo_labels="gmm"``."""
        self.check_params()
        clips = list(clips)
        return self._pseudo_label(clips, WaveBank(self._features(clips, features)), work_dir, unlabeled)

    def _pseudo_label(self, clips, bank, work_dir, unlabeled, keep: list[Trainer] | None = None) -> dict[str, str]:
        """Stage 1 (machine × domain classes for the machine types to pseudo-label), embeddings,
        UMAP + GMM per machine type; returns ``{file: label}`` and writes it to ``work_dir``.
        With ``keep``, the stage's trainers are appended to it and their checkpoints kept (the
        caller removes them once the main training is done)."""
        targets = self._pseudo_targets(clips)
        if not targets:
            log.info("pseudo-labels: every machine type has attributes; nothing to cluster")
            return {}
        work = Path(work_dir) if work_dir is not None else None
        machines = sorted({c.machine for c in clips})
        extra_bank = None
        if self.transductive and unlabeled is not None and len(unlabeled[0]):
            extra_bank = WaveBank(unlabeled[1])
        if self.pseudo_label_embedding == "triplet":
            emb, extra_emb = self._triplet_embeddings(clips, bank, targets, unlabeled, extra_bank, work, keep)
        else:
            names = self._class_names(clips, plain=targets)
            classes = sorted(set(names))
            y = np.array([classes.index(n) for n in names])
            nets, _ = self._train(bank, y, self._checkpoint(work, machines, "pseudo"), "pseudo",
                                  self._fingerprint("pseudo", clips, y), keep_last=True, keep=keep)
            net = nets[max(nets)]
            emb = self._embed(net, bank)
            extra_emb = self._embed(net, extra_bank) if extra_bank is not None else None
        out: dict[str, str] = {}
        rows = []
        for m in sorted(targets):
            idx = [i for i, c in enumerate(clips) if c.machine == m]
            extra = None
            if extra_emb is not None:
                extra = extra_emb[[i for i, c in enumerate(unlabeled[0]) if c.machine == m]]
            result = cluster_machine(emb[idx], [clips[i].domain for i in idx], extra, seed=self.seed,
                                     source_components=self.pseudo_label_clusters)
            log.info("pseudo-labels of %s: %s", m,
                     ", ".join(f"{d} {k} cluster(s)" for d, k in result.n_components.items()))
            for i, k in zip(idx, result.labels):
                key = str(clips[i].path.resolve())
                out[key] = str(int(k))
                rows.append((key, m, clips[i].domain or SOURCE, str(int(k))))
        if work is not None:
            path = write_pseudo_labels(work / "pseudo_labels.csv", rows)
            log.info("pseudo-labels written to %s", path)
        self.pseudo_labels_ = out
        return out

    def _triplet_embeddings(self, clips, bank, targets, unlabeled, extra_bank, work, keep):
        """Embeddings of every training clip (rows of ``targets`` machine types filled) by one
        self-supervised triplet model per machine type; the same for the unlabeled clips."""
        from stetho.models.discriminative.triplet import TripletNet, train_triplet_embeddings

        emb = np.zeros((len(bank), self.emb_dim))
        extra = np.zeros((len(extra_bank), self.emb_dim)) if extra_bank is not None else None
        machines = sorted({c.machine for c in clips})
        trainer = Trainer(self.seed, device=self.device, threads=self.threads, progress=self.progress,
                          checkpoint_every=self.checkpoint_every, keep_checkpoints=keep is not None)
        with trainer as tr:
            gen = tr.generator
            for m in sorted(targets):
                net = TripletNet(self.n_samples, self.sr, self.emb_dim, self.channels)
                idx = [i for i, c in enumerate(clips) if c.machine == m]
                others = [i for i, c in enumerate(clips) if c.machine != m]
                others = [others[int(j)] for j in torch.randperm(len(others), generator=gen)[:256]]

                def specs(b: WaveBank, rows: list[int]) -> torch.Tensor:
                    with torch.no_grad():
                        return torch.cat([net.spectrogram(torch.from_numpy(np.stack(
                            [b.crop(i, self.n_samples) for i in rows[s:s + 64]]))) for s in range(0, len(rows), 64)])

                mine = specs(bank, idx)
                rows = [i for i, c in enumerate(unlabeled[0]) if c.machine == m] if extra is not None else []
                n_extra = len(rows)
                if n_extra:
                    mine = torch.cat([mine, specs(extra_bank, rows)])  # transductive: test clips train it too
                noise = specs(bank, others) if others else None
                out = train_triplet_embeddings(
                    mine, noise, net, self.triplet_epochs, generator=gen, device=tr.device, trainer=tr,
                    checkpoint=self._checkpoint(work, machines, f"triplet_{m}"), desc=f"{self.name} triplet {m} epochs",
                    fingerprint=self._fingerprint(f"triplet {m}", clips, [str(unlabeled[0][i].path) for i in rows]))
                emb[idx] = out[:len(idx)]
                if n_extra:
                    extra[rows] = out[len(idx):]
        if keep is not None:
            keep.append(trainer)
        return emb, extra

    def _new_net(self) -> MultiResolutionNet:
        return MultiResolutionNet(self.n_samples, self.branches, self.sr, self.emb_dim, self.channels,
                                  self.fft_channels, self.fft_dense_layers)

    def _train(self, bank: WaveBank, y: np.ndarray, checkpoint: Path | None, stage: str, fingerprint: Any,
               keep_last: bool = False, keep: list[Trainer] | None = None):
        """Train a fresh network on classes ``y`` in a :class:`Trainer` of its own (seeded with
        ``seed``, checkpoints in ``checkpoint``); returns ``({epoch: network}, history)`` for the
        ensemble epochs (or the last one). With ``keep``, the checkpoints outlive the trainer
        (appended to ``keep``; the caller removes them)."""
        n_classes = int(y.max()) + 1
        kept_epochs = {int(e) for e in self.ensemble_epochs} if not keep_last else {self.epochs}
        trainer = Trainer(self.seed, device=self.device, threads=self.threads, progress=self.progress,
                          checkpoint_every=self.checkpoint_every, keep_checkpoints=keep is not None)
        with trainer as tr:
            device, gen = tr.device, tr.generator
            net = self._new_net().to(device)
            heads = torch.nn.ModuleDict({"main": SCAdaCosHead(net.dim, n_classes, self.n_subclusters, trainable=False)})
            if self.subspace_weight > 0:
                for i in range(len(net.branches)):
                    heads[f"branch{i}"] = SCAdaCosHead(self.emb_dim, n_classes, self.n_subclusters, trainable=True)
            if self.featex:
                heads["featex"] = SCAdaCosHead(net.dim, (1 + len(net.branches)) * n_classes, self.n_subclusters,
                                               trainable=True)
            heads = heads.to(device)
            params = [p for p in list(net.parameters()) + list(heads.parameters()) if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
            onehot = torch.nn.functional.one_hot(torch.from_numpy(y), n_classes).float()
            # The weights of the ensemble epochs, by epoch (str keys): checkpointed with the rest.
            kept: dict[str, dict[str, torch.Tensor]] = {}
            n, size = len(bank), self.n_samples

            def batches(epoch: int):
                order = torch.randperm(n, generator=gen).numpy()
                for s in range(0, n, self.batch_size):
                    idx = order[s:s + self.batch_size]
                    if len(idx) < 2:  # BatchNorm cannot train on one clip
                        continue
                    starts = [int(torch.randint(0, max(1, bank.length(i) - size + 1), (1,), generator=gen))
                              for i in idx]
                    x = torch.from_numpy(np.stack([bank.crop(i, size, st) for i, st in zip(idx, starts)]))
                    yield x, onehot[idx]

            def step(batch) -> float:
                x, t = batch
                x, t = mixup(x, t, self.mixup_prob, gen)
                x, t = x.to(device, non_blocking=True), t.to(device, non_blocking=True)
                joint, parts = net(x)
                loss = heads["main"](joint, t)
                if self.subspace_weight > 0:
                    loss = loss + self.subspace_weight * sum(heads[f"branch{i}"](p, t) for i, p in enumerate(parts))
                if self.featex:
                    ex, tx = feature_exchange(parts, t, self.featex_prob, gen)
                    loss = loss + self.featex_weight * heads["featex"](ex, tx)
                return optimizer_step(opt, loss)

            def on_epoch(epoch: int, hist: dict) -> None:
                if epoch in kept_epochs:
                    kept[str(epoch)] = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}

            net.train()
            heads.train()
            history = tr.run(step, batches, self.epochs, on_epoch=on_epoch, desc=f"{self.name} {stage} epochs",
                             checkpoint=checkpoint, state={"net": net, "heads": heads, "opt": opt, "kept": kept},
                             fingerprint=fingerprint)
            nets = {}
            for epoch in sorted(kept, key=int):  # built inside the trainer: the caller's RNG is not drawn from
                m = self._new_net().to(device)
                m.load_state_dict(kept[epoch])
                nets[int(epoch)] = m.eval()
        if keep is not None:
            keep.append(trainer)
        return nets, history

    # -- embeddings -------------------------------------------------------------------------
    @property
    def crop_hop(self) -> int:
        """Samples between the test crops of a clip longer than a tile (``test_hop`` of a tile)."""
        return max(1, int(self.n_samples * self.test_hop))

    def _crop_starts(self, length: int) -> list[int]:
        size = self.n_samples
        if length <= size:
            return [0]
        hop = self.crop_hop
        n = math.ceil((length - size) / hop) + 1
        return [int(round(s)) for s in np.linspace(0, length - size, n)]

    def _embed(self, net: MultiResolutionNet, bank: WaveBank, batch: int = 32) -> np.ndarray:
        """L2-normalised joint embedding of every clip ``(n, dim)`` (crops averaged)."""
        device = next(net.parameters()).device
        crops = [(i, st) for i in range(len(bank)) for st in self._crop_starts(bank.length(i))]
        out = np.zeros((len(bank), net.dim))
        net.eval()
        with torch.no_grad():
            for s in range(0, len(crops), batch):
                part = crops[s:s + batch]
                x = torch.from_numpy(np.stack([bank.crop(i, self.n_samples, st) for i, st in part])).to(device)
                emb = l2_normalize(net(x)[0].cpu().numpy())
                np.add.at(out, [i for i, _ in part], emb)
        return l2_normalize(out)

    def embed(self, clips: Sequence[Clip], features: Sequence[np.ndarray] | None = None,
              epoch: int | None = None) -> np.ndarray:
        """L2-normalised embeddings ``(n, dim)`` of ``clips`` by the model of ``epoch`` (default:
        the last ensemble epoch)."""
        self._check_fitted()
        epoch = epoch or max(self.nets_)
        if epoch not in self.nets_:
            raise StethoError(f"no model of epoch {epoch}; kept: {', '.join(map(str, sorted(self.nets_)))}")
        return self._embed(self.nets_[epoch], WaveBank(self._features(clips, features)))

    # -- backends and thresholds ------------------------------------------------------------
    def _fit_backends(self, clips: Sequence[Clip], bank: WaveBank, nets: dict[int, MultiResolutionNet]) -> None:
        self.nets_ = nets
        self.train_embeddings_: dict[int, np.ndarray] = {e: self._embed(net, bank) for e, net in nets.items()}
        self.train_domains_ = [c.domain or SOURCE for c in clips]
        self.train_machine_of_ = [c.machine for c in clips]
        self.train_sections_ = [c.section for c in clips]
        self._build_backends()

    def _build_backends(self) -> None:
        """Backends of every epoch, machine type and mode from the stored training embeddings
        (quick and deterministic: a loaded model refits them)."""
        self.backends_: dict[int, dict[str, dict[str, Any]]] = {}
        for epoch, emb in self.train_embeddings_.items():
            self.backends_[epoch] = {}
            for m in self.machines_:
                parts = self._parts(emb, m)
                self.backends_[epoch][m] = {
                    mode: make_backend(mode, seed=self.seed, n_clusters=self.n_clusters, k=self.knn_k,
                                       density_k=self.density_k).fit(parts)
                    for mode in self.score_modes}

    def _in_sample_scores(self, clips: list[Clip], feats: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Scores of the training clips for ``threshold="official"``, as the original fits its
        thresholds: per machine type and epoch, each clip's embedding scored by the backend
        cross-fitted over its domain's other embeddings (:meth:`EmbeddingBackend.train_scores`;
        in-sample backend scores are biased low: a kNN memory holds the clip itself), averaged
        over the ensemble epochs. No audio is read: the training embeddings are kept."""
        if [c.machine for c in clips] != self.train_machine_of_:
            raise ValueError("_in_sample_scores() takes the clips the detector was trained on")
        per_epoch: dict[str, list[np.ndarray]] = {mode: [] for mode in self.score_modes}
        domains = np.asarray(self.train_domains_)
        for epoch, emb in self.train_embeddings_.items():
            scores = {mode: np.full(len(clips), np.nan) for mode in self.score_modes}
            for m in self.machines_:
                idx = self._rows(m)
                for mode in self.score_modes:
                    scores[mode][idx] = cross_fitted_scores(self.backends_[epoch][m][mode], emb[idx], domains[idx],
                                                            seed=self.seed)
            for mode in self.score_modes:
                per_epoch[mode].append(scores[mode])
        return {mode: ensemble(v) for mode, v in per_epoch.items()}

    def _rows(self, machine: str) -> np.ndarray:
        """Indices of the training clips of ``machine``."""
        return np.flatnonzero(np.asarray(self.train_machine_of_) == machine)

    def _parts(self, emb: np.ndarray, machine: str) -> dict[str, np.ndarray]:
        idx = self._rows(machine)
        return domain_parts(emb[idx], np.asarray(self.train_domains_)[idx])

    # -- scoring ----------------------------------------------------------------------------
    def _score_all(self, clips, features) -> dict[str, np.ndarray]:
        unknown = sorted({c.machine for c in clips} - set(self.machines_))
        if unknown:
            raise StethoError(f"{self.name}: no training clips of machine type(s) {', '.join(unknown)}; "
                              f"trained on {', '.join(self.machines_)}")
        self.test_embeddings_ = None  # report_arrays() describes this call only
        if not clips:
            return {m: np.zeros(0) for m in self.score_modes}
        bank = WaveBank(self._features(clips, features))
        per_epoch = {mode: [] for mode in self.score_modes}
        for epoch, net in self.nets_.items():
            emb = self._embed(net, bank)
            if epoch == max(self.nets_):  # the epoch of the report's training embeddings
                self.test_embeddings_ = (epoch, emb.astype(np.float32))
            for mode in self.score_modes:
                s = np.empty(len(clips))
                for m in {c.machine for c in clips}:
                    idx = [i for i, c in enumerate(clips) if c.machine == m]
                    s[idx] = self.backends_[epoch][m][mode].score(emb[idx])
                per_epoch[mode].append(s)
        return {mode: ensemble(v) for mode, v in per_epoch.items()}

    # -- export (issue 21) -----------------------------------------------------------------
    #: The backends are fitted per machine type on both domains (minimum over domains): the
    #: exported module's scores do not depend on its section input.
    export_uses_section = False

    def export_sections(self, machine_type: str) -> list[str]:
        """The sections of ``machine_type`` (sorted) of the training and calibration clips: what
        the ``section`` input of :meth:`export_module` indexes (it does not change the scores)."""
        self._check_export_machine(machine_type)
        pairs = list(zip(self.train_machine_of_, self.train_sections_))
        pairs += list(zip(self.calibration_["machine"], self.calibration_["section"]))
        return sorted({str(s) for m, s in pairs if m == machine_type and s is not None})

    def export_module(self, machine_type: str) -> torch.nn.Module:
        """The scoring of clips of ``machine_type`` as one pure-torch module (eval mode, CPU):
        ``forward(waveform float32 (n_samples,), section int64 scalar) -> float32 (n_modes,)``,
        the clip's score per mode of :attr:`score_modes`, equal to :meth:`score_all` (the
        waveform at :attr:`sr`; the test crops, every ensemble epoch's network and the
        backends' fitted statistics inside; see
        :class:`~stetho.models.discriminative.export.DiscriminativeScorer`)."""
        from stetho.models.discriminative.export import DiscriminativeScorer

        self._check_export_machine(machine_type)
        epochs = list(self.nets_)  # the order score_all averages in
        return DiscriminativeScorer([self.nets_[e] for e in epochs], [self.backends_[e][machine_type] for e in epochs],
                                    self.score_modes, self.n_samples, self.crop_hop, self.sr)

    def report_arrays(self) -> dict[str, dict[str, np.ndarray]]:
        """``test_embeddings``: the L2-normalised embeddings ``(n, dim)`` (float32) of the clips
        of the last scoring by the model of the last ensemble epoch (``max(nets_)``, the epoch of
        the last ``train_embeddings_``) and that ``epoch`` per clip."""
        if getattr(self, "test_embeddings_", None) is None:
            return {}
        epoch, emb = self.test_embeddings_
        return {"test_embeddings": {"embeddings": emb, "epoch": np.full(len(emb), epoch, dtype=np.int64)}}

    # -- persistence ------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        t = lambda a: torch.as_tensor(np.asarray(a))  # noqa: E731
        return {
            "nets": {int(e): cpu_weights(n) for e, n in self.nets_.items()},
            "classes": list(self.classes_),
            "train_embeddings": {int(e): t(x) for e, x in self.train_embeddings_.items()},  # float64: exact refit
            "train_domains": list(self.train_domains_),
            "train_machines": list(self.train_machine_of_),
            "train_sections": list(self.train_sections_),
            "history": plain_history(self.history_),
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self.nets_ = {}
        for epoch, sd in state["nets"].items():
            with torch_fork_rng(None):  # the weights are loaded: draw nothing from the caller's RNG
                net = self._new_net()
            self.nets_[int(epoch)] = self._restore_net(net, sd)
        self.classes_ = list(state["classes"])
        self.train_embeddings_ = {int(e): x.double().numpy() for e, x in state["train_embeddings"].items()}
        self.train_domains_ = list(state["train_domains"])
        self.train_machine_of_ = list(state["train_machines"])
        # files saved before the export hook kept no sections: only the calibration clips' then
        self.train_sections_ = list(state.get("train_sections", [None] * len(self.train_machine_of_)))
        self.history_ = plain_history(state["history"])
        self._build_backends()  # the base has set machines_ and reads the thresholds


__all__ = ["BACKENDS", "DiscriminativeDetector", "WaveBank"]
