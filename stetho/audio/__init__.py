"""Audio input/output: reading, validation, resampling, writing."""

from stetho.audio.io import (
    MAX_FLOAT_PEAK,
    MIN_SAMPLE_RATE,
    RESAMPLER,
    audio_extensions,
    audio_info,
    check_channel,
    check_signal,
    decode_audio,
    load_audio,
    read_audio,
    resample_audio,
    write_wav,
)

__all__ = [
    "MAX_FLOAT_PEAK", "MIN_SAMPLE_RATE", "RESAMPLER", "audio_extensions", "audio_info", "check_channel", "check_signal",
    "decode_audio", "load_audio", "read_audio", "resample_audio", "write_wav",
]
