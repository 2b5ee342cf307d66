"""Features: log-mel spectrograms, frame stacking, on-disk cache, batched extraction."""

from stetho.features.cache import CACHE_VERSION, CachedFeatures, FeatureCache, default_cache_dir, file_digest
from stetho.features.extract import (
    AudioOptions, Extracted, extract_logmels, extract_waveforms, logmel_of_signal, min_samples_for,
)
from stetho.features.lazy import AudioRef, CacheRef, FeatureList, on_disk, take
from stetho.features.logmel import EPS, LogMelParams, logmel, mel_filterbank, stack_frames

__all__ = [
    "CACHE_VERSION", "EPS", "AudioOptions", "AudioRef", "CacheRef", "CachedFeatures", "Extracted", "FeatureCache",
    "FeatureList", "LogMelParams", "on_disk", "take",
    "default_cache_dir", "file_digest",
    "extract_logmels", "extract_waveforms", "logmel", "logmel_of_signal", "mel_filterbank", "min_samples_for",
    "stack_frames",
]
