"""Audio input/output: reading, validation, resampling, writing."""

from stetho.audio.io import RESAMPLER, audio_info, read_audio, resample_audio, write_wav

__all__ = ["RESAMPLER", "audio_info", "read_audio", "resample_audio", "write_wav"]
