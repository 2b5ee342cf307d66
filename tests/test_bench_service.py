"""bench/run.py's scoring-service section: the distinct uploads it posts and how it counts lost
verdicts (the section itself runs a real server for over 30 s: `python bench/run.py --quick
--only service`, not part of the suite)."""

from __future__ import annotations

import hashlib
import io
import importlib.util
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from stetho.audio import decode_audio

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run.py"


def _bench():
    spec = importlib.util.spec_from_file_location("stetho_bench_run", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_distinct_wavs_differ_in_bytes_only_in_their_first_four_samples(tmp_path):
    bench = _bench()
    rng = np.random.default_rng(0)
    y = rng.integers(-3000, 3000, 16000, dtype=np.int16)
    sf.write(tmp_path / "clip.wav", y, 16000, subtype="PCM_16")
    wavs = bench.DistinctWavs(tmp_path / "clip.wav")
    uploads = [wavs.next() for _ in range(3)]
    assert len({hashlib.sha256(u).hexdigest() for u in uploads}) == 3  # never answered as a duplicate
    for i, data in enumerate(uploads):
        z, sr = sf.read(io.BytesIO(data), dtype="int16")
        assert sr == 16000 and z.shape == y.shape
        assert np.array_equal(z[4:], y[4:])
        assert np.array_equal(z[:4], np.frombuffer(np.int64(i).tobytes(), dtype="<i2"))
        decoded, native_sr = decode_audio(data, "upload", sr=16000, resample=False, min_samples=1024)  # what the service decodes
        assert native_sr == 16000 and decoded.shape == (16000,)


def test_audit_verdicts_counts_lost_unannounced_and_incomplete_recordings():
    bench = _bench()
    # recording id -> (verdict rows stored, score modes of its model)
    stored = {1: (4, 4), 2: (4, 4), 3: (1, 2), 9: (2, 2)}
    # 200s announced 1, 2, 3, 5 (not stored) and 2 again (two answers, one recording)
    out = bench.audit_verdicts([1, 2, 3, 5, 2], stored)
    assert out == {"stored_in_db": 4, "lost": 2, "stored_without_200": 1, "recordings_missing_a_mode": 1}
    assert bench.audit_verdicts([1, 2], {1: (4, 4), 2: (4, 4)}) == {
        "stored_in_db": 2, "lost": 0, "stored_without_200": 0, "recordings_missing_a_mode": 0}
