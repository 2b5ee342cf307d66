"""Feature extraction for many clips: decode, validate, log-mel in batches, cache.

This is also where audio is validated: every clip is read (or found in the cache, which only
holds clips that passed, keyed on their content), and all problems are collected and reported
together. Each clip's native sample rate (before resampling) is returned with its features so a
caller can warn about or refuse clips recorded at another rate than the training clips.
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

from stetho.audio import check_channel, load_audio
from stetho.datasets.clip import Clip
from stetho.errors import AudioError, AudioValidationError, ConfigError
from stetho.features.cache import FeatureCache
from stetho.features.lazy import AudioRef, CacheRef, FeatureList
from stetho.features.logmel import LogMelParams, logmel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioOptions:
    """How audio files are read.

    Attributes:
        channel: channel kept from multi-channel files (0-based, >= 0).
        resample: resample files whose rate differs from ``sr`` (soxr HQ), else refuse them.
        min_frames: fewest log-mel frames a clip must give (e.g. 5 for 5-frame stacking), >= 1.

    Raises:
        ConfigError: a negative or fractional channel, or ``min_frames`` below 1.
    """

    channel: int = 0
    resample: bool = True
    min_frames: int = 1

    def __post_init__(self) -> None:
        check_channel(self.channel)
        if isinstance(self.min_frames, bool) or not isinstance(self.min_frames, (int, np.integer)) \
                or self.min_frames < 1:
            raise ConfigError(f"min_frames must be a whole number >= 1, got {self.min_frames!r}")


@dataclass
class Extracted:
    """Result of :func:`extract_logmels` / :func:`extract_waveforms`: features of the good clips,
    and the bad ones.

    Attributes:
        clips: clips whose features were computed, in input order.
        features: float32 log-mels ``(n_frames, n_mels)`` (or waveforms ``(n_samples,)``), aligned
            with ``clips``: a list of arrays in memory, or a :class:`~stetho.features.lazy.FeatureList`
            whose items are read from disk when used (memory-mapped cache entries, audio files).
        sample_rates: each clip's native sample rate in Hz as its file header gives it (before any
            resampling; also on cache hits), aligned with ``clips``. A rate other than the
            features' ``sr`` means the clip was resampled.
        problems: one :class:`AudioError` per clip that failed, in input order.
    """

    clips: list[Clip] = field(default_factory=list)
    features: list[np.ndarray] | FeatureList = field(default_factory=list)
    problems: list[AudioError] = field(default_factory=list)
    sample_rates: list[int] = field(default_factory=list)


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
    memory_map: bool = True,
) -> Extracted:
    """Log-mel spectrograms of many clips, validated, batched and cached.

    Args:
        clips: clips to process (any order; output keeps it).
        params: log-mel parameters.
        audio: channel / resampling / minimum length.
        cache: feature cache, or ``None`` to always compute.
        batch_size: clips per work unit; equal-length clips of a unit share one torch batch.
            On CPU one clip at a time is fastest (cache-friendly; ``make bench`` sweeps it).
        workers: worker threads, which first look the clips up in the cache (a hash of each
            file's bytes), then decode the misses and compute their log-mels (hashlib, libsndfile
            and torch release the GIL); ``None``: one per CPU core.
        progress: show a progress bar.
        raise_on_error: raise one :class:`AudioValidationError` listing every bad clip;
            if False, bad clips are left out and returned in ``problems``.
        memory_map: with a ``cache``, return the features as a
            :class:`~stetho.features.lazy.FeatureList` of the cache entries, memory-mapped when
            used, instead of arrays in memory (clips the cache could not store stay in memory):
            the memory a run needs then no longer grows with its number of clips.

    Returns:
        :class:`Extracted`, with each clip's native sample rate in ``sample_rates``.

    Raises:
        AudioValidationError: some clips failed and ``raise_on_error`` is set.
    """
    # Everything the features depend on besides the file's bytes (the cache key hashes those).
    key_params = {**params.to_dict(), "channel": audio.channel, "resample": audio.resample}
    min_samples = min_samples_for(params, audio.min_frames)
    results: list[_Item | AudioError | None] = [None] * len(clips)

    keys: list[str | None] = [None] * len(clips)
    todo = list(range(len(clips)))
    stream = cache is not None and memory_map
    if cache is not None:
        todo = _lookup(clips, cache, key_params, audio.min_frames, results, keys, workers, stream)

    def work(chunk: list[int]) -> list[tuple[int, _Item | AudioError]]:
        """Decode a chunk and compute its log-mels (equal lengths batched) in this worker."""
        done: list[tuple[int, _Item | AudioError]] = []
        by_length: dict[int, list[tuple[int, np.ndarray, int]]] = {}
        for i in chunk:
            try:
                sig, native_sr = load_audio(
                    clips[i].path, sr=params.sr, channel=audio.channel, resample=audio.resample,
                    min_samples=min_samples,
                )
            except AudioError as exc:
                done.append((i, exc))
                continue
            by_length.setdefault(sig.shape[0], []).append((i, sig, native_sr))
        for group in by_length.values():
            feats = logmel(torch.from_numpy(np.stack([g[1] for g in group])), params).numpy()
            for (i, _, native_sr), f in zip(group, feats):
                if not np.isfinite(f).all():
                    done.append((i, AudioError(clips[i].path, "log-mel has NaN/inf values (samples out of range)",
                                                       "non_finite")))
                else:
                    done.append((i, _Item(np.ascontiguousarray(f), native_sr, keys[i])))
        return done

    return _run(clips, todo, work, results, batch_size, workers, progress, desc, raise_on_error, cache=cache,
                stream=stream)


def logmel_of_signal(y: np.ndarray, params: LogMelParams, path: str | os.PathLike = "<signal>") -> np.ndarray:
    """The log-mel ``(n_frames, n_mels)`` float32 of one validated signal ``(n_samples,)`` at
    ``params.sr`` Hz, computed as :func:`extract_logmels` computes a file's (same ops, same
    values); nothing is cached.

    Raises:
        AudioError: the log-mel has NaN/inf values (names ``path``).
    """
    f = logmel(torch.from_numpy(np.stack([np.asarray(y, dtype=np.float32)])), params).numpy()[0]
    if not np.isfinite(f).all():
        raise AudioError(path, "log-mel has NaN/inf values (samples out of range)", "non_finite")
    return np.ascontiguousarray(f)


def _lookup(
    clips: Sequence[Clip], cache: FeatureCache, key_params: dict, min_frames: int, results: list,
    keys: list[str | None], workers: int | None, stream: bool = False, chunk_size: int = 32,
) -> list[int]:
    """Look every clip up in ``cache`` in parallel (hashing each file's bytes releases the GIL):
    fill ``results`` with the hits (with ``stream``, references to the verified entries, their
    arrays dropped) and ``keys`` with the keys of the misses; return the misses' indices. Chunks
    of several clips keep the per-task overhead small next to a hit's cost."""

    def look(chunk: range) -> list[tuple[int, str | None, object]]:
        out = []
        for i in chunk:
            try:
                key = cache.key(clips[i].path, key_params)
            except OSError:
                out.append((i, None, None))  # missing or unreadable: load_audio says which
                continue
            hit = cache.read(key)
            ok = hit is not None and hit.features.shape[0] >= min_frames and hit.sample_rate > 0
            if ok and stream and hit.offset >= 0:
                ref = CacheRef(key, hit.offset, tuple(hit.features.shape), hit.features.dtype.str)
                out.append((i, key, _Item(None, hit.sample_rate, ref=ref)))
            else:
                out.append((i, key, _Item(hit.features, hit.sample_rate) if ok else None))
        return out

    chunks = [range(s, min(s + chunk_size, len(clips))) for s in range(0, len(clips), chunk_size)]
    misses: list[int] = []
    with ThreadPoolExecutor(max_workers=_n_workers(workers)) as pool:
        for done in pool.map(look, chunks):
            for i, key, item in done:
                if item is not None:
                    results[i] = item
                else:
                    keys[i] = key
                    misses.append(i)
    return misses


def _n_workers(workers: int | None) -> int:
    return max(1, workers if workers is not None else (os.cpu_count() or 1))


def extract_waveforms(
    clips: Sequence[Clip],
    sr: int = 16000,
    audio: AudioOptions = AudioOptions(),
    min_samples: int = 1,
    workers: int | None = None,
    progress: bool = False,
    raise_on_error: bool = True,
    desc: str = "audio",
    stream: bool = False,
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
        stream: read and validate every clip, but keep none of the samples: return a
            :class:`~stetho.features.lazy.FeatureList` that decodes a clip again when it is used
            (:class:`~stetho.features.lazy.AudioRef`; the same samples), so the memory needed
            does not grow with the number of clips.
    """
    results: list[_Item | AudioError | None] = [None] * len(clips)

    def work(chunk: list[int]) -> list[tuple[int, _Item | AudioError]]:
        done: list[tuple[int, _Item | AudioError]] = []
        for i in chunk:
            try:
                y, native_sr = load_audio(clips[i].path, sr=sr, channel=audio.channel, resample=audio.resample,
                                          min_samples=min_samples)
            except AudioError as exc:
                done.append((i, exc))
            else:
                ref = AudioRef(clips[i].path, sr, audio.channel, audio.resample, len(y)) if stream else None
                done.append((i, _Item(None if stream else y, native_sr, ref=ref)))
        return done

    return _run(clips, list(range(len(clips))), work, results, 8, workers, progress, desc, raise_on_error,
                stream=stream)


@dataclass(frozen=True)
class _Item:
    """One clip's result: its features (``None`` when ``ref`` says where they are on disk), native
    sample rate, and the cache key to store them under (``None``: already cached, or no cache)."""

    features: np.ndarray | None
    sample_rate: int
    key: str | None = None
    ref: CacheRef | AudioRef | None = None


def _run(
    clips: Sequence[Clip], todo: list[int], work, results: list, batch_size: int, workers: int | None,
    progress: bool, desc: str, raise_on_error: bool, cache: FeatureCache | None = None, stream: bool = False,
) -> Extracted:
    """Run ``work`` over chunks of ``todo`` in threads, fill ``results``, gather an :class:`Extracted`
    (with ``stream``, its features a :class:`FeatureList` of the on-disk references)."""
    chunks = [todo[s : s + batch_size] for s in range(0, len(todo), max(1, batch_size))]
    workers = _n_workers(workers)
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
                    _collect(pending.popleft(), results, cache, bar, stream)
            while pending:
                _collect(pending.popleft(), results, cache, bar, stream)
    finally:
        torch.set_num_threads(threads_before)
    bar.close()

    out = Extracted()
    for clip, r in zip(clips, results):
        if isinstance(r, AudioError):
            out.problems.append(r)
        else:
            out.clips.append(clip)
            out.features.append(r.features if r.ref is None else r.ref)
            out.sample_rates.append(r.sample_rate)
    if stream:
        out.features = FeatureList(out.features, cache)
    if out.problems and raise_on_error:
        raise AudioValidationError(out.problems)
    return out


def _collect(future: Future, results: list, cache: FeatureCache | None, bar: tqdm, stream: bool = False) -> None:
    """Store one finished chunk (new features written to the cache from this thread only; a cache
    that cannot be written warns once and is skipped; with ``stream``, a written entry replaces
    the array by a reference to it) and advance the bar."""
    done = future.result()
    for i, r in done:
        results[i] = r
        if cache is not None and isinstance(r, _Item) and r.key is not None:
            offset = cache.write(r.key, r.features, r.sample_rate)
            if stream and offset is not None:
                ref = CacheRef(r.key, offset, tuple(r.features.shape), r.features.dtype.str)
                results[i] = _Item(None, r.sample_rate, ref=ref)
    bar.update(len(done))
