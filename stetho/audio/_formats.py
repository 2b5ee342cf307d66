"""The audio file extensions libsndfile (through soundfile) can read on this machine."""

from __future__ import annotations

import soundfile as sf

#: libsndfile format name -> the extensions its files carry (formats without a usual extension, such
#: as header-less RAW, and .mat / .sf, which mostly hold other data, are not scanned for).
_EXTENSIONS_OF = {
    "WAV": (".wav",), "WAVEX": (".wav",), "RF64": (".rf64", ".wav"), "W64": (".w64",), "FLAC": (".flac",),
    "OGG": (".ogg", ".oga", ".opus"), "MP3": (".mp3",), "AIFF": (".aif", ".aiff", ".aifc"), "AU": (".au", ".snd"),
    "CAF": (".caf",), "NIST": (".nist", ".sph"), "VOC": (".voc",), "PAF": (".paf",),
    "SVX": (".svx", ".8svx", ".16svx"), "SD2": (".sd2",), "AVR": (".avr",), "HTK": (".htk",), "PVF": (".pvf",),
    "MPC2K": (".mpc2k",), "SDS": (".sds",), "WVE": (".wve",), "XI": (".xi",),
}

EXTENSIONS: frozenset[str] = frozenset(
    ext for fmt in sf.available_formats() for ext in _EXTENSIONS_OF.get(fmt, ())
)
