"""The AE's scoring as one pure-torch module, for export (:meth:`AEDetector.export_module`)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from stetho.features.logmel import LogMelParams
from stetho.models.ae.torch_model import AENet
from stetho.models.export_modules import LogMelModule, stack_frames


class AEScoreModule(nn.Module):
    """Waveform -> the AE's clip scores ``[mahalanobis, mse]``, as :class:`AEDetector` scores.

    ``forward(waveform (n_samples,) float32, section () int64) -> (2,) float32``: the log-mel
    (:class:`~stetho.models.export_modules.LogMelModule`), its stacked-frame vectors, the
    reconstruction errors of the network (float32, as in training), then in float64 the clip
    mean of each vector's squared error (``mse``) and the Selective Mahalanobis distance of the
    clip-mean error block under each domain's precision matrix, minimum over domains. The AE
    ignores ``section`` (one model per machine type); the input is there so that every exported
    detector has the same signature.

    Args:
        params: the log-mel settings.
        net: the trained network (copied; eval mode).
        n_frames, frame_hop: the frame stacking.
        precisions: inverse covariances of the error blocks, one per domain, ``(n_mels, n_mels)``.
    """

    def __init__(self, params: LogMelParams, net: AENet, n_frames: int, frame_hop: int,
                 precisions: list[np.ndarray]) -> None:
        super().__init__()
        self.logmel = LogMelModule(params)
        self.net = copy.deepcopy(net).cpu().float().eval()
        self.n_frames = int(n_frames)
        self.frame_hop = int(frame_hop)
        self.n_mels = int(params.n_mels)
        self.register_buffer("precisions", torch.from_numpy(np.stack([np.asarray(p, dtype=np.float64)
                                                                      for p in precisions])))

    def forward(self, waveform: torch.Tensor, section: torch.Tensor) -> torch.Tensor:
        x = stack_frames(self.logmel(waveform), self.n_frames, self.frame_hop)
        err = x - self.net(x)
        mse = err.square().mean(dim=1).double().mean()
        block = err.reshape(err.shape[0], self.n_frames, self.n_mels).mean(dim=1).double().mean(dim=0)
        maha = torch.matmul(torch.matmul(self.precisions, block), block).min()  # (domains,) -> min
        return torch.stack([maha, mse]).float()


__all__ = ["AEScoreModule"]
