"""Feature extraction for many clips: decode, validate, log-mel in batches, cache.

This is also where audio is validated: every clip is read (or found in the cache, which only
holds clips that passed), and all problems are collected and reported together.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

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
    batch_size: int = 1,
    workers: int | None = None,
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
        batch_size: clips per work unit; equal-length clips of a unit share one torch batch.
            On CPU one clip at a time is fastest (cache-friendly; ``make bench`` sweeps it).
        workers: worker threads, each decoding and computing the log-mels of its clips
            (libsndfile and torch release the GIL); ``None``: one per CPU core.
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

    def work(chunk: list[int]) -> list[tuple[int, np.ndarray | AudioError]]:
        """Decode a chunk and compute its log-mels (equal lengths batched) in this worker."""
        done: list[tuple[int, np.ndarray | AudioError]] = []
        by_length: dict[int, list[tuple[int, np.ndarray]]] = {}
        for i in chunk:
            try:
                sig = read_audio(
                    clips[i].path, sr=params.sr, channel=audio.channel, resample=audio.resample,
                    min_samples=min_samples,
                )
            except AudioError as exc:
                done.append((i, exc))
                continue
            by_length.setdefault(sig.shape[0], []).append((i, sig))
        for group in by_length.values():
            feats = logmel(torch.from_numpy(np.stack([sig for _, sig in group])), params).numpy()
            done.extend((i, np.ascontiguousarray(f)) for (i, _), f in zip(group, feats))
        return done

    return _run(clips, todo, work, results, batch_size, workers, progress, desc, raise_on_error,
                cache=cache, key_params=key_params)


def extract_waveforms(
    clips: Sequence[Clip],
    sr: int = 16000,
    audio: AudioOptions = AudioOptions(),
    min_samples: int = 1,
    workers: int | None = None,
    progress: bool = False,
    raise_on_error: bool = True,
    desc: str = "audio",
) -> Extracted:
    """Validated float32 waveforms ``(n_samples,)`` at ``sr`` Hz of many clips (for models that
    learn from raw audio), read in parallel; problems are collected as in :func:`extract_logmels`.

    Args:
        clips: clips to read (output keeps the order).
        sr: sample rate in Hz (other rates are resampled, or refused with ``audio.resample=False``).
        audio: channel and resampling options (``audio.min_frames`` is not used here).
        min_samples: shortest acceptable clip in samples.
        workers: reader threads (``None``: one per CPU core).
        progress: show a progress bar.
        raise_on_error: raise one :class:`AudioValidationError` listing every bad clip, or leave
            bad clips out and return them in ``problems``.
    """
    results: list[np.ndarray | AudioError | None] = [None] * len(clips)

    def work(chunk: list[int]) -> list[tuple[int, np.ndarray | AudioError]]:
        done: list[tuple[int, np.ndarray | AudioError]] = []
        for i in chunk:
            try:
                done.append((i, read_audio(clips[i].path, sr=sr, channel=audio.channel, resample=audio.resample,
                                           min_samples=min_samples)))
            except AudioError as exc:
                done.append((i, exc))
        return done

    return _run(clips, list(range(len(clips))), work, results, 8, workers, progress, desc, raise_on_error)


def _run(
    clips: Sequence[Clip], todo: list[int], work, results: list, batch_size: int, workers: int | None,
    progress: bool, desc: str, raise_on_error: bool, cache: FeatureCache | None = None,
    key_params: dict | None = None,
) -> Extracted:
    """Run ``work`` over chunks of ``todo`` in threads, fill ``results``, gather an :class:`Extracted`."""
    chunks = [todo[s : s + batch_size] for s in range(0, len(todo), max(1, batch_size))]
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    # disable=None: no bar when stderr is not a terminal (CI logs, pipes), as pip does.
    bar = tqdm(total=len(clips), desc=desc, unit="clip", disable=None if progress else True, leave=False)
    bar.update(len(clips) - len(todo))
    # Parallel over clips, not inside ops: each worker runs torch single-threaded (the setting is
    # process-wide, so it is restored afterwards). At most 2 chunks per worker are in flight, which
    # bounds the memory held by decoded audio.
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending: deque[Future] = deque()
            for chunk in chunks:
                pending.append(pool.submit(work, chunk))
                if len(pending) >= 2 * workers:
                    _collect(pending.popleft(), results, clips, cache, key_params, bar)
            while pending:
                _collect(pending.popleft(), results, clips, cache, key_params, bar)
    finally:
        torch.set_num_threads(threads_before)
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


def _collect(
    future: Future,
    results: list,
    clips: Sequence[Clip],
    cache: FeatureCache | None,
    key_params: dict | None,
    bar: tqdm,
) -> None:
    """Store one finished chunk (features cached from this thread only) and advance the bar."""
    done = future.result()
    for i, r in done:
        results[i] = r
        if cache is not None and not isinstance(r, AudioError):
            cache.put(clips[i].path, key_params, r)
    bar.update(len(done))
