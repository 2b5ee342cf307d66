"""Signal building blocks of the toy synthesiser: coloured and band noise, oscillators, impacts,
envelopes and event times.

Pure functions of their arguments; randomness only through ``rng`` (a :class:`numpy.random.Generator`).
Lengths ``n`` are in samples, sample rates ``sr`` and frequencies in Hz, times in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import scipy.fft as sfft
from scipy import signal as sps

TWO_PI = 2.0 * np.pi
#: Highest frequency any component is placed at, as a fraction of the sample rate (below Nyquist
#: with a margin, so nothing aliases).
MAX_FREQ_FRACTION = 0.45


def db_to_gain(db: float) -> float:
    """Amplitude ratio of a level difference in dB (``-6`` -> about ``0.5``)."""
    return float(10.0 ** (db / 20.0))


def rms(y: np.ndarray) -> float:
    """Root mean square of a signal (0 for an empty one)."""
    return float(np.sqrt(np.mean(np.square(y)))) if y.size else 0.0


def unit_rms(y: np.ndarray) -> np.ndarray:
    r = rms(y)
    return y / r if r > 1e-12 else y  # an all-zero signal (e.g. no events) stays zero


def lowpass_gain(f: np.ndarray, cutoff_hz: float, order: int) -> np.ndarray:
    """Butterworth low-pass magnitude at frequencies ``f`` (Hz)."""
    return 1.0 / np.sqrt(1.0 + (f / cutoff_hz) ** (2 * order))


def highpass_gain(f: np.ndarray, cutoff_hz: float, order: int) -> np.ndarray:
    """Butterworth high-pass magnitude at frequencies ``f`` (Hz); 0 at DC."""
    with np.errstate(divide="ignore", over="ignore"):
        return 1.0 / np.sqrt(1.0 + (cutoff_hz / f) ** (2 * order))


def _clamp_band(low_hz: float, high_hz: float, sr: int) -> tuple[float, float]:
    """Keep a pass band below the anti-aliasing limit (matters only for low sample rates)."""
    top = MAX_FREQ_FRACTION * sr
    high = min(high_hz, top)
    return min(low_hz, 0.7 * high), high


def shaped_noise(
    n: int, sr: int, rng: np.random.Generator, gain: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Stationary Gaussian noise with a given amplitude spectrum, normalised to unit RMS.

    Built directly in the frequency domain (complex Gaussian bins times ``gain``, one inverse
    FFT), which is cheaper than filtering white noise and allows any spectral shape.

    Args:
        n: length in samples.
        sr: sample rate in Hz.
        rng: random generator.
        gain: maps bin frequencies in Hz, shape ``(n // 2 + 1,)``, to amplitude gains (same shape).

    Returns:
        float32 array of shape ``(n,)``.
    """
    f = np.fft.rfftfreq(n, 1.0 / sr)
    g = np.asarray(gain(f), dtype=np.float32)
    # float32 throughout: the output is 16-bit, and half the memory traffic is half the time.
    spec = np.empty(f.size, np.complex64)  # filled in place: mixing 1j * array is slow
    spec.real = rng.standard_normal(f.size, dtype=np.float32)
    spec.imag = rng.standard_normal(f.size, dtype=np.float32)
    spec *= g
    return unit_rms(sfft.irfft(spec, n))


def coloured_noise(
    n: int,
    sr: int,
    rng: np.random.Generator,
    exponent: float,
    low_hz: float = 20.0,
    high_hz: float | None = None,
) -> np.ndarray:
    """Noise with power spectrum ~ ``1 / f**exponent`` (0 white, 1 pink, 2 brown), unit RMS.

    Args:
        n: length in samples.
        sr: sample rate in Hz.
        rng: random generator.
        exponent: spectral slope of the power spectrum.
        low_hz: high-pass corner in Hz (removes DC and keeps brown noise bounded).
        high_hz: optional low-pass corner in Hz.

    Returns:
        float64 array of shape ``(n,)``.
    """

    def gain(f: np.ndarray) -> np.ndarray:
        g = highpass_gain(f, low_hz, 2) * np.maximum(f, low_hz) ** (-exponent / 2.0)
        if high_hz is not None:
            g = g * lowpass_gain(f, min(high_hz, MAX_FREQ_FRACTION * sr), 4)
        return g

    return shaped_noise(n, sr, rng, gain)


def band_noise(
    n: int, sr: int, rng: np.random.Generator, low_hz: float, high_hz: float, order: int = 4
) -> np.ndarray:
    """Band-passed white noise (Butterworth-shaped skirts of ``order``), unit RMS, shape ``(n,)``.

    Args:
        low_hz: lower corner in Hz.
        high_hz: upper corner in Hz (clamped below Nyquist).
    """
    low, high = _clamp_band(low_hz, high_hz, sr)
    return shaped_noise(
        n, sr, rng, lambda f: highpass_gain(f, low, order) * lowpass_gain(f, high, order)
    )


def smooth_random(n: int, sr: int, rng: np.random.Generator, cutoff_hz: float) -> np.ndarray:
    """Slowly varying zero-mean random curve (Gaussian, unit RMS), shape ``(n,)``.

    Used for speed wander, level fluctuation and intermittency. Generated at a control rate of
    ``8 * cutoff_hz`` and linearly interpolated: a 0.5 Hz wander over 10 s needs 40 points, not
    160,000, so this costs almost nothing.

    Args:
        cutoff_hz: low-pass corner in Hz (roughly the fastest variation).
    """
    rate = 8.0 * cutoff_hz
    m = max(4, int(math.ceil(n / sr * rate)) + 2)
    ctrl = shaped_noise(m, rate, rng, lambda f: lowpass_gain(f, cutoff_hz, 2))
    ctrl -= ctrl.mean()
    return unit_rms(np.interp(np.arange(n) / sr * rate, np.arange(m), ctrl))


def phase_track(freq_hz: np.ndarray | float, sr: int, n: int, phase0: float = 0.0) -> np.ndarray:
    """Running phase in radians of an oscillator with instantaneous frequency ``freq_hz``.

    Args:
        freq_hz: frequency in Hz, scalar or shape ``(n,)``.
        sr: sample rate in Hz.
        n: length in samples.
        phase0: phase at sample 0, radians.

    Returns:
        float64 array of shape ``(n,)``; ``phase[i] = phase0 + 2*pi/sr * sum(freq[:i])``.
    """
    f = np.broadcast_to(np.asarray(freq_hz, dtype=np.float64), (n,))
    ph = np.empty(n)
    if n:
        ph[0] = 0.0
        np.cumsum(f[:-1], out=ph[1:])
    return ph * (TWO_PI / sr) + phase0


def harmonic_tone(
    phase: np.ndarray,
    amps: Sequence[float],
    phases: Sequence[float] | None = None,
    *,
    f0_max_hz: float | None = None,
    sr: int | None = None,
) -> np.ndarray:
    """Sum of harmonics ``sum_k amps[k] * sin((k + 1) * phase + phases[k])``.

    Uses the complex recursion ``z**k = z**(k-1) * z`` with ``z = exp(i * phase)``, so K harmonics
    cost one float32 sin/cos pair plus K complex64 products instead of K float64 sines (about 30x
    faster here; the rounding error grows like ``K * 1e-7``, far below 16-bit resolution).

    Args:
        phase: fundamental phase in radians, shape ``(n,)`` (see :func:`phase_track`).
        amps: linear amplitude of harmonic 1, 2, ...; 0 skips one.
        phases: starting phase of each harmonic in radians (default all 0).
        f0_max_hz, sr: when both are given, harmonics that would reach 0.45 * sr at the highest
            fundamental ``f0_max_hz`` (Hz) are dropped, so nothing aliases.

    Returns:
        float32 array of shape ``(n,)``.
    """
    amps = list(amps)
    if f0_max_hz is not None and sr is not None and f0_max_hz > 0:
        top = MAX_FREQ_FRACTION * sr
        amps = [a if (k + 1) * f0_max_hz < top else 0.0 for k, a in enumerate(amps)]
    phases = list(phases) if phases is not None else [0.0] * len(amps)
    # Wrap in float64 first: float32 cannot hold thousands of radians accurately.
    wrapped = (phase - TWO_PI * np.rint(phase / TWO_PI)).astype(np.float32)
    z1 = np.empty(phase.shape, np.complex64)  # filled in place: mixing 1j * array is slow
    z1.real = np.cos(wrapped)
    z1.imag = np.sin(wrapped)
    # a * sin(k theta + phi) = Im(a * exp(i phi) * z**k): accumulate complex, take Im once
    # (contiguous complex products are much faster than arithmetic on strided .real/.imag views).
    acc = np.zeros(phase.shape, np.complex64)
    tmp = np.empty_like(acc)
    zk = z1.copy()
    last = max((k for k, a in enumerate(amps) if a), default=-1)
    for k in range(last + 1):
        if amps[k]:
            np.multiply(zk, amps[k] * complex(math.cos(phases[k]), math.sin(phases[k])), out=tmp)
            acc += tmp
        if k < last:
            zk *= z1
    return np.ascontiguousarray(acc.imag)


def resonance_kernel(
    sr: int, freqs_hz: Sequence[float], decays_s: Sequence[float], amps: Sequence[float]
) -> np.ndarray:
    """Impulse response of a few damped modes: ``sum a * exp(-t / tau) * sin(2 pi f t)``.

    Args:
        sr: sample rate in Hz.
        freqs_hz: mode frequencies in Hz (clamped below Nyquist).
        decays_s: amplitude time constants tau in seconds.
        amps: linear amplitudes.

    Returns:
        float64 array, ``5 * max(tau)`` seconds long (at least 2 samples).
    """
    length = max(2, int(math.ceil(5.0 * max(decays_s) * sr)))
    t = np.arange(length) / sr
    k = np.zeros(length)
    top = MAX_FREQ_FRACTION * sr
    for f, tau, a in zip(freqs_hz, decays_s, amps, strict=True):
        k += a * np.exp(-t / tau) * np.sin(TWO_PI * min(f, top) * t)
    return k


def decay_kernel(sr: int, decay_s: float, attack_s: float = 0.002) -> np.ndarray:
    """Non-oscillating envelope kernel: short linear attack, exponential decay (tau in seconds)."""
    length = max(2, int(math.ceil(5.0 * decay_s * sr)))
    t = np.arange(length) / sr
    return np.minimum(1.0, t / max(attack_s, 1.0 / sr)) * np.exp(-t / decay_s)


def struck(
    n: int, sr: int, times_s: np.ndarray, amps: np.ndarray | float, kernel: np.ndarray
) -> np.ndarray:
    """Excite ``kernel`` at each time in ``times_s`` (seconds) with the matching amplitude.

    Times may be negative, so a clip can start in the ring-down of an earlier event; times past
    the end are ignored. Implemented as a sparse pulse train convolved with the kernel (one
    overlap-add FFT convolution, no Python loop over events).

    Returns:
        float64 array of shape ``(n,)``.
    """
    k = kernel.size
    times_s = np.atleast_1d(np.asarray(times_s, dtype=np.float64))
    amps = np.broadcast_to(np.asarray(amps, dtype=np.float64), times_s.shape)
    idx = np.rint(times_s * sr).astype(np.int64) + k
    keep = (idx >= 0) & (idx < n + k)
    if n == 0 or not keep.any():
        return np.zeros(n)
    pulses = np.zeros(n + k)
    np.add.at(pulses, idx[keep], amps[keep])
    return sps.oaconvolve(pulses, kernel)[k : k + n]


def burst_envelope(
    n: int, sr: int, starts_s: np.ndarray, durations_s: np.ndarray, ramp_s: float = 0.01
) -> np.ndarray:
    """0/1 gate that is open during each burst, with raised-cosine ramps of ``ramp_s`` seconds.

    Args:
        starts_s, durations_s: burst starts and lengths in seconds (same shape).

    Returns:
        float64 array of shape ``(n,)`` with values in [0, 1].
    """
    edges = np.zeros(n + 1)
    s = np.clip(np.rint(np.asarray(starts_s) * sr), 0, n).astype(np.int64)
    e = np.clip(np.rint((np.asarray(starts_s) + np.asarray(durations_s)) * sr), 0, n).astype(np.int64)
    np.add.at(edges, s, 1.0)
    np.add.at(edges, e, -1.0)
    gate = np.minimum(np.cumsum(edges)[:n], 1.0)
    width = max(3, int(ramp_s * sr))
    if n < width:
        return gate
    win = np.hanning(width)
    return np.clip(sps.oaconvolve(gate, win / win.sum(), mode="same"), 0.0, 1.0)


def poisson_times(duration_s: float, rate_hz: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted event times (seconds) of a Poisson process with ``rate_hz`` events per second."""
    count = rng.poisson(max(rate_hz, 0.0) * duration_s)
    return np.sort(rng.uniform(0.0, duration_s, count))


def periodic_times(
    rate_hz: np.ndarray, sr: int, rng: np.random.Generator, jitter: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Times of a (possibly speed-varying) periodic process, e.g. balls hitting a spall.

    Args:
        rate_hz: events per second at each sample, shape ``(n,)``; 0 pauses the process.
        sr: sample rate in Hz.
        rng: random generator (random starting phase and timing jitter).
        jitter: standard deviation of the timing error as a fraction of the local period.

    Returns:
        ``(times_s, sample_index)``: event times in seconds (with jitter) and the sample index of
        each event's nominal time, both of shape ``(events,)``.
    """
    cycles = np.cumsum(rate_hz) / sr
    total = float(cycles[-1]) if cycles.size else 0.0
    nominal = np.arange(rng.uniform(0.0, 1.0), total, 1.0)
    idx = np.minimum(np.searchsorted(cycles, nominal), rate_hz.size - 1)
    period = 1.0 / np.maximum(rate_hz[idx], 1e-3)
    times = idx / sr + rng.normal(0.0, 1.0, idx.size) * jitter * period
    return times, idx


def swept_band_noise(
    n: int, sr: int, rng: np.random.Generator, centre_hz: np.ndarray, bandwidth_hz: float
) -> np.ndarray:
    """Noise band whose centre frequency follows ``centre_hz`` (Hz, shape ``(n,)``), unit RMS.

    Heterodyne construction: low-pass noise of half the bandwidth times a carrier that follows
    the centre frequency, one noise draw however the centre moves.
    """
    base = shaped_noise(n, sr, rng, lambda f: lowpass_gain(f, bandwidth_hz / 2.0, 4))
    carrier = np.cos(phase_track(np.minimum(centre_hz, MAX_FREQ_FRACTION * sr), sr, n, rng.uniform(0, TWO_PI)))
    return unit_rms(base * carrier)


def body_gain(f: np.ndarray, resonances: Sequence[tuple[float, float, float]], floor: float) -> np.ndarray:
    """Amplitude response of a machine housing: a floor plus Lorentzian resonance peaks.

    Args:
        f: frequencies in Hz.
        resonances: ``(centre_hz, bandwidth_hz, peak_gain)`` triples.
        floor: gain away from resonances.
    """
    g = np.full(f.shape, floor)
    for fc, bw, peak in resonances:
        g += peak / (1.0 + ((f - fc) / bw) ** 2)
    # Microphone/air absorption: gentle roll-off at the top of the band.
    return g * lowpass_gain(f, 6500.0, 2)


def apply_gain(y: np.ndarray, sr: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Filter ``y`` (shape ``(n,)``) by a zero-phase amplitude response ``gain(f_hz)`` via the FFT."""
    n = y.size
    f = np.fft.rfftfreq(n, 1.0 / sr)
    return sfft.irfft(sfft.rfft(y) * gain(f), n)


def rand_phases(rng: np.random.Generator, k: int) -> list[float]:
    """``k`` random starting phases in radians."""
    return list(rng.uniform(0.0, TWO_PI, k))
