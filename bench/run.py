"""stetho benchmarks: ``make bench`` (or ``python bench/run.py [--quick] [--out PATH]``).

Prints a table ``benchmark | figure | value | target | PASS/MISS`` and writes every figure, with
the machine description and the raw measurements, to ``bench/results.json`` (or ``--out``). It
never fails on a missed target: the targets are reported, not asserted. All data is generated in
a temporary folder that is deleted at the end. Timings on a shared machine are noisy, and
multi-threaded ones (torch/OpenMP, OpenBLAS) collapse when other processes compete for the cores:
every benchmark reports how much CPU *other* processes used meanwhile (from ``/proc/stat``), and
the load average is recorded; compare runs only at similar contention.

0. **Toy data**: ``stetho toy`` speed, every machine type, 10 s clips written as WAV (clips/s;
   target 1,000 clips in under a minute).

1. **Feature extraction** (decode + log-mel). ``N`` ten-second 16 kHz int16 mono WAV clips (the
   toy dataset when :mod:`stetho.synth` works, else noise + tones). Measured, best of 3
   after one warm-up call:

   * stetho's ``extract_logmels(clips, LogMelParams(), AudioOptions(), cache=None)`` with its
     defaults (one clip per work unit, one worker thread per core, each decoding and computing the
     log-mels of its chunk with torch single-threaded; clips/s; targets >= 1,000 clips/s and
     >= 2x librosa);
   * a plain per-file librosa pipeline in the same run (``librosa.load`` ->
     ``librosa.feature.melspectrogram`` -> ``10 log10(max(mel, eps))``), sequential, as installed
     and with NumPy's BLAS limited to 1 thread (threadpoolctl); the ratio uses the faster one;
   * the cache-hit path (second call with a :class:`FeatureCache` in the temp folder);
   * a sweep over ``batch_size`` x ``workers`` (repeats interleaved,
     so slow drifts in the machine load hit every configuration alike), the best one reported,
     with the process CPU time per clip (robust to contention; spinning thread pools inflate it);
   * stetho's defaults in fresh subprocesses with and without ``OMP_WAIT_POLICY=PASSIVE``.

2. **AE training** of one machine type: ``M`` clips (1,000 in a full run: 309,000 vectors of 640)
   given as synthetic float32 log-mels ``(313, 128)``, ``AEDetector(epochs=E, device="cpu")
   .fit(clips, features)``, in a fresh subprocess so its peak RSS (``VmHWM``, cross-checked with
   ``getrusage(RUSAGE_CHILDREN)``) is not polluted by benchmark 1. Before training, a short probe
   times ``AEDetector``'s own training step (:func:`ae_training_step`) at 1 and 2 torch threads;
   ``--train-threads auto`` trains with the faster one. Reports training vectors/s from the epoch timings (one epoch = the training steps
   plus the validation pass), the fit total (adds precise-BN and the scoring passes) and the
   peak RSS (target <= 1.5 GB) beside the 1.58 GB the original's float64 stacked vectors take.

3. **Scoring latency** for one 10 s clip: an AE trained briefly on real log-mels is saved and
   loaded with ``Detector.load``; ``det.score_all([clip])`` is timed from the WAV file (features
   computed by the detector) and with precomputed log-mels; median of 50 runs after warm-up (fewer
   if a 10 s budget runs out), at torch's default threads and at 1 thread (target < 20 ms).

4. **BiGAN training** (``--model bigan``), each in a fresh subprocess on synthetic log-mels
   ``(313, 128)`` (32 patches of 64x128 per clip), one epoch: the CPU recipe's narrow networks
   (``recipes/dcase2023_bigan_cpu.yaml``, 100 clips) and the paper's 115 M-parameter ones
   (4 clips). Reports training patches/s from the epoch timing (each step trains D, then G+E, then
   updates the weight average) and the peak RSS.

5. **Threads**: ``AEDetector``'s own training step (:func:`ae_training_step`: its ``AENet``,
   batch 256 of 640-dim vectors, Adam) at 1, 2, ... torch threads (and the number ``--threads auto`` picks on this machine), in
   a fresh subprocess per load level: idle, one core kept busy, every core kept busy (busy-loop
   Python processes this script starts and stops). Thread counts alternate within rounds; the
   median ms/step per count is reported, and for 2+ threads also with ``OMP_WAIT_POLICY=PASSIVE``
   (idle OpenMP threads sleep instead of spinning). This is the measurement behind
   :func:`stetho.models.training.default_threads`.

7. **Scoring service** (issue 19): a toy dataset of fan and valve (10 s clips), a ``stats`` run
   for fan and an ``ae`` run (``stetho train``'s default model, a few epochs) for valve, served
   together by the real ``stetho serve`` (this checkout, a subprocess on 127.0.0.1, a SQLite file,
   an API token file); start-up is timed to the first ``/healthz`` 200. Every upload is distinct
   bytes (:class:`DistinctWavs`), so none is answered as a duplicate.

   * latency: ``POST /v1/score`` (multipart: the 10 s 16 kHz WAV, ``asset``, ``machine_type``)
     sequentially over one keep-alive httpx connection, per machine type, after a warm-up;
     median and p95 (target: median < 50 ms), beside the same work in-process
     (``Scorer.score``, ``AudioArchive.put``, ``store_verdict`` into a SQLite file, the alert
     rules) and the server's CPU time per request (``/proc``);
   * load: ``service_clients`` (20) threads with a keep-alive client each, posting to 8 assets
     (several clients per asset) for ``service_load_s`` (60 s; at most ``service_max_requests``
     uploads, 30 s per request); throughput, latency of the 200s, errors (any non-200,
     transport error or ``duplicate`` answer; target 0). Then the database is read (``GET
     /v1/assets`` and, after the server stopped, the SQLite file): "lost" counts the 200s whose
     recording is not stored with a verdict per score mode (target 0), and recordings stored
     without a 200 are counted too, as are the uploads in the default audio archive (every
     recording's). The server is stopped and the files deleted in any case.

   The clients run on the same 2 cores as the server, so the load figures are what one machine
   does when it is both; the latency figures are not (one client waiting on each answer).

8. **Start-up** (issue 23): cold processes, each fresh (median and min of ``startup_repeats``, 5):
   ``stetho --help`` (target < 0.5 s), ``python -c "import stetho"``, and ``stetho score RUN
   file.wav`` of one 1 s toy clip with a ``stats`` run and with a 1-epoch ``ae`` run (trained here on
   a tiny toy fan set). For each ``score`` one more process runs under ``python -X importtime``:
   the import seconds of the heavy packages (torch, scipy, sklearn, librosa + numba), i.e. where a
   cold start goes. Both runs load a torch model file and compute the log-mel with torch, so
   ``import torch`` is part of every ``score``; ``--help`` and ``import stetho`` load none of them.
   Each command's CPU time (user + system) is reported beside its wall time: contention inflates
   the latter far more.

9. **Export** (issue 21, section ``export``): an ``ae`` run (toy fan, 10 s clips, 1-3 epochs), a
   ``stats`` run and a ``discriminative`` run (the CPU recipe's network, 1 epoch), each exported
   with ``stetho.export.export_run`` to ONNX and TorchScript (file sizes, export times). Latency
   of one 10 s clip at 1 thread, median of interleaved runs: torch eager through ``det.score_all``
   (what ``stetho score`` runs), the export module in eager torch, TorchScript, onnxruntime with
   the graph front end (waveform graph, STFT inside) and with the numpy front end (numpy
   spectrum + spectrum graph; target: <= torch eager), the numpy spectrum alone, and the edge
   scorer from the WAV file with each front end; the largest relative score difference from
   ``det.score_all`` (target <= 1e-4). Then a fresh venv (``python -m venv``) gets
   only numpy, soundfile and onnxruntime from the local package index (``--index-url
   file:///opt/pypi/simple``: no network): install time, size, that torch does not import there,
   and ``python stetho_edge.py DIR clip.wav`` (the ae export) in a cold process, whose scores must
   equal the in-process edge scorer's.

10. **Ray engine** (issue 22, section ``ray``): ``stetho run --engine ray`` of a toy comparison of all
   7 machine types × 2 seeds (``ae``, short clips, a few epochs; 14 training tasks and 2 test tasks,
   1 CPU each) on a fresh local Ray instance of 1 CPU and of 2 CPUs (each warmed up: its workers have
   imported stetho; its own feature cache): the speed-up (target >= 1.7x on 2 cores). Also the
   overhead of Ray for one tiny task (a no-op's round trip, median after warm-up) and for one tiny
   run (one machine type, ``stats``) through Ray against in-process.

11. **Full-size data** (issue 22, section ``fullsize``; :mod:`bench.fullsize`, also runnable alone):
   a DCASE2023-sized toy set (7 machine types x 1,000 training clips of 10 s, 7 x 200 test clips;
   ``--quick``: 7 x 100 and 7 x 20) is written, then ``stetho train`` + ``stetho test`` of the AE and
   of the discriminative CPU recipe (1 epoch each: the memory does not depend on the epochs) run as
   fresh processes: peak RSS from ``os.wait4`` (target < 3 GB; the official baseline holds 11 GB of
   float64 frame vectors for this set), its anonymous and file-backed peaks, and wall times. The
   slowest section by far (on 2 busy cores: 21 minutes to write the data, 18 for the AE, 24 for the
   discriminative model; each process killed after 90 minutes); ``--quick`` 12 minutes.

Sizes are in :data:`FULL` / :data:`QUICK`; a full run takes about 5-6 minutes on 2 cores (the
service's load test alone 60 s), ``--quick`` 60-90 s. ``--only threads`` (or any section names)
runs some sections only, e.g. ``--only service``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmark this checkout, also without an editable install
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from stetho.datasets.clip import SOURCE, TARGET, Clip  # noqa: E402

GB = 1e9  # decimal gigabytes, as in the "1.58 GB" of the original's float64 vectors
SR = 16000
DURATION = 10.0
LOGMEL_SHAPE = (313, 128)  # 10 s at 16 kHz, hop 512, 128 mels
N_FRAMES = 5  # stacked frames per AE vector
VECTORS_PER_CLIP = LOGMEL_SHAPE[0] - N_FRAMES + 1  # 309
DEFAULT_TORCH_THREADS = torch.get_num_threads()


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run."""

    extract_clips: int
    repeats: int
    toy_clips: int
    batch_sizes: tuple[int, ...]
    workers: tuple[int, ...]
    train_clips: int
    train_epochs: int
    probe_steps: int
    child_rounds: int
    latency_runs: int
    latency_budget_s: float
    latency_fit_clips: int
    disc_clips: int = 200
    disc_epochs: int = 2
    bigan_clips: int = 100  # CPU recipe's networks: 3,200 patches
    bigan_paper_clips: int = 4  # the paper's 115 M-parameter networks: 128 patches
    thread_rounds: int = 5  # rounds of the threads benchmark (each: every thread count in turn)
    thread_round_s: float = 1.0  # time budget of one thread count in one round
    service_train_clips: int = 20  # toy training clips per machine type of the served runs
    service_ae_epochs: int = 3  # epochs of the served AE (valve; fan is served by `stats`)
    service_runs: int = 200  # sequential uploads per machine type, after service_warmup
    service_warmup: int = 10
    service_clients: int = 20  # concurrent clients of the load test
    service_load_s: float = 60.0  # how long the clients keep posting
    service_max_requests: int = 30_000  # hard cap on the load test's uploads
    service_assets: int = 8  # assets the load test posts to (half fan, half valve)


FULL = Sizes(
    extract_clips=200, repeats=3, toy_clips=350, batch_sizes=(1, 4, 16), workers=(1, 2, 4),
    train_clips=1000, train_epochs=1, probe_steps=30, child_rounds=2,
    latency_runs=50, latency_budget_s=10.0, latency_fit_clips=20,
)
QUICK = Sizes(
    extract_clips=40, repeats=3, toy_clips=35, batch_sizes=(1, 8), workers=(2,),
    train_clips=100, train_epochs=1, probe_steps=10, child_rounds=1,
    latency_runs=20, latency_budget_s=3.0, latency_fit_clips=10, disc_clips=40, disc_epochs=1,
    bigan_clips=20, bigan_paper_clips=2, thread_rounds=3, thread_round_s=0.5,
    service_train_clips=10, service_ae_epochs=1, service_runs=50, service_warmup=5, service_load_s=10.0,
    service_max_requests=5_000,
)


@dataclass
class Row:
    """One line of the results table."""

    benchmark: str
    figure: str
    value: float | None
    unit: str
    target: str = ""
    status: str = ""  # PASS / MISS, or "" for information only

    def shown(self) -> str:
        if self.value is None:
            return "n/a"
        v = self.value
        text = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        return f"{text} {self.unit}".strip()


def verdict(ok: bool | None) -> str:
    return "" if ok is None else "PASS" if ok else "MISS"


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class CpuMeter:
    """CPU time used by *other* processes while a benchmark runs (Linux ``/proc/stat``).

    System-wide busy time minus this process's and its children's CPU time, divided by the wall
    time: 0.0 means the machine was ours alone, 1.0 means other processes kept one CPU busy on
    average. More telling than the load average, which lags and counts our own threads.
    """

    def __init__(self) -> None:
        self.start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as fh:
                v = [int(x) for x in fh.readline().split()[1:9]]  # user .. steal
        except (OSError, ValueError):
            return None
        busy = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait
        t = os.times()
        return busy, t.user + t.system + t.children_user + t.children_system, time.monotonic()

    def other_cpus(self) -> float | None:
        end = self._snapshot()
        if self.start is None or end is None or end[2] <= self.start[2]:
            return None
        busy, own, wall = (e - s for e, s in zip(end, self.start))
        return round(max(0.0, busy - own) / wall, 2)


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Smallest wall time of ``repeats`` calls of ``fn`` (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def process_cpu() -> float:
    """CPU seconds used so far by this process, all threads (user + system)."""
    return time.process_time()


def proc_status_kb(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in kB (0 if unavailable)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_info() -> dict:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": affinity,
        "torch": torch.__version__,
        "torch_threads": DEFAULT_TORCH_THREADS,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "omp_wait_policy_env": os.environ.get("OMP_WAIT_POLICY"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "numpy": np.__version__,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run_child(kind: str, args: dict, env: dict[str, str | None] | None = None) -> tuple[dict, int]:
    """Run this script as ``--child kind``; return (its JSON answer, parent's RUSAGE_CHILDREN kB).

    ``env`` entries are set in the child's environment (``None`` removes the variable).
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--child-args", json.dumps(args)]
    child_env = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = value
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child '{kind}' failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    return answer, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


def bench_toy(sizes: Sizes, tmp: Path) -> tuple[list[Row], dict]:
    """Toy dataset generation, every machine type, 10 s clips (target: 1,000 clips in < 60 s)."""
    from stetho.synth import MACHINES, make_toy_dataset

    machines = sorted(MACHINES)
    per = max(1, sizes.toy_clips // (len(machines) * 5))  # train, 4 test groups of `per`
    t0 = time.perf_counter()
    clips = make_toy_dataset(tmp / "toy-bench", machines=machines, train_clips=per, target_train_clips=0,
                             test_clips=per, duration=DURATION, seed=0, progress=False)
    seconds = time.perf_counter() - t0
    shutil.rmtree(tmp / "toy-bench", ignore_errors=True)
    rate = len(clips) / seconds
    rows = [Row("toy", f"stetho toy: {len(clips)} clips of 10 s, {len(machines)} machine types, written",
                rate, "clips/s", ">= 16.7 (1,000/min)", verdict(rate >= 1000 / 60))]
    return rows, {"clips": len(clips), "machines": machines, "clips_per_s": rate}


def make_clips(folder: Path, n: int) -> tuple[list[Clip], str]:
    """``n`` ten-second 16 kHz int16 mono WAVs: the toy dataset's fan, else noise + tones."""
    try:
        from stetho.synth import make_toy_dataset

        clips = make_toy_dataset(
            folder / "toy", machines=["fan"], train_clips=n, target_train_clips=0, test_clips=0,
            duration=DURATION, seed=0, sr=SR, progress=False,
        )
        if len(clips) == n:
            return list(clips), "stetho.synth (fan, train)"
    except Exception as exc:  # noqa: BLE001 - any failure: fall back to our own clips
        print(f"  toy dataset unavailable ({type(exc).__name__}: {exc}); writing noise + tones")
    return noise_tone_clips(folder / "noise", n), "noise + tones (soundfile, int16)"


def noise_tone_clips(folder: Path, n: int) -> list[Clip]:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(DURATION * SR)) / SR
    clips = []
    for i in range(n):
        f0 = rng.uniform(80, 400)
        y = 0.05 * rng.standard_normal(t.size)
        for k in range(1, 6):
            y += 0.1 / k * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
        path = folder / f"section_00_source_train_normal_{i:04d}.wav"
        sf.write(path, np.round(np.clip(y, -1, 1) * 32767).astype(np.int16), SR, subtype="PCM_16")
        clips.append(Clip(path, "bench", "00", "train", SOURCE, 0))
    return clips


def synth_logmels(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` plausible float32 log-mels ``(313, 128)`` in dB: spectral tilt, tonal bands, a slow
    modulation of the tones, per-clip level and frame noise (cheap, no audio needed)."""
    rng = np.random.default_rng(seed)
    frames, n_mels = LOGMEL_SHAPE
    tones = np.zeros(n_mels, np.float32)
    tones[rng.choice(n_mels, 6, replace=False)] = 1.0
    base = (-25.0 - 0.25 * np.arange(n_mels) + 12.0 * tones).astype(np.float32)
    t = np.arange(frames, dtype=np.float32)[:, None]
    out = []
    for _ in range(n):
        lm = rng.standard_normal((frames, n_mels), dtype=np.float32)
        lm *= 4.0
        lm += base
        lm += np.float32(rng.normal(0.0, 2.0))
        lm += (3.0 * np.sin(2 * np.pi * t / rng.uniform(20, 60) + rng.uniform(0, 6.3))).astype(np.float32) * tones
        out.append(lm)
    return out


# ------------------------------------------------------------------------------------------------
# 1. Feature extraction
# ------------------------------------------------------------------------------------------------


def librosa_logmel(path: Path) -> np.ndarray:
    """The plain per-file pipeline stetho is compared with (frequency-major, as librosa gives)."""
    import librosa

    y, sr = librosa.load(path, sr=None, mono=True)
    mel = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=1024, hop_length=512, n_mels=128, power=2.0)
    return 10.0 * np.log10(np.maximum(mel, sys.float_info.epsilon))


def librosa_single_blas_thread(clips: Sequence[Clip]) -> Callable[[], object] | None:
    """The librosa pipeline with NumPy's BLAS limited to one thread (``None`` without
    threadpoolctl): librosa's mel projection is a BLAS matmul whose spinning thread pool collapses
    when other processes load the cores, so this is the stronger baseline on a busy machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None

    def run():
        with threadpool_limits(1, user_api="blas"):
            return [librosa_logmel(c.path) for c in clips]

    return run


def bench_extraction(clips: list[Clip], sizes: Sizes, tmp: Path) -> tuple[list[Row], dict]:
    from stetho.features import AudioOptions, FeatureCache, LogMelParams, extract_logmels

    n, reps = len(clips), sizes.repeats
    info: dict = {"clips": n, "repeats": reps, "load_start": load()}

    def stetho_default():
        return extract_logmels(clips, LogMelParams(), AudioOptions(), cache=None)

    # Warm-up: imports, mel filterbank, FFT plans, thread pools.
    ref = extract_logmels(clips[:2], LogMelParams(), AudioOptions(), cache=None).features
    lib_ref = librosa_logmel(clips[0].path)
    info["max_abs_diff_vs_librosa_db"] = float(np.abs(ref[0] - lib_ref.T).max())

    # Every variant runs once per round, rounds repeated ``reps`` times and the best time kept:
    # slow drifts of the machine load then hit all variants alike.
    def timed(fn: Callable[[], object], threads: int = DEFAULT_TORCH_THREADS) -> Callable[[], object]:
        def run():
            torch.set_num_threads(threads)
            try:
                return fn()
            finally:
                torch.set_num_threads(DEFAULT_TORCH_THREADS)
        return run

    configs = [(bs, w) for bs in sizes.batch_sizes for w in sizes.workers]
    variants: dict[object, Callable[[], object]] = {
        "stetho": timed(stetho_default),
        "librosa": timed(lambda: [librosa_logmel(c.path) for c in clips]),
    }
    lib1 = librosa_single_blas_thread(clips)
    if lib1 is not None:
        variants["librosa_blas1"] = timed(lib1)
    for bs, w in configs:
        variants[(bs, w)] = timed(
            lambda bs=bs, w=w: extract_logmels(clips, LogMelParams(), AudioOptions(), cache=None, batch_size=bs, workers=w)
        )
    best = {k: float("inf") for k in variants}
    cpu = {}  # process CPU seconds (all threads) of the best run: robust to contention, shows spinning
    for _ in range(reps):
        for key, fn in variants.items():
            c0, t0 = process_cpu(), time.perf_counter()
            fn()
            wall = time.perf_counter() - t0
            if wall < best[key]:
                best[key], cpu[key] = wall, process_cpu() - c0
    info["cpu_ms_per_clip"] = {
        str(k) if not isinstance(k, tuple) else "bs%d_workers%d" % k: round(cpu[k] / n * 1e3, 2)
        for k in variants
    }
    stetho_cps = n / best["stetho"]
    librosa_default_cps = n / best["librosa"]
    librosa_blas1_cps = n / best["librosa_blas1"] if lib1 is not None else None
    librosa_cps = max(librosa_default_cps, librosa_blas1_cps or 0.0)  # the stronger baseline

    cache = FeatureCache(tmp / "cache")
    t0 = time.perf_counter()
    extract_logmels(clips, LogMelParams(), AudioOptions(), cache=cache)
    cold = time.perf_counter() - t0
    t_hit = best_time(lambda: extract_logmels(clips, LogMelParams(), AudioOptions(), cache=cache), reps)
    info["cache_hits"] = cache.hits

    sweep = [
        {"batch_size": bs, "workers": w, "clips_per_s": round(n / best[(bs, w)], 1),
         "cpu_ms_per_clip": round(cpu[(bs, w)] / n * 1e3, 2), "cores_used": round(cpu[(bs, w)] / best[(bs, w)], 2)}
        for bs, w in configs
    ]
    info["sweep"] = sorted(sweep, key=lambda r: -r["clips_per_s"])
    top = info["sweep"][0]
    default_cfg = next(
        (r for r in sweep if (r["batch_size"], r["workers"]) == (1, os.cpu_count())), None
    )

    # stetho's defaults in fresh processes, with the default OpenMP wait policy and with PASSIVE
    # (the policy is read once, when the OpenMP runtime starts); alternating rounds, best kept.
    child_args = {"paths": [str(c.path) for c in clips], "repeats": reps}
    omp = {"default": 0.0, "PASSIVE": 0.0}
    for _ in range(sizes.child_rounds):
        for policy in omp:
            answer, _ = run_child("extract", child_args, {"OMP_WAIT_POLICY": None if policy == "default" else policy})
            omp[policy] = max(omp[policy], answer["clips_per_s"])
    info["subprocess_default_threads"] = omp
    info.update(
        stetho_clips_per_s=stetho_cps, librosa_clips_per_s=librosa_default_cps,
        librosa_blas1_clips_per_s=librosa_blas1_cps, cache_hit_clips_per_s=n / t_hit,
        cache_cold_clips_per_s=n / cold, best=top, default_config=default_cfg,
        load_end=load(),
    )

    ratio = stetho_cps / librosa_cps
    b = "features"
    rows = [
        Row(b, f"stetho extract_logmels, defaults (bs 1, {os.cpu_count()} workers, 1 torch thread each)",
            stetho_cps, "clips/s", ">= 1,000", verdict(stetho_cps >= 1000)),
        Row(b, "librosa per-file pipeline (sequential), BLAS threads as installed", librosa_default_cps, "clips/s"),
        Row(b, "librosa per-file pipeline (sequential), BLAS limited to 1 thread", librosa_blas1_cps, "clips/s"),
        Row(b, "stetho defaults / faster librosa variant", ratio, "x", ">= 2x", verdict(ratio >= 2)),
        Row(b, "cache-hit path (2nd call, FeatureCache)", n / t_hit, "clips/s", ">= 1,000", verdict(n / t_hit >= 1000)),
        Row(b, "cache cold path (compute + write)", n / cold, "clips/s"),
        Row(b, f"best sweep config: bs {top['batch_size']}, {top['workers']} workers", top["clips_per_s"], "clips/s", ">= 1,000",
            verdict(top["clips_per_s"] >= 1000)),
        Row(b, "best sweep config / faster librosa variant", top["clips_per_s"] / librosa_cps, "x", ">= 2x",
            verdict(top["clips_per_s"] / librosa_cps >= 2)),
        Row(b, "defaults, fresh process, OMP wait policy default", omp["default"], "clips/s"),
        Row(b, "defaults, fresh process, OMP_WAIT_POLICY=PASSIVE", omp["PASSIVE"], "clips/s"),
    ]
    return rows, info


def child_extract(args: dict) -> dict:
    from stetho.features import AudioOptions, LogMelParams, extract_logmels

    clips = [Clip(Path(p), "bench", "00", "train", SOURCE, 0) for p in args["paths"]]
    extract_logmels(clips[:2], LogMelParams(), AudioOptions(), cache=None)
    t = best_time(lambda: extract_logmels(clips, LogMelParams(), AudioOptions(), cache=None), args["repeats"])
    return {"clips_per_s": len(clips) / t, "torch_threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------------
# 2. AE training (runs in a child process)
# ------------------------------------------------------------------------------------------------


def bench_training(sizes: Sizes, train_threads: str) -> tuple[list[Row], dict]:
    load_start = load()
    args = {"clips": sizes.train_clips, "epochs": sizes.train_epochs, "probe_steps": sizes.probe_steps,
            "threads": train_threads}
    res, rusage_kb = run_child("train", args)
    res.update(load_start=load_start, load_end=load(), parent_rusage_children_maxrss_kb=rusage_kb)
    vectors = sizes.train_clips * VECTORS_PER_CLIP
    original_gb = vectors * N_FRAMES * LOGMEL_SHAPE[1] * 8 / GB
    peak_gb = res["vmhwm_kb"] * 1024 / GB
    b = "training"
    probe = res["probe_ms_per_step"]
    rows = [
        Row(b, f"train vectors/s ({res['train_vectors']:,} vectors/epoch, torch threads {res['threads']}"
               f"{', faster in probe' if train_threads == 'auto' else ''})",
            res["train_vectors_per_s"], "vec/s"),
        Row(b, f"epoch time (training + validation), mean of {len(res['epoch_s'] or [])}",
            statistics.mean(res["epoch_s"]) if res["epoch_s"] else None, "s"),
        Row(b, f"fit total, {sizes.train_clips:,} clips, {sizes.train_epochs} epoch(s)", res["fit_s"], "s"),
        Row(b, "  after the epochs: precise-BN + covariance/threshold passes", res["post_epochs_s"], "s"),
        Row(b, "    of which covariance/threshold passes (_fit_scoring)", res["scoring_setup_s"], "s"),
        Row(b, "probe: optimiser step, 1 torch thread", probe.get("1"), "ms/step"),
        Row(b, "probe: optimiser step, 2 torch threads", probe.get("2"), "ms/step"),
        Row(b, f"peak RSS of the training process ({vectors:,} vectors)", peak_gb, "GB", "<= 1.5 GB",
            verdict(peak_gb <= 1.5)),
        Row(b, "  cross-check: parent's getrusage(RUSAGE_CHILDREN).ru_maxrss (max of all children)",
            rusage_kb * 1024 / GB, "GB"),
        Row(b, "  RSS after imports", res["rss_after_import_kb"] * 1024 / GB, "GB"),
        Row(b, "  RSS with the synthetic log-mels in memory", res["rss_after_features_kb"] * 1024 / GB, "GB"),
        Row(b, "  float32 log-mels alone", res["features_bytes"] / GB, "GB"),
        Row(b, "original's float64 stacked vectors (for comparison)", original_gb, "GB"),
    ]
    return rows, res


def time_epochs(module=None) -> list[float]:
    """Hook stetho's one training loop (``stetho.models.training._loop``, behind ``run_epochs``
    and ``Trainer.run``) so that the start of every run and the end of every epoch are appended
    to the returned list. ``module`` is ignored (kept for older callers)."""
    from stetho.models import training

    marks: list[float] = []
    original = training._loop

    def timed_loop(step, epoch_batches, epochs, evaluate, on_epoch, *a, **kw):
        def hooked(done, history):
            marks.append(time.perf_counter())
            if on_epoch is not None:
                on_epoch(done, history)

        marks.append(time.perf_counter())
        return original(step, epoch_batches, epochs, evaluate, hooked, *a, **kw)

    training._loop = timed_loop
    return marks


def timed_fit(module, det, clips, data) -> tuple[object, float, list[float] | None]:
    """``det.fit(clips, data)`` with the epochs of ``module.run_epochs`` timed: ``(det, fit seconds,
    seconds per epoch or None)``."""
    marks = time_epochs(module)
    t0 = time.perf_counter()
    det.fit(clips, data)
    fit_s = time.perf_counter() - t0
    return det, fit_s, [b - a for a, b in zip(marks[:-1], marks[1:])] if len(marks) > 1 else None


class _Captured(BaseException):
    """Stops a ``fit`` at its first ``Trainer.run`` (a ``BaseException``: no ``except Exception`` eats it)."""


def ae_training_step(feats: list[np.ndarray], **params) -> tuple[Callable[[object], float], Iterator]:
    """The real training step of :class:`AEDetector` and its batches, for timing steps alone.

    ``AEDetector(**params).fit`` runs on ``feats`` up to its ``Trainer.run`` call, which is
    intercepted: the ``step`` closure it was given (zero_grad, forward, MSE, backward, Adam step
    on the detector's own ``AENet`` and optimiser) and an endless iterator over its epoch
    batches (shuffled training vectors, as ``fit`` draws them) are returned, the network built
    and ready. Nothing here re-implements the step, so the timings follow stetho's code."""
    import itertools

    from stetho.models import AEDetector
    from stetho.models.training import Trainer

    captured: dict = {}
    original = Trainer.run

    def intercept(self, step, epoch_batches, epochs, **kw):
        captured.update(step=step, epoch_batches=epoch_batches)
        raise _Captured

    clips = [Clip(Path(f"/nonexistent/section_00_source_train_normal_{i:04d}.wav"), "bench", "00", "train",
                  SOURCE, 0) for i in range(len(feats))]
    Trainer.run = intercept
    try:
        AEDetector(**{"epochs": 1, "device": "cpu", "progress": False, **params}).fit(clips, feats)
    except _Captured:
        pass
    finally:
        Trainer.run = original
    batches = itertools.chain.from_iterable(captured["epoch_batches"](e) for e in itertools.count())
    return captured["step"], batches


def child_train(args: dict) -> dict:
    import stetho.models.ae.detector as ae_detector
    from stetho.models import AEDetector

    rss_import = proc_status_kb("VmRSS")

    # Probe: AEDetector's own training steps at 1 and 2 intra-op threads (alternating rounds,
    # best per setting).
    probe_feats = synth_logmels(40, seed=1)
    step, batches = ae_training_step(probe_feats)

    def steps(k: int, budget_s: float = 2.0) -> float:
        """Mean ms per training step (batch included) over ``k`` steps (fewer if ``budget_s`` runs out)."""
        t = time.perf_counter()
        done = 0
        for _, batch in zip(range(k), batches):
            step(batch)
            done += 1
            if time.perf_counter() - t > budget_s:
                break
        return (time.perf_counter() - t) / done * 1e3

    candidates = [1, 2] if (os.cpu_count() or 1) >= 2 else [1]
    probe: dict[str, float] = {}
    for th in candidates:
        torch.set_num_threads(th)
        steps(3)  # warm-up
    half = max(1, args["probe_steps"] // 2)
    for _ in range(2):
        for th in candidates:
            torch.set_num_threads(th)
            probe[str(th)] = min(probe.get(str(th), float("inf")), steps(half))
    del step, batches, probe_feats
    threads = args["threads"]
    threads = int(min(probe, key=probe.get)) if threads == "auto" else int(threads) or DEFAULT_TORCH_THREADS
    torch.set_num_threads(threads)

    n = args["clips"]
    feats = synth_logmels(n)
    clips = [
        Clip(Path(f"/nonexistent/section_00_{TARGET if i % 100 == 0 else SOURCE}_train_normal_{i:04d}.wav"),
             "bench", "00", "train", TARGET if i % 100 == 0 else SOURCE, 0)
        for i in range(n)
    ]
    rss_features = proc_status_kb("VmRSS")

    marks = time_epochs(ae_detector)  # start and end of every epoch

    det = AEDetector(epochs=args["epochs"], device="cpu", progress=False)
    scoring_setup: list[float] = []  # time of the covariance + threshold passes after training
    if hasattr(det, "_fit_scoring"):
        fit_scoring = det._fit_scoring

        def timed_fit_scoring(*a, **kw):
            t = time.perf_counter()
            try:
                return fit_scoring(*a, **kw)
            finally:
                scoring_setup.append(time.perf_counter() - t)

        det._fit_scoring = timed_fit_scoring
    t0 = time.perf_counter()
    det.fit(clips, feats)
    fit_s = time.perf_counter() - t0

    total_vectors = n * VECTORS_PER_CLIP
    train_vectors = total_vectors - int(round(total_vectors * det.validation_split))
    epoch_s = [b - a for a, b in zip(marks[:-1], marks[1:])] if len(marks) > 1 else None
    return {
        "clips": n, "epochs": args["epochs"], "threads": threads, "probe_ms_per_step": probe,
        "train_vectors": train_vectors, "fit_s": fit_s, "epoch_s": epoch_s,
        "post_epochs_s": (t0 + fit_s - marks[-1]) if epoch_s else None,
        "scoring_setup_s": scoring_setup[0] if scoring_setup else None,
        "train_vectors_per_s": train_vectors / statistics.mean(epoch_s) if epoch_s else None,
        "train_loss": det.history_["train_loss"], "val_loss": det.history_["val_loss"],
        "features_bytes": sum(f.nbytes for f in feats),
        "rss_after_import_kb": rss_import, "rss_after_features_kb": rss_features,
        "vmhwm_kb": proc_status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "ru_maxrss_self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


# ------------------------------------------------------------------------------------------------
# 2b. Discriminative model, CPU recipe
# ------------------------------------------------------------------------------------------------


def bench_discriminative(sizes: Sizes) -> tuple[list[Row], dict]:
    """Training speed and peak memory of recipes/dcase2023_discriminative_cpu.yaml's model."""
    res, _ = run_child("disc", {"clips": sizes.disc_clips, "epochs": sizes.disc_epochs})
    b = "discrim."
    epoch = statistics.mean(res["epoch_s"]) if res["epoch_s"] else None
    rows = [
        Row(b, f"training clips/s (CPU recipe: {res['branches']}, {res['tile_seconds']} s tiles, "
               f"batch {res['batch_size']}, torch threads {res['threads']})",
            res["clips"] / epoch if epoch else None, "clips/s"),
        Row(b, f"epoch time, {res['clips']} clips of 10 s, mean of {len(res['epoch_s'] or [])}", epoch, "s"),
        Row(b, f"{res['recipe_epochs']}-epoch recipe on its toy data (330 train clips), estimated",
            res["recipe_epochs"] * 330 / (res["clips"] / epoch) if epoch else None, "s"),
        Row(b, f"fit total ({res['epochs']} epoch(s) + embeddings + backends)", res["fit_s"], "s"),
        Row(b, "peak RSS of the training process", res["vmhwm_kb"] * 1024 / GB, "GB"),
        Row(b, "  waveforms in memory (int16)", res["wave_bytes"] / GB, "GB"),
    ]
    return rows, res


def child_disc(args: dict) -> dict:
    import yaml

    import stetho.models.discriminative.detector as disc_detector
    from stetho.models.discriminative import DiscriminativeDetector

    params = yaml.safe_load((REPO / "recipes" / "dcase2023_discriminative_cpu.yaml").read_text())["params"]
    n, epochs = args["clips"], args["epochs"]
    recipe_epochs = params["epochs"]
    params.update(epochs=epochs, ensemble_epochs=[epochs], device="cpu", progress=False)
    rng = np.random.default_rng(0)
    t = np.arange(int(SR * DURATION)) / SR
    clips, waves = [], []
    for i in range(n):  # 2 machine types x 3 attributes: tones over noise
        machine, attr = ("a", "b")[i % 2], i % 3
        f0 = (200.0 if machine == "a" else 650.0) * (1 + 0.2 * attr)
        y = 0.2 * np.sin(2 * np.pi * f0 * t + rng.uniform(0, 6.3)) + 0.05 * rng.normal(size=t.size)
        waves.append(y.astype(np.float32))
        domain = TARGET if i % 50 == 0 else SOURCE
        clips.append(Clip(Path(f"/nonexistent/{machine}/{i}.wav"), machine, "00", "train", domain, 0,
                          (("f", str(attr)),)))
    det, fit_s, epoch_s = timed_fit(disc_detector, DiscriminativeDetector(**params), clips, waves)
    return {
        "clips": n, "epochs": epochs, "recipe_epochs": recipe_epochs, "epoch_s": epoch_s, "fit_s": fit_s, "threads": torch.get_num_threads(),
        "branches": "+".join(params["branches"]), "tile_seconds": params["tile_seconds"],
        "batch_size": params["batch_size"], "wave_bytes": 2 * sum(len(w) for w in waves),
        "vmhwm_kb": proc_status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


# ------------------------------------------------------------------------------------------------
# 2c. BiGAN
# ------------------------------------------------------------------------------------------------


def bench_bigan(sizes: Sizes) -> tuple[list[Row], dict]:
    """Training speed and peak memory of BiGAN: the CPU recipe's networks and the paper's."""
    b = "bigan"
    rows, info = [], {}
    for key, clips, what in (("cpu", sizes.bigan_clips, "CPU recipe networks"),
                             ("paper", sizes.bigan_paper_clips, "paper networks")):
        res, _ = run_child("bigan", {"clips": clips, "recipe": key})
        info[key] = res
        epoch = statistics.mean(res["epoch_s"]) if res["epoch_s"] else None
        rows += [
            Row(b, f"training patches/s ({what}: {res['params_m']:.3g} M parameters, batch {res['batch_size']}, "
                   f"torch threads {res['threads']})", res["patches"] / epoch if epoch else None, "patches/s"),
            Row(b, f"  peak RSS of the training process ({res['patches']} patches of 64x128)",
                res["vmhwm_kb"] * 1024 / GB, "GB"),
        ]
    cpu = rows[0].value
    rows.append(Row(b, "CPU recipe's training on its toy data (10 epochs x 3 machines x 22 clips x 8 patches), "
                       "estimated", 10 * 3 * 22 * 8 / cpu if cpu else None, "s"))
    return rows, info


def child_bigan(args: dict) -> dict:
    import yaml

    import stetho.models.bigan.detector as bigan_detector
    from stetho.models.bigan import BiGANDetector

    params = {}
    if args["recipe"] == "cpu":
        params = yaml.safe_load((REPO / "recipes" / "dcase2023_bigan_cpu.yaml").read_text())["params"]
    params.update(epochs=1, device="cpu", progress=False)
    n = args["clips"]
    feats = synth_logmels(n)
    clips = [Clip(Path(f"/nonexistent/a/{i}.wav"), "a", "00", "train", SOURCE, 0) for i in range(n)]
    det, fit_s, epoch_s = timed_fit(bigan_detector, BiGANDetector(**params), clips, feats)
    patches = sum((len(f) - det.patch_frames) // det.patch_hop + 1 for f in feats)
    return {
        "clips": n, "patches": patches, "epoch_s": epoch_s, "fit_s": fit_s, "threads": torch.get_num_threads(),
        "batch_size": det.batch_size, "params_m": sum(p.numel() for p in det.net_.parameters()) / 1e6,
        "vmhwm_kb": proc_status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


# ------------------------------------------------------------------------------------------------
# 5. Threads under load
# ------------------------------------------------------------------------------------------------


BUSY_LOOP = "while True: pass"


def start_busy(n: int) -> list[subprocess.Popen]:
    """``n`` Python processes that keep one core each busy (stopped by :func:`stop_busy`)."""
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL) for _ in range(n)]


def stop_busy(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait()


def thread_counts() -> list[int]:
    """1, 2, stetho's default and torch's default (capped at the usable cores)."""
    from stetho.models.training import available_cores, default_threads

    cores = available_cores()
    return sorted({c for c in (1, 2, default_threads(cores), DEFAULT_TORCH_THREADS) if 1 <= c <= cores})


def bench_threads(sizes: Sizes) -> tuple[list[Row], dict]:
    """``AEDetector``'s training step at each of :func:`thread_counts`, idle and under load."""
    from stetho.models.training import available_cores, default_threads

    cores = available_cores()
    counts = thread_counts()
    levels = sorted({0, 1, cores})
    b = "threads"
    rows: list[Row] = []
    info: dict = {"cores": cores, "default_threads": default_threads(cores), "torch_default": DEFAULT_TORCH_THREADS,
                  "levels": {}}
    for busy in levels:
        procs = start_busy(busy)
        try:
            time.sleep(0.5 if busy else 0)  # let the busy loops start
            meter = CpuMeter()
            res, _ = run_child("threads", {"counts": counts, "rounds": sizes.thread_rounds,
                                           "round_s": sizes.thread_round_s})
            res["other_cpus"] = meter.other_cpus()
            multi = [c for c in counts if c > 1]
            if multi:  # idle OpenMP threads sleep instead of spinning (set before torch starts)
                res["passive"], _ = run_child("threads", {"counts": multi, "rounds": sizes.thread_rounds,
                                                          "round_s": sizes.thread_round_s},
                                              env={"OMP_WAIT_POLICY": "PASSIVE"})
        finally:
            stop_busy(procs)
        info["levels"][str(busy)] = res
        med = res["median_ms"]
        fastest = min(med.values())
        what = "idle" if busy == 0 else f"{busy} core(s) kept busy"
        for c in counts:
            tags = [t for t, on in (("auto", c == info["default_threads"]),
                                    ("torch default", c == DEFAULT_TORCH_THREADS)) if on]
            rows.append(Row(b, f"{what}: optimiser step, {c} thread(s){' (' + ', '.join(tags) + ')' if tags else ''}"
                               f" [{res['min_ms'][str(c)]:.3g}-{res['max_ms'][str(c)]:.3g}]",
                            med[str(c)], "ms/step"))
        for c, ms in (res.get("passive") or {}).get("median_ms", {}).items():
            rows.append(Row(b, f"{what}: optimiser step, {c} thread(s) with OMP_WAIT_POLICY=PASSIVE", ms, "ms/step"))
        auto = med[str(info["default_threads"])]
        rows.append(Row(b, f"{what}: auto ({info['default_threads']} thread(s)) vs the fastest count",
                        auto / fastest, "x", "<= 1.25x", verdict(auto <= 1.25 * fastest)))
        rows.append(Row(b, f"{what}: CPU used by other processes (busy loops included)", res["other_cpus"],
                        f"of {cores} CPUs"))
    return rows, info


def child_threads(args: dict) -> dict:
    # AEDetector's own training step (batch 256 of 640-dim vectors, Adam) on 14 clips' vectors.
    step, batches = ae_training_step(synth_logmels(14, seed=0), batch_size=256)

    def mean_ms(budget_s: float) -> float:
        """Mean ms per step over ``budget_s`` (at least 3 steps)."""
        t, done = time.perf_counter(), 0
        while done < 3 or time.perf_counter() - t < budget_s:
            step(next(batches))
            done += 1
        return (time.perf_counter() - t) / done * 1e3

    counts = args["counts"]
    for c in counts:  # warm-up: thread pools, allocator
        torch.set_num_threads(c)
        mean_ms(0.2)
    ms: dict[str, list[float]] = {str(c): [] for c in counts}
    for r in range(args["rounds"]):
        for c in counts if r % 2 == 0 else counts[::-1]:  # alternate the order: drifts hit every count
            torch.set_num_threads(c)
            ms[str(c)].append(mean_ms(args["round_s"]))
    return {"ms_per_step": ms, "median_ms": {c: statistics.median(v) for c, v in ms.items()},
            "min_ms": {c: min(v) for c, v in ms.items()}, "max_ms": {c: max(v) for c, v in ms.items()},
            "load_average": load()}


# ------------------------------------------------------------------------------------------------
# 3. Scoring latency
# ------------------------------------------------------------------------------------------------


def bench_latency(clips: list[Clip], sizes: Sizes, tmp: Path) -> tuple[list[Row], dict]:
    from stetho.features import AudioOptions, LogMelParams, extract_logmels
    from stetho.models import AEDetector, Detector

    info: dict = {"runs": sizes.latency_runs, "load_start": load()}
    # Setup (not timed): a briefly trained AE, saved and loaded. One torch thread, because a
    # 2-thread pool can be 100x slower per step when other processes compete for the cores.
    torch.set_num_threads(1)
    fit_clips = clips[: sizes.latency_fit_clips]
    feats = extract_logmels(fit_clips, LogMelParams(), AudioOptions(min_frames=N_FRAMES)).features
    AEDetector(epochs=1, device="cpu", progress=False).fit(fit_clips, feats).save(tmp / "ae.pt")
    det = Detector.load(tmp / "ae.pt")
    clip = clips[-1]
    lm = extract_logmels([clip], LogMelParams(), AudioOptions(min_frames=N_FRAMES)).features

    def median_ms(fn: Callable[[], object]) -> dict:
        """Median etc. of ``latency_runs`` calls after 3 warm-ups, stopping early (at least 5
        runs) when ``latency_budget_s`` is spent: a contended 2-thread pool can take 0.5 s a call."""
        for _ in range(3):
            fn()
        times: list[float] = []
        deadline = time.perf_counter() + sizes.latency_budget_s
        while len(times) < sizes.latency_runs and (len(times) < 5 or time.perf_counter() < deadline):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        q = np.percentile(times, [10, 50, 90])
        return {"median_ms": float(q[1]), "p10_ms": float(q[0]), "p90_ms": float(q[2]), "min_ms": min(times),
                "runs": len(times)}

    results = {}
    for th in sorted({DEFAULT_TORCH_THREADS, 1}, reverse=True):
        torch.set_num_threads(th)
        results[th] = {
            "from_file": median_ms(lambda: det.score_all([clip])),
            "precomputed": median_ms(lambda: det.score_all([clip], lm)),
        }
    torch.set_num_threads(DEFAULT_TORCH_THREADS)
    info["by_threads"] = {str(k): v for k, v in results.items()}
    info["load_end"] = load()

    b = "latency"
    rows = []
    for th, r in results.items():
        f, p = r["from_file"], r["precomputed"]
        for what, t in (("1 clip from WAV", f), ("precomputed log-mel", p)):
            rows.append(Row(b, f"score_all, {what}, {th} torch thr (median of {t['runs']}; p90 {t['p90_ms']:.1f})",
                            t["median_ms"], "ms", "< 20 ms", verdict(t["median_ms"] < 20)))
    return rows, info


# ------------------------------------------------------------------------------------------------
# 7. Scoring service
# ------------------------------------------------------------------------------------------------

SERVICE_TOKEN = "bench-token"  # the throw-away service's API token (127.0.0.1 only, deleted at the end)
SERVICE_TARGET_MS = 50.0  # issue 19: one 10 s clip through HTTP, median
SERVICE_MODELS = {"fan": "stats", "valve": "ae"}  # machine type -> the model of the run that serves it


class DistinctWavs:
    """Distinct uploads of one clip: the clip as a canonical 16-bit PCM WAV (stdlib :mod:`wave`:
    header, then the samples), upload ``i`` with ``i`` written over its first 4 samples (8 bytes).

    No two uploads have the same bytes, so each is scored and stored (the service answers bytes it
    already stored for the asset as ``duplicate: true`` without storing them). Thread-safe.
    """

    def __init__(self, path: Path) -> None:
        import io
        import wave

        import soundfile as sf

        y, sr = sf.read(path, dtype="int16")
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sr)
            w.writeframes(y.tobytes())
        self.base = buf.getvalue()
        self.offset = len(self.base) - y.nbytes  # first sample's byte
        self._count = itertools.count()
        self._lock = threading.Lock()

    def next(self) -> bytes:
        with self._lock:
            i = next(self._count)
        data = bytearray(self.base)
        data[self.offset:self.offset + 8] = struct.pack("<q", i)
        return bytes(data)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the OS's pick)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) used so far by process ``pid`` (``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def start_service(runs: Sequence[Path], db_url: str, token_file: Path, log_path: Path,
                  timeout_s: float = 120.0) -> tuple[subprocess.Popen, str, float]:
    """``stetho serve RUNS --db URL --port P --token-file F`` of this checkout as a subprocess on
    127.0.0.1 (output to ``log_path``); returns (process, base URL, seconds until ``/healthz``
    answered 200). Raises RuntimeError, with the log's tail, when it exits or is not up in time."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "stetho.cli", "serve", *map(str, runs), "--db", db_url, "--host", "127.0.0.1",
           "--port", str(port), "--token-file", str(token_file)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    t0 = time.perf_counter()
    with open(log_path, "wb") as log_fh:  # a file, not a pipe: a pipe nobody reads would block the server
        proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = t0 + timeout_s
    while True:
        if proc.poll() is not None or time.perf_counter() > deadline:
            stop_service(proc)
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"stetho serve {'exited' if proc.returncode else 'was not up in time'}:\n{tail}")
        try:
            if httpx.get(url + "/healthz", timeout=2.0).status_code == 200:
                return proc, url, time.perf_counter() - t0
        except httpx.TransportError:
            pass
        time.sleep(0.05)


def stop_service(proc: subprocess.Popen) -> None:
    """SIGTERM (uvicorn shuts down cleanly), SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def post_clip(client: Any, data: bytes, asset: str, machine_type: str) -> tuple[int, float, dict | None]:
    """POST one upload to ``/v1/score`` (multipart); (status, ms, JSON answer or None)."""
    t = time.perf_counter()
    r = client.post("/v1/score", files={"file": ("clip.wav", data, "audio/wav")},
                    data={"asset": asset, "machine_type": machine_type})
    ms = (time.perf_counter() - t) * 1e3
    try:
        body = r.json()
    except ValueError:
        body = None
    return r.status_code, ms, body


def quantiles_ms(times: Sequence[float]) -> dict:
    if not times:
        return {"n": 0}
    q = np.percentile(times, [50, 95, 99])
    return {"n": len(times), "median_ms": float(q[0]), "p95_ms": float(q[1]), "p99_ms": float(q[2]),
            "min_ms": float(min(times)), "max_ms": float(max(times))}


def service_runs(sizes: Sizes, tmp: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """A toy dataset of the machine types of :data:`SERVICE_MODELS` (10 s clips) and one trained
    run per machine type; (machine type -> run folder, machine type -> a test clip)."""
    from stetho import pipeline
    from stetho.synth import make_toy_dataset

    clips = make_toy_dataset(tmp / "data", machines=sorted(SERVICE_MODELS), train_clips=sizes.service_train_clips,
                             target_train_clips=2, test_clips=2, duration=DURATION, seed=0, sr=SR, progress=False)
    runs, test_clip = {}, {}
    for mt, model in SERVICE_MODELS.items():
        params = {"epochs": sizes.service_ae_epochs} if model == "ae" else {}
        runs[mt] = pipeline.train({"data": str(tmp / "data"), "out": str(tmp / f"run-{mt}"), "model": model,
                                   "machines": [mt], "params": params, "progress": False, "threads": 1})
        test_clip[mt] = next(c.path for c in clips if c.machine == mt and c.split == "test" and c.label == 0)
    return runs, test_clip


def bench_service(sizes: Sizes, tmp: Path) -> tuple[list[Row], dict]:
    """The scoring service as a user runs it (``stetho serve``, SQLite file, 127.0.0.1): start-up,
    sequential latency of one 10 s clip per machine type, the same work in-process, and a bounded
    load test of concurrent clients with a check that every 200 left its verdicts in the database."""
    import httpx

    from stetho.monitor.alerts import AlertRules
    from stetho.monitor.archive import AudioArchive, audio_suffix, default_archive
    from stetho.monitor.db import open_database
    from stetho.monitor.scoring import Scorer
    from stetho.monitor.store import evaluate_rules, store_verdict

    work = tmp / "service"
    work.mkdir(parents=True, exist_ok=True)
    info: dict = {"models": SERVICE_MODELS, "load_start": load()}
    t0 = time.perf_counter()
    runs, test_clip = service_runs(sizes, work)
    info["setup_s"] = round(time.perf_counter() - t0, 1)
    wavs = {mt: DistinctWavs(p) for mt, p in test_clip.items()}
    info["upload_bytes"] = len(next(iter(wavs.values())).base)
    mts = list(SERVICE_MODELS)

    # In-process, for comparison: Scorer.score of the same clip, then what the service's worker
    # thread does besides: keep the upload in the audio archive (atomic write, fsync), store the
    # verdict in a SQLite file, evaluate the alert rules.
    scorer = Scorer.load([runs[mt] for mt in mts])
    archive = AudioArchive(work / "inproc_audio")
    rules = AlertRules()
    inproc: dict = {}
    n_modes: dict[str, int] = {}  # machine type -> score modes of its model (verdict rows per recording)
    with open_database(f"sqlite:///{work / 'inproc.db'}") as db:
        for mt in mts:
            ms: dict[str, list[float]] = {"score": [], "archive": [], "store": [], "rules": [], "total": []}
            for i in range(sizes.service_warmup + sizes.service_runs):
                data = wavs[mt].next()
                t = [time.perf_counter()]
                v = scorer.score(data, mt, filename="clip.wav")
                t.append(time.perf_counter())
                archive.put(v.sha256, data, audio_suffix("clip.wav", data))
                t.append(time.perf_counter())
                store_verdict(db, f"inproc-{mt}", v, path="clip.wav", recorded_at=datetime.now(timezone.utc),
                              source="http")
                t.append(time.perf_counter())
                evaluate_rules(db, f"inproc-{mt}", v, rules)
                t.append(time.perf_counter())
                if i >= sizes.service_warmup:
                    for k, (a, z) in zip(ms, zip(t, t[1:])):
                        ms[k].append((z - a) * 1e3)
                    ms["total"].append((t[-1] - t[0]) * 1e3)
                n_modes[mt] = len(v.modes)
            inproc[mt] = {k: quantiles_ms(v) for k, v in ms.items()}
    del scorer
    info["in_process"] = inproc

    token_file = work / "token"
    token_file.write_text(SERVICE_TOKEN + "\n")
    db_url = f"sqlite:///{work / 'service.db'}"
    proc, url, info["startup_s"] = start_service([runs[mt] for mt in mts], db_url, token_file, work / "serve.log")
    headers = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    try:
        cpu0 = proc_cpu_s(proc.pid)
        latency: dict = {}
        with httpx.Client(base_url=url, headers=headers, timeout=30.0) as client:  # one keep-alive connection
            for mt in mts:
                times = []
                for i in range(sizes.service_warmup + sizes.service_runs):
                    status, elapsed, body = post_clip(client, wavs[mt].next(), f"latency-{mt}", mt)
                    if status != 200 or not body or body.get("duplicate"):
                        raise RuntimeError(f"POST /v1/score ({mt}) answered {status}: {body}")
                    if i >= sizes.service_warmup:
                        times.append(elapsed)
                latency[mt] = quantiles_ms(times)
        cpu1 = proc_cpu_s(proc.pid)
        info["latency"] = latency
        n_seq = sizes.service_runs * len(mts) + sizes.service_warmup * len(mts)
        info["server_cpu_ms_per_request_sequential"] = (
            round((cpu1 - cpu0) / n_seq * 1e3, 2) if cpu0 is not None and cpu1 is not None else None)

        info["load"] = load_test(url, headers, wavs, sizes, proc.pid)
        with httpx.Client(base_url=url, timeout=30.0) as client:
            counted = {a["name"]: a["recordings"] for a in client.get("/v1/assets").json()}
    finally:
        stop_service(proc)
    info["server_exit_code"] = proc.returncode
    info["server_log_tracebacks"] = (work / "serve.log").read_text(errors="replace").count("Traceback")
    lt = info["load"]
    # The database itself, after the server stopped: one recording per 200, each with a verdict
    # per score mode of its model, and exactly the recording ids the answers gave.
    stored: dict[int, tuple[int, int]] = {}
    with open_database(db_url) as db:
        for asset, mt in lt["assets"].items():
            for r in db.verdicts(asset):
                rows_so_far = stored.get(r.recording_id, (0, n_modes[mt]))[0]
                stored[r.recording_id] = (rows_so_far + 1, n_modes[mt])
    lt.update(audit_verdicts(lt.pop("recording_ids"), stored))
    lt["stored_via_api"] = sum(counted.get(a, 0) for a in lt["assets"])
    kept = default_archive(db_url)  # where `stetho serve` keeps the uploads by default (None: not kept)
    info["archive_files"] = sum(1 for p in kept.rglob("*") if p.is_file()) if kept is not None and kept.is_dir() else None
    info["recordings_stored"] = sum(counted.values())  # latency and load assets: every upload was distinct
    info["load_end"] = load()
    shutil.rmtree(work, ignore_errors=True)

    b = "service"
    rows = [Row(b, f"start-up: spawn to /healthz 200 ({len(mts)} runs loaded once)", info["startup_s"], "s")]
    for mt in mts:
        q = latency[mt]
        rows.append(Row(b, f"POST /v1/score, 10 s WAV, {mt} ({SERVICE_MODELS[mt]}), keep-alive, median of {q['n']} "
                           f"(p95 {q['p95_ms']:.1f})", q["median_ms"], "ms", f"< {SERVICE_TARGET_MS:.0f} ms",
                        verdict(q["median_ms"] < SERVICE_TARGET_MS)))
        parts = inproc[mt]
        for key, what in (("score", "Scorer.score (decode, features, model)"),
                          ("archive", "AudioArchive.put (atomic write, fsync)"),
                          ("store", "store_verdict, SQLite file"),
                          ("rules", f"alert rules ({n_modes[mt]} score modes)"),
                          ("total", "the four together, without HTTP")):
            rows.append(Row(b, f"  in-process {mt}: {what} (p95 {parts[key]['p95_ms']:.1f})",
                            parts[key]["median_ms"], "ms"))
    rows.append(Row(b, "server CPU per sequential request", info["server_cpu_ms_per_request_sequential"], "ms"))
    lq = lt["latency"]
    what = f"load, {lt['clients']} clients x {lt['seconds']:.0f} s"
    rows += [
        Row(b, f"{what}: requests (cap {sizes.service_max_requests:,})", lt["requests"], ""),
        Row(b, f"{what}: throughput", lt["requests_per_s"], "req/s"),
        Row(b, f"{what}: latency median (p95 {lq.get('p95_ms', float('nan')):.0f}, max "
               f"{lq.get('max_ms', float('nan')):.0f})", lq.get("median_ms"), "ms"),
        Row(b, f"{what}: errors (non-200, transport){' ' + str(lt['error_kinds']) if lt['error_kinds'] else ''}",
            lt["errors"], "", "0", verdict(lt["errors"] == 0)),
        Row(b, f"{what}: lost verdicts (200s not stored; stored {lt['stored_in_db']:,} in the file, "
               f"{lt['stored_via_api']:,} by /v1/assets)", lt["lost"], "", "0",
            verdict(lt["lost"] == 0 and lt["stored_in_db"] == lt["stored_via_api"])),
        Row(b, f"{what}: stored without a 200 / recordings missing a mode",
            lt["stored_without_200"] + lt["recordings_missing_a_mode"], "", "0",
            verdict(lt["stored_without_200"] + lt["recordings_missing_a_mode"] == 0)),
        Row(b, f"{what}: server CPU per request", lt["server_cpu_ms_per_request"], "ms"),
    ]
    if info["archive_files"] is not None:  # None: this stetho keeps no audio by default
        rows.append(Row(b, f"uploads kept in the audio archive (of {info['recordings_stored']:,} recordings stored)",
                        info["archive_files"], "", "all", verdict(info["archive_files"] == info["recordings_stored"])))
    return rows, info


def audit_verdicts(returned: Sequence[int], stored: dict[int, tuple[int, int]]) -> dict[str, int]:
    """Check the 200 answers of a load test against the database.

    Args:
        returned: the ``recording_id`` of every 200 answer (not duplicates).
        stored: recording id -> (its verdict rows in the database, the score modes of its model),
            for every recording of the load test's assets.

    Returns:
        ``lost``: 200s whose recording is not stored, plus 200s that were given a recording id
        another 200 was given too; ``stored_without_200``: stored recordings no 200 announced;
        ``recordings_missing_a_mode``: stored recordings without one verdict per score mode.
    """
    ids = set(returned)
    return {"stored_in_db": len(stored), "lost": len(ids - stored.keys()) + len(returned) - len(ids),
            "stored_without_200": len(stored.keys() - ids),
            "recordings_missing_a_mode": sum(rows != modes for rows, modes in stored.values())}


def load_test(url: str, headers: dict, wavs: dict[str, DistinctWavs], sizes: Sizes, server_pid: int) -> dict:
    """``service_clients`` threads, each with its own keep-alive client, posting distinct uploads
    to its asset until ``service_load_s`` has passed or ``service_max_requests`` were sent.

    Client ``k`` posts machine type ``k % 2`` to asset ``load-<type>-<k // 2 % (assets / 2)>``
    (several clients per asset: concurrent writes to one asset's history and alert rules).
    Returns the counts, the latencies of the 200s and their recording ids; ``errors`` counts
    every non-200, transport error, ``duplicate: true`` answer and client still hanging at the end."""
    import httpx

    mts = list(wavs)
    per_type = max(1, sizes.service_assets // len(mts))
    lock = threading.Lock()
    budget = [sizes.service_max_requests]
    ok_ms: list[float] = []
    recording_ids: list[int] = []
    error_kinds: dict[str, int] = {}
    assets = {f"load-{mts[k % len(mts)]}-{k // len(mts) % per_type}": mts[k % len(mts)]
              for k in range(sizes.service_clients)}
    start = time.perf_counter()
    deadline = start + sizes.service_load_s

    def client(k: int) -> None:
        mt = mts[k % len(mts)]
        asset = f"load-{mt}-{k // len(mts) % per_type}"
        with httpx.Client(base_url=url, headers=headers, timeout=30.0) as c:
            while True:
                with lock:
                    if budget[0] <= 0 or time.perf_counter() >= deadline:
                        return
                    budget[0] -= 1
                try:
                    status, ms, body = post_clip(c, wavs[mt].next(), asset, mt)
                    kind = None if status == 200 else f"{status} {body.get('error') if body else ''}".strip()
                except httpx.HTTPError as exc:
                    kind = type(exc).__name__
                with lock:
                    if kind is not None:
                        error_kinds[kind] = error_kinds.get(kind, 0) + 1
                    elif body.get("duplicate"):  # distinct bytes: never expected
                        error_kinds["200 duplicate"] = error_kinds.get("200 duplicate", 0) + 1
                    else:
                        ok_ms.append(ms)
                        recording_ids.append(body["recording_id"])

    cpu0 = proc_cpu_s(server_pid)
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(sizes.service_clients)]
    for t in threads:
        t.start()
    for t in threads:  # bounded: a request times out after 30 s, so every thread ends by then
        t.join(max(0.0, deadline + 35.0 - time.perf_counter()))
    seconds = time.perf_counter() - start
    cpu1 = proc_cpu_s(server_pid)
    with lock:
        hung = sum(t.is_alive() for t in threads)
        requests = sizes.service_max_requests - budget[0]
        errors = sum(error_kinds.values())
        return {
            "clients": sizes.service_clients, "assets": assets, "seconds": seconds, "requests": requests,
            "requests_per_s": len(ok_ms) / seconds, "ok": len(ok_ms), "errors": errors + hung,
            "error_kinds": dict(error_kinds, **({"hung client": hung} if hung else {})),
            "latency": quantiles_ms(ok_ms), "recording_ids": list(recording_ids),
            "server_cpu_ms_per_request": (round((cpu1 - cpu0) / max(1, requests) * 1e3, 2)
                                          if cpu0 is not None and cpu1 is not None else None),
        }


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


#: Runs per latency figure of the export benchmark (median; interleaved so load drifts hit all alike).
EXPORT_RUNS = {"full": 40, "quick": 15}
#: The discriminative run of the export benchmark: recipes/dcase2023_discriminative_cpu.yaml's
#: network (1.5 s tiles, STFT 1024/512 and 256/128 branches, channels 8-64, Mahalanobis default)
#: trained for 1 epoch (latency does not depend on the training).
EXPORT_DISCRIMINATIVE = {"branches": ["stft:1024:512", "stft:256:128"], "tile_seconds": 1.5,
                         "channels": [8, 16, 32, 64], "fft_channels": 32, "epochs": 1, "batch_size": 32,
                         "ensemble_epochs": [1], "pseudo_labels": "none", "score_mode": "mahalanobis"}
#: The edge scorer's packages, installed into a fresh venv from the local package index only.
EDGE_PACKAGES = ("numpy", "soundfile", "onnxruntime")
LOCAL_INDEX = "file:///opt/pypi/simple"


#: Names of the export benchmark's onnxruntime latencies (the speed target applies to the last two).
EXPORT_GRAPH = "onnxruntime, graph front end (STFT in the graph)"
EXPORT_NUMPY = "onnxruntime, numpy front end (numpy spectrum + spectrum graph)"
EXPORT_EDGE = "edge scorer from the WAV file, numpy front end (decode + checks + spectrum + onnxruntime)"


def bench_export(quick: bool, tmp: Path) -> tuple[list[Row], dict]:
    """Issue 21: an ``ae``, a ``stats`` and a ``discriminative`` run (:data:`EXPORT_DISCRIMINATIVE`;
    toy fan, 10 s clips) exported to ONNX and TorchScript; per-clip latency of one 10 s clip at 1
    thread (torch eager through ``det.score_all`` as ``stetho score`` runs it, the export module in
    eager torch, TorchScript, onnxruntime with the graph front end and with the numpy front end,
    the edge scorer from the WAV file with each front end), the exports' sizes and times, the
    parity, and the edge scorer in a fresh venv without torch."""
    from stetho import pipeline
    from stetho.synth import make_toy_dataset

    data = tmp / "export-data"
    clips = make_toy_dataset(data, machines=["fan"], train_clips=10 if quick else 20, target_train_clips=2,
                             test_clips=2, duration=DURATION, seed=0, sr=SR, progress=False)
    wav = next(c.path for c in clips if c.split == "test")
    rows: list[Row] = []
    info: dict[str, Any] = {}
    for model, params in (("ae", {"epochs": 1 if quick else 3}), ("stats", {}),
                          ("discriminative", EXPORT_DISCRIMINATIVE)):
        run = tmp / f"export-run-{model}"
        pipeline.train({"data": str(data), "out": str(run), "model": model, "params": params, "progress": False,
                        "threads": 1})
        r, info[model] = bench_export_model(model, run, wav, tmp, quick)
        rows += r
    edge_dir = tmp / "export-ae-onnx"
    venv = info["fresh_venv"] = edge_venv(tmp, edge_dir, wav, info["ae"].pop("edge_result"))
    info["stats"].pop("edge_result")
    info["discriminative"].pop("edge_result")
    if venv.get("error"):
        rows.append(Row("export", f"fresh venv without torch: {venv['error']}", None, ""))
    else:
        rows += [Row("export", "fresh venv: pip install numpy soundfile onnxruntime (local index, offline)",
                     venv["install_s"], "s"),
                 Row("export", "fresh venv size on disk", venv["venv_mb"], "MB"),
                 Row("export", "fresh venv: python stetho_edge.py DIR clip.wav (ae, cold process)", venv["score_s"],
                     "s"),
                 Row("export", "fresh venv: torch importable / scores equal in-process", None, "",
                     "no / yes", verdict(not venv["torch_importable"] and venv["same_scores"]))]
    return rows, info


def bench_export_model(model: str, run: Path, wav: Path, tmp: Path, quick: bool) -> tuple[list[Row], dict]:
    """One run's exports and latencies (see :func:`bench_export`)."""
    import onnxruntime as ort

    from stetho import edge
    from stetho.audio import load_audio
    from stetho.export import export_run
    from stetho.export.exporter import reference_scores, relative_difference
    from stetho.models import Detector
    from stetho.run_folder import run_models

    det = Detector.load(run_models(run)[0])
    y, _ = load_audio(wav)
    info: dict[str, Any] = {"clip_s": len(y) / SR}
    files: dict[str, dict] = {}
    for fmt in ("onnx", "torchscript"):
        t = time.perf_counter()
        (e,) = export_run(run, fmt, tmp / f"export-{model}-{fmt}")
        files[fmt] = {"path": e.path, "export_s": round(time.perf_counter() - t, 2), "bytes": e.path.stat().st_size,
                      "check_max_rel_diff": e.max_rel_diff}
    info["files"] = {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in files.items()}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module = det.export_module("fan")
        with warnings_ignored():
            scripted = torch.jit.load(str(files["torchscript"]["path"]))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(files["onnx"]["path"]), options, providers=["CPUExecutionProvider"])
        export_dir = files["onnx"]["path"].parent
        meta = json.loads((export_dir / "fan.json").read_text())["front_ends"]["numpy"]
        spec_session = ort.InferenceSession(str(export_dir / meta["file"]), options, providers=["CPUExecutionProvider"])
        scorer = edge.EdgeScorer(export_dir, threads=1)
        graph_scorer = edge.EdgeScorer(export_dir, threads=1, front_end="graph")
        yt, sec = torch.from_numpy(y), torch.tensor(0)
        feeds = {"waveform": y, "section": np.array(0, dtype=np.int64)}

        def numpy_front_end() -> np.ndarray:
            spectrum = edge.spectrum(y, meta["spectrum"])
            return spec_session.run(None, {"spectrum": spectrum, "section": feeds["section"]})[0].astype(np.float64)

        with torch.no_grad():
            engines: dict[str, Callable[[], Any]] = {
                "torch eager (det.score_all, as stetho score)": lambda: reference_scores(det, "fan", y),
                "torch eager (export module)": lambda: module(yt, sec).double().numpy(),
                "TorchScript": lambda: scripted(yt, sec).double().numpy(),
                EXPORT_GRAPH: lambda: session.run(None, feeds)[0].astype(np.float64),
                EXPORT_NUMPY: numpy_front_end,
                "numpy spectrum alone (edge.spectrum)": lambda: edge.spectrum(y, meta["spectrum"]),
            }
            scores = {name: np.asarray(fn()) for name, fn in engines.items() if "alone" not in name}
            engines[EXPORT_EDGE] = lambda: scorer.score(wav)
            engines["edge scorer from the WAV file, graph front end"] = lambda: graph_scorer.score(wav)
            runs = EXPORT_RUNS["quick" if quick else "full"]
            times: dict[str, list[float]] = {name: [] for name in engines}
            for fn in engines.values():  # warm-up
                fn()
            for _ in range(runs):
                for name, fn in engines.items():
                    t = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - t) * 1e3)
    finally:
        torch.set_num_threads(threads)
    ref = scores["torch eager (det.score_all, as stetho score)"]
    info["latency_ms"] = {name: round(float(np.median(v)), 2) for name, v in times.items()}
    info["max_rel_diff"] = {name: relative_difference(s, ref) for name, s in scores.items()}
    info["edge_result"] = scorer.score(wav)

    eager = info["latency_ms"]["torch eager (det.score_all, as stetho score)"]
    rows = [Row("export", f"{model}: {fmt} file size (one machine type)", v["bytes"] / 1e6, "MB")
            for fmt, v in files.items()]
    rows += [Row("export", f"{model}: {fmt} export time (incl. the parity check)", v["export_s"], "s")
             for fmt, v in files.items()]
    for name, ms in info["latency_ms"].items():
        target = name in (EXPORT_NUMPY, EXPORT_EDGE)  # the issue: onnxruntime at least as fast as eager torch
        rows.append(Row("export", f"{model}: 10 s clip, 1 thread: {name}", ms, "ms",
                        f"<= eager {eager:.1f} ms" if target else "", verdict(ms <= eager) if target else ""))
    worst = max(info["max_rel_diff"].values())
    rows.append(Row("export", f"{model}: largest relative score difference from det.score_all", worst, "",
                    "<= 1e-4", verdict(worst <= 1e-4)))
    return rows, info


class warnings_ignored:
    """``torch.jit.load`` warns that TorchScript is deprecated (torch 2.13); it still works."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", DeprecationWarning)

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def edge_venv(tmp: Path, export_dir: Path, wav: Path, expected: dict) -> dict:
    """A fresh venv with only :data:`EDGE_PACKAGES` from :data:`LOCAL_INDEX` (no network): install
    time, size, whether torch imports there, and ``stetho_edge.py`` scoring ``wav`` (cold)."""
    venv = tmp / "edge-venv"
    try:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        py = str(venv / "bin" / "python")
        subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--index-url",
                        LOCAL_INDEX, *EDGE_PACKAGES], check=True, capture_output=True, text=True, timeout=600)
        install_s = time.perf_counter() - t
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        err = getattr(exc, "stderr", "") or str(exc)
        return {"error": f"could not build it ({str(err).strip().splitlines()[-1][:120] if err else exc})"}
    size = sum(p.stat().st_size for p in venv.rglob("*") if p.is_file())
    torch_ok = subprocess.run([py, "-c", "import torch"], capture_output=True).returncode == 0
    t = time.perf_counter()
    proc = subprocess.run([py, str(export_dir / "stetho_edge.py"), str(export_dir), "--json", str(wav)],
                          capture_output=True, text=True, timeout=300, cwd=tmp)
    score_s = time.perf_counter() - t
    same = False
    if proc.returncode == 0:
        got = json.loads(proc.stdout.splitlines()[0])
        same = all(abs(got["modes"][m]["score"] - v["score"]) <= 1e-6 * abs(v["score"])
                   for m, v in expected["modes"].items())
    versions = subprocess.run([py, "-c", "import numpy, soundfile, onnxruntime; print(numpy.__version__, "
                               "soundfile.__version__, onnxruntime.__version__)"], capture_output=True, text=True)
    return {"install_s": round(install_s, 1), "venv_mb": round(size / 1e6), "torch_importable": torch_ok,
            "score_s": round(score_s, 2), "returncode": proc.returncode, "same_scores": same,
            "stderr": proc.stderr[-300:], "versions": versions.stdout.strip()}


#: The Ray benchmark's toy comparison: clips per machine type, clip seconds, AE epochs, seeds.
RAY_GRID = {"full": {"train_clips": 24, "duration": 2.0, "epochs": 8, "seeds": [1, 2]},
            "quick": {"train_clips": 12, "duration": 1.0, "epochs": 4, "seeds": [1, 2]}}
RAY_NOOP_RUNS = 50


def bench_ray(quick: bool, tmp: Path) -> tuple[list[Row], dict]:
    """Issue 22: the speed-up of ``stetho run --engine ray`` on 2 workers against 1 (a 7-type toy
    comparison, each cell's machine types as tasks), and Ray's overhead for one tiny task / run."""
    import ray

    from stetho import pipeline
    from stetho.pipeline.ray_engine import connected
    from stetho.synth import make_toy_dataset

    grid = RAY_GRID["quick" if quick else "full"]
    data = tmp / "ray-data"
    make_toy_dataset(data, machines=None, train_clips=grid["train_clips"], target_train_clips=2, test_clips=2,
                     duration=grid["duration"], seed=0, progress=False)
    recipe = {"data": str(data), "model": "ae", "params": {"epochs": grid["epochs"]}, "progress": False,
              "resources": {"cpus": 1, "gpus": 0}, "compare": {"seeds": grid["seeds"]}}

    def warm() -> int:
        import stetho.pipeline  # noqa: F401 - what every task imports first

        return os.getpid()

    def noop() -> None:
        return None

    info: dict[str, Any] = {"grid": grid, "machine_types": 7}
    for cpus in (1, 2):
        with connected(num_cpus=cpus):
            warm_task, noop_task = ray.remote(num_cpus=1)(warm), ray.remote(num_cpus=1)(noop)
            ray.get([warm_task.remote() for _ in range(4 * cpus)])
            t = time.perf_counter()
            pipeline.run({**recipe, "out": str(tmp / f"ray-{cpus}"), "cache_dir": str(tmp / f"ray-cache-{cpus}")},
                         report=False, engine="ray")
            info[f"seconds_{cpus}_cpu"] = round(time.perf_counter() - t, 2)
            if cpus == 1:
                ray.get(noop_task.remote())
                times = []
                for _ in range(RAY_NOOP_RUNS):
                    t = time.perf_counter()
                    ray.get(noop_task.remote())
                    times.append((time.perf_counter() - t) * 1e3)
                info["noop_task_ms"] = round(float(np.median(times)), 2)
                make_toy_dataset(tmp / "ray-tiny", machines=["fan"], train_clips=grid["train_clips"],
                                 target_train_clips=2, test_clips=2, duration=grid["duration"], seed=0)
                tiny = {"data": str(tmp / "ray-tiny"), "model": "stats", "progress": False,
                        "cache_dir": str(tmp / "ray-cache-tiny")}
                pipeline.run({**tiny, "out": str(tmp / "tiny-warm")}, report=False)  # features cached
                t = time.perf_counter()
                pipeline.run({**tiny, "out": str(tmp / "tiny-local")}, report=False)
                info["tiny_run_local_s"] = round(time.perf_counter() - t, 3)
                t = time.perf_counter()
                pipeline.run({**tiny, "out": str(tmp / "tiny-ray")}, report=False, engine="ray")
                info["tiny_run_ray_s"] = round(time.perf_counter() - t, 3)
    same = all((tmp / "ray-1" / f).read_bytes() == (tmp / "ray-2" / f).read_bytes()
               for f in ("comparison_models.csv", "comparison_settings.csv"))
    speedup = info["speedup"] = round(info["seconds_1_cpu"] / info["seconds_2_cpu"], 2)
    cells = f"7 types x {len(grid['seeds'])} seeds, ae {grid['epochs']} epochs"
    rows = [Row("ray", f"toy comparison ({cells}), 1 worker", info["seconds_1_cpu"], "s"),
            Row("ray", f"toy comparison ({cells}), 2 workers", info["seconds_2_cpu"], "s"),
            Row("ray", "speed-up, 2 workers vs 1", speedup, "x", ">= 1.7x", verdict(speedup >= 1.7)),
            Row("ray", "comparison tables of 1 and 2 workers byte-identical", None, "", "yes", verdict(same)),
            Row("ray", "overhead of one tiny task (no-op round trip, median)", info["noop_task_ms"], "ms"),
            Row("ray", "one tiny run (1 type, stats): in-process", info["tiny_run_local_s"] * 1e3, "ms"),
            Row("ray", "one tiny run (1 type, stats): through Ray", info["tiny_run_ray_s"] * 1e3, "ms")]
    return rows, info


def print_table(rows: list[Row]) -> None:
    header = ("benchmark", "figure", "value", "target", "")
    cells = [header] + [(r.benchmark, r.figure, r.shown(), r.target, r.status) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    line = lambda c: " | ".join(  # noqa: E731 - values right-aligned, the rest left-aligned
        x.rjust(w) if i == 2 else x.ljust(w) for i, (x, w) in enumerate(zip(c, widths))
    ).rstrip()
    print(line(header))
    print("-+-".join("-" * w for w in widths))
    previous = None
    for c in cells[1:]:
        if previous is not None and c[0] != previous:
            print("-+-".join("-" * w for w in widths))
        print(line(c))
        previous = c[0]


def print_sweep(info: dict) -> None:
    print("\nextraction sweep (clips/s, best of repeats; default config is "
          f"batch_size 1, workers {os.cpu_count()}):")
    print("  batch_size  workers   clips/s   CPU ms/clip   cores used")
    for r in info["sweep"]:
        print(f"  {r['batch_size']:>10}  {r['workers']:>7}  {r['clips_per_s']:8.1f}  "
              f"{r['cpu_ms_per_clip']:12.2f}  {r['cores_used']:11.2f}")
    c = info["cpu_ms_per_clip"]
    print(f"  CPU ms/clip: stetho defaults {c['stetho']}, librosa {c['librosa']}"
          + (f", librosa with 1 BLAS thread {c['librosa_blas1']}" if "librosa_blas1" in c else ""))


#: Packages whose import time the start-up benchmark reports (a root module name → its label).
HEAVY_IMPORTS = {"torch": "torch", "scipy": "scipy", "sklearn": "sklearn", "librosa": "librosa+numba",
                 "numba": "librosa+numba", "llvmlite": "librosa+numba"}
STARTUP_REPEATS = 5
HELP_TARGET_S = 0.5


def import_seconds(stderr: str) -> dict[str, float]:
    """Seconds of ``python -X importtime`` output (its stderr) spent importing each of
    :data:`HEAVY_IMPORTS` (self times summed over the package's modules), plus ``all``."""
    totals: dict[str, float] = {"all": 0.0}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        self_us, _, name = (part.strip() for part in line[len("import time:"):].split("|", 2))
        if not self_us.isdigit():
            continue  # the header line
        seconds = int(self_us) / 1e6
        totals["all"] += seconds
        label = HEAVY_IMPORTS.get(name.split(".")[0])
        if label:
            totals[label] = totals.get(label, 0.0) + seconds
    return {k: round(v, 3) for k, v in totals.items()}


def bench_startup(tmp: Path) -> tuple[list[Row], dict]:
    """Cold start: each command in :data:`STARTUP_REPEATS` fresh processes (median, min)."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    cli = [sys.executable, "-m", "stetho.cli"]
    data, runs = tmp / "startup_data", {}
    subprocess.run([*cli, "-q", "toy", str(data), "--machines", "fan", "--train-clips", "8", "--target-train-clips",
                    "2", "--test-clips", "1", "--duration", "1"], check=True, env=env, capture_output=True)
    for model, extra in (("stats", []), ("ae", ["--epochs", "1"])):
        runs[model] = tmp / f"startup_{model}"
        subprocess.run([*cli, "-q", "train", "--data", str(data), "--out", str(runs[model]), "--model", model,
                        "--no-cache", "--no-progress", *extra], check=True, env=env, capture_output=True)
    wav = str(sorted((data / "fan" / "test").glob("*.wav"))[0])
    commands = {
        "stetho --help": [*cli, "--help"],
        "import stetho": [sys.executable, "-c", "import stetho"],
        "stetho score (stats run)": [*cli, "score", str(runs["stats"]), wav],
        "stetho score (ae run)": [*cli, "score", str(runs["ae"]), wav],
    }
    info: dict = {"repeats": STARTUP_REPEATS, "commands": {}}
    rows = []
    for name, cmd in commands.items():
        times, cpu = [], []
        for _ in range(STARTUP_REPEATS):
            before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            subprocess.run(cmd, check=True, env=env, capture_output=True, cwd=tmp)
            times.append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        # CPU seconds of the process (user + system) beside the wall time: on a shared machine the
        # wall time grows with contention, the CPU time much less
        entry = {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
                 "times_s": [round(t, 3) for t in times], "median_cpu_s": round(statistics.median(cpu), 3)}
        if name.startswith("stetho score"):
            done = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], check=True, env=env, capture_output=True,
                                  text=True, cwd=tmp)
            entry["import_s"] = import_seconds(done.stderr)
        info["commands"][name] = entry
        target, ok = ("< 0.5 s", entry["median_s"] < HELP_TARGET_S) if name == "stetho --help" else ("", None)
        rows.append(Row("start-up", f"{name}: median of {STARTUP_REPEATS} fresh processes", entry["median_s"], "s",
                        target, verdict(ok)))
        rows.append(Row("start-up", f"{name}: CPU time (user + system), median", entry["median_cpu_s"], "s"))
        if "import_s" in entry:
            imports = entry["import_s"]
            rows.append(Row("start-up", f"{name}: imports (torch {imports.get('torch', 0):.2f} s, scipy "
                                        f"{imports.get('scipy', 0):.2f}, sklearn {imports.get('sklearn', 0):.2f}, "
                                        f"librosa+numba {imports.get('librosa+numba', 0):.2f})",
                            imports["all"], "s"))
    return rows, info

# ------------------------------------------------------------------------------------------------
# disk: what a finished discriminative CPU run and the feature cache leave on disk (issue 23)
# ------------------------------------------------------------------------------------------------


def _du(path: Path, pattern: str = "*") -> tuple[int, int]:
    """(files, bytes) under ``path`` matching ``pattern``."""
    files = [p for p in path.rglob(pattern) if p.is_file()] if path.exists() else []
    return len(files), sum(p.stat().st_size for p in files)


def bench_disk(quick: bool, tmp: Path) -> tuple[list[Row], dict]:
    """A small run of recipes/dcase2023_discriminative_cpu.yaml's model (``stetho train`` in a
    fresh process, the recipe's checkpoint_every) finished with and without ``--keep-checkpoints``:
    the run folder, its checkpoints and models; then the feature cache an AE training on the same
    clips fills, before and after ``stetho cache --max-size`` trims it to half (least recently
    used entries first)."""
    import yaml

    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    env.pop("STETHO_KEEP_CHECKPOINTS", None)
    env.pop("STETHO_CACHE_MAX_SIZE", None)
    cli = [sys.executable, "-m", "stetho.cli"]
    n_clips, epochs = (12, 4) if quick else (30, 8)
    data, cache = tmp / "disk_data", tmp / "disk_cache"
    subprocess.run([*cli, "-q", "toy", str(data), "--machines", "fan,valve", "--train-clips", str(n_clips),
                    "--target-train-clips", "3", "--test-clips", "2", "--duration", "5"],
                   check=True, env=env, capture_output=True)
    params = yaml.safe_load((REPO / "recipes" / "dcase2023_discriminative_cpu.yaml").read_text())["params"]
    params.update(epochs=epochs, ensemble_epochs=[epochs // 2, epochs])
    args = [a for k, v in params.items()
            for a in ("--param", f"{k}=[{','.join(map(str, v))}]" if isinstance(v, list) else f"{k}={v}")]
    info: dict = {"train_clips": 2 * (n_clips + 3), "epochs": epochs, "clip_seconds": 5.0,
                  "checkpoint_every": params.get("checkpoint_every", 2), "runs": {}}
    rows = []
    for name, extra in (("default", []), ("--keep-checkpoints", ["--keep-checkpoints"])):
        out = tmp / f"disk_run_{len(info['runs'])}"
        t0 = time.perf_counter()
        subprocess.run([*cli, "-q", "train", "--data", str(data), "--out", str(out), "--model", "discriminative",
                        "--no-progress", "--cache-dir", str(cache), *args, *extra], check=True, env=env,
                       capture_output=True)
        entry = {"seconds": round(time.perf_counter() - t0, 1), "run_bytes": _du(out)[1],
                 "checkpoints": _du(out, "*.ckpt")[0], "checkpoint_bytes": _du(out, "*.ckpt")[1],
                 "model_bytes": _du(out / "models")[1]}
        info["runs"][name] = entry
        rows.append(Row("disk", f"finished discriminative run, {name}: run folder ({entry['checkpoints']} "
                                f"checkpoint file(s) of {entry['checkpoint_bytes'] / 1e6:.1f} MB, models "
                                f"{entry['model_bytes'] / 1e6:.1f} MB; {info['train_clips']} clips, {epochs} epochs)",
                        entry["run_bytes"] / 1e6, "MB"))
    from stetho.features.cache_limit import cache_info

    # the discriminative model reads waveforms; log-mel models (here the AE, 1 epoch) fill the cache
    subprocess.run([*cli, "-q", "train", "--data", str(data), "--out", str(tmp / "disk_ae"), "--model", "ae",
                    "--epochs", "1", "--no-progress", "--cache-dir", str(cache)], check=True, env=env,
                   capture_output=True)
    before = cache_info(cache)
    half = max(1, before.bytes // 2)
    subprocess.run([*cli, "-q", "cache", "--dir", str(cache), "--max-size", str(half)], check=True, env=env,
                   capture_output=True)
    after = cache_info(cache)
    info["cache"] = {"entries_before": before.entries, "bytes_before": before.bytes, "cap": half,
                     "entries_after": after.entries, "bytes_after": after.bytes}
    rows.append(Row("disk", f"feature cache after an AE training on the same clips ({before.entries} entries)",
                    before.bytes / 1e6, "MB"))
    rows.append(Row("disk", f"  after `stetho cache --max-size {half}` ({after.entries} entries left, least "
                            "recently used evicted)", after.bytes / 1e6, "MB", f"<= {half / 1e6:.2f} MB",
                    verdict(after.bytes <= half)))
    return rows, info


def bench_fullsize(quick: bool, tmp: Path) -> tuple[list[Row], dict]:
    """Section ``fullsize``: :func:`bench.fullsize.fullsize` (full-size data in bounded memory)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("stetho_bench_fullsize", Path(__file__).resolve().parent / "fullsize.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    work = tmp / "fullsize"
    work.mkdir(parents=True, exist_ok=True)
    rows, info = module.fullsize(quick, tmp=work)
    shutil.rmtree(work, ignore_errors=True)
    return [Row(*r) for r in rows], info


#: Section names for ``--only`` (keys of the results' ``details``).
SECTIONS = ("toy", "extraction", "training", "latency", "discriminative", "bigan", "threads", "service", "startup",
            "export", "disk", "ray", "fullsize")


def print_threads(info: dict) -> None:
    """The threads benchmark as one table: ms per optimiser step, load level x thread count."""
    levels = info["levels"]
    counts = list(next(iter(levels.values()))["median_ms"])
    print(f"\ntorch threads: ms per AENet optimiser step (batch 256 x 640, Adam), median of the rounds; "
          f"{info['cores']} usable cores, auto = {info['default_threads']}, torch's default = {info['torch_default']}")
    passive = list((next(iter(levels.values())).get("passive") or {}).get("median_ms", {}))
    print(f"  {'load':<28}" + "".join(f"{c + ' thr':>10}" for c in counts)
          + "".join(f"{c + ' passive':>12}" for c in passive) + f"{'others CPU':>12}")
    for busy, res in levels.items():
        what = "idle" if busy == "0" else f"{busy} core(s) kept busy"
        print(f"  {what:<28}" + "".join(f"{res['median_ms'][c]:>10.1f}" for c in counts)
              + "".join(f"{res['passive']['median_ms'][c]:>12.1f}" for c in passive)
              + f"{res['other_cpus'] if res['other_cpus'] is not None else 'n/a':>12}")
    print("  (passive: OMP_WAIT_POLICY=PASSIVE, idle OpenMP threads sleep instead of spinning; "
          "others CPU: busy loops included)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run (< 1 min)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results.json",
                        help="where to write the JSON results (default: bench/results.json)")
    parser.add_argument("--train-threads", default="auto",
                        help="torch threads for training: 'auto' (faster in a short probe), 0 (torch's "
                             "default), or a number")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                        help=f"run these sections only: {', '.join(SECTIONS)}")
    parser.add_argument("--child", choices=("extract", "train", "disc", "bigan", "threads"), help=argparse.SUPPRESS)
    parser.add_argument("--child-args", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        fn = {"extract": child_extract, "train": child_train, "disc": child_disc, "bigan": child_bigan,
              "threads": child_threads}[args.child]
        print(json.dumps(fn(json.loads(args.child_args))))
        return 0

    sizes = QUICK if args.quick else FULL
    started = time.perf_counter()
    meta = {"mode": "quick" if args.quick else "full", "sizes": asdict(sizes), "machine": machine_info(),
            "load_start": load(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    m = meta["machine"]
    print(f"stetho bench ({meta['mode']}): nproc {m['nproc']}, torch {m['torch']} with {m['torch_threads']} "
          f"intra-op threads, load average {meta['load_start']}")

    tmp = Path(tempfile.mkdtemp(prefix="stetho-bench-"))
    rows: list[Row] = []
    details: dict = {}
    whole_run = CpuMeter()

    def measure(key: str, title: str, bench: Callable[[], tuple[list[Row], dict]]) -> None:
        if args.only and key not in args.only:
            return
        print(title, flush=True)
        meter, t = CpuMeter(), time.perf_counter()
        r, details[key] = bench()
        details[key]["seconds"] = round(time.perf_counter() - t, 1)
        other = details[key]["other_cpus"] = meter.other_cpus()
        rows.extend(r)
        rows.append(Row(r[0].benchmark, "CPU used by other processes meanwhile (contention)", other,
                        f"of {m['nproc']} CPUs"))

    try:
        clips: list[Clip] = []
        if not args.only or {"extraction", "latency"} & set(args.only):
            print(f"[data] writing {sizes.extract_clips} WAV clips ...", flush=True)
            t0 = time.perf_counter()
            clips, source = make_clips(tmp / "data", sizes.extract_clips)
            details["data"] = {"source": source, "clips": len(clips), "seconds": round(time.perf_counter() - t0, 1)}
        measure("toy", "[0/7] toy dataset generation ...", lambda: bench_toy(sizes, tmp))
        measure("extraction", "[1/7] feature extraction ...", lambda: bench_extraction(clips, sizes, tmp))
        measure("training", f"[2/7] AE training ({sizes.train_clips} clips, subprocess) ...",
                lambda: bench_training(sizes, args.train_threads))
        measure("latency", "[3/7] scoring latency ...", lambda: bench_latency(clips, sizes, tmp))
        measure("discriminative", f"[4/7] discriminative CPU recipe ({sizes.disc_clips} clips, subprocess) ...",
                lambda: bench_discriminative(sizes))
        measure("bigan", f"[5/7] BiGAN training ({sizes.bigan_clips} + {sizes.bigan_paper_clips} clips, "
                "subprocesses) ...", lambda: bench_bigan(sizes))
        measure("threads", "[6/7] torch threads, idle and under load (subprocesses) ...", lambda: bench_threads(sizes))
        measure("service", f"[7/7] scoring service (stetho serve on 127.0.0.1; load: {sizes.service_clients} clients "
                f"x {sizes.service_load_s:.0f} s) ...", lambda: bench_service(sizes, tmp))
        measure("startup", "[startup] cold start of stetho --help, import stetho, stetho score (fresh processes) ...",
                lambda: bench_startup(tmp))
        measure("export", "[export] ONNX / TorchScript exports of an ae, a stats and a discriminative run, latency, fresh venv without torch ...",
                lambda: bench_export(args.quick, tmp))
        measure("disk", "[disk] a finished discriminative CPU run with and without --keep-checkpoints; the feature "
                "cache and its cap ...", lambda: bench_disk(args.quick, tmp))
        measure("ray", "[ray] stetho run --engine ray: 7-type toy comparison on 1 and 2 workers, Ray overhead ...",
                lambda: bench_ray(args.quick, tmp))
        measure("fullsize", "[fullsize] 7 x 1,000 training + 7 x 200 test clips of 10 s: stetho train + test of the AE "
                "and the discriminative CPU recipe, peak RSS (subprocesses; the slowest section) ...",
                lambda: bench_fullsize(args.quick, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta["other_cpus"] = whole_run.other_cpus()

    meta["load_end"] = load()
    meta["seconds"] = round(time.perf_counter() - started, 1)
    print()
    print_table(rows)
    ex = details.get("extraction")
    if ex is not None:
        print_sweep(ex)
        if ex["default_config"]:
            print(f"best extraction config is {ex['best']['clips_per_s'] / ex['default_config']['clips_per_s']:.1f}x "
                  "stetho's default configuration in the same sweep")
        print(f"\nstetho vs librosa log-mel max |diff| on one clip: {ex['max_abs_diff_vs_librosa_db']:.2e} dB")
    if "threads" in details:
        print_threads(details["threads"])
    other = meta["other_cpus"]
    if other is not None and other > 0.25:
        print(f"NOTE: other processes used {other} of {m['nproc']} CPUs on average during this run: "
              "multi-threaded figures (torch/OpenMP, OpenBLAS) degrade sharply under contention; "
              "compare runs at similar contention.")
    data = f"data: {details['data']['source']}; " if "data" in details else ""
    print(f"{data}load average start {meta['load_start']} end {meta['load_end']}; "
          f"other processes' CPU use {other} of {m['nproc']}")
    print("wall time: " + ", ".join(f"{k} {details[k]['seconds']:.0f} s" for k in details)
          + f"; total {meta['seconds']:.0f} s")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows], "details": details},
                                   indent=2, default=str) + "\n")
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
