"""Feature extraction for many clips: decode, validate, log-mel in batches, cache.

This is also where audio is validated: every clip is read (or found in the cache, which only
holds clips that passed), and all problems are collected and reported together.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from stetho.audio import read_audio
from stetho.datasets.clip import Clip
from stetho.errors import AudioError, AudioValidationError
from stetho.features.cache import FeatureCache
from stetho.features.logmel import LogMelParams, logmel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioOptions:
    """How audio files are read.

    Attributes:
        channel: channel kept from multi-channel files (0-based).
        resample: resample files whose rate differs from ``sr`` (soxr HQ), else refuse them.
        min_frames: fewest log-mel frames a clip must give (e.g. 5 for 5-frame stacking).
    """

    channel: int = 0
    resample: bool = True
    min_frames: int = 1


@dataclass
class Extracted:
    """Result of :func:`extract_logmels`: features of the good clips, and the bad ones.

    Attributes:
        clips: clips whose features were computed, in input order.
        features: float32 log-mels ``(n_frames, n_mels)``, aligned with ``clips``.
        problems: one :class:`AudioError` per clip that failed, in input order.
    """

    clips: list[Clip] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    problems: list[AudioError] = field(default_factory=list)


def min_samples_for(params: LogMelParams, min_frames: int) -> int:
    """Shortest signal (samples) giving a full FFT frame and at least ``min_frames`` frames."""
    return max(params.n_fft, (min_frames - 1) * params.hop_length)


def extract_logmels(
    clips: Sequence[Clip],
    params: LogMelParams = LogMelParams(),
    audio: AudioOptions = AudioOptions(),
    cache: FeatureCache | None = None,
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = False,
    raise_on_error: bool = True,
    desc: str = "log-mel",
) -> Extracted:
    """Log-mel spectrograms of many clips, validated, batched and cached.

    Args:
        clips: clips to process (any order; output keeps it).
        params: log-mel parameters.
        audio: channel / resampling / minimum length.
        cache: feature cache, or ``None`` to always compute.
        batch_size: clips per torch batch (equal-length clips are batched together).
        workers: decoding threads (libsndfile releases the GIL).
        progress: show a progress bar.
        raise_on_error: raise one :class:`AudioValidationError` listing every bad clip;
            if False, bad clips are left out and returned in ``problems``.

    Returns:
        :class:`Extracted`.
    """
    key_params = {**params.to_dict(), "channel": audio.channel, "resample": audio.resample}
    min_samples = min_samples_for(params, audio.min_frames)
    results: list[np.ndarray | AudioError | None] = [None] * len(clips)

    todo: list[int] = []
    for i, clip in enumerate(clips):
        hit = cache.get(clip.path, key_params) if cache is not None and clip.path.exists() else None
        if hit is not None and hit.shape[0] >= audio.min_frames:
            results[i] = hit
        else:
            todo.append(i)

    def read(i: int) -> np.ndarray | AudioError:
        try:
            return read_audio(
                clips[i].path, sr=params.sr, channel=audio.channel, resample=audio.resample,
                min_samples=min_samples,
            )
        except AudioError as exc:
            return exc

    bar = tqdm(total=len(clips), desc=desc, unit="clip", disable=not progress, leave=False)
    bar.update(len(clips) - len(todo))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            signals = list(pool.map(read, chunk))
            by_length: dict[int, list[int]] = {}
            for i, sig in zip(chunk, signals):
                if isinstance(sig, AudioError):
                    results[i] = sig
                else:
                    by_length.setdefault(sig.shape[0], []).append(i)
                    results[i] = sig  # placeholder until its features are computed
            for idx in by_length.values():
                batch = torch.from_numpy(np.stack([results[i] for i in idx]))
                feats = logmel(batch, params).numpy()
                for i, f in zip(idx, feats):
                    f = np.ascontiguousarray(f)
                    results[i] = f
                    if cache is not None:
                        cache.put(clips[i].path, key_params, f)
            bar.update(len(chunk))
    bar.close()

    out = Extracted()
    for clip, r in zip(clips, results):
        if isinstance(r, AudioError):
            out.problems.append(r)
        else:
            out.clips.append(clip)
            out.features.append(r)
    if out.problems and raise_on_error:
        raise AudioValidationError(out.problems)
    return out
