"""Decision thresholds: the DCASE baselines' Gamma quantile (METHODS.md §2) and a false-alarm
rate target on out-of-sample normal scores, each domain weighted equally."""

from __future__ import annotations

import logging

import numpy as np

# scipy.stats and scipy.optimize (~0.5-1 s to import) are imported in the functions that fit thresholds:
# scoring with a fitted detector needs neither.

log = logging.getLogger(__name__)


def gamma_threshold(scores: np.ndarray, quantile: float = 0.9) -> float:
    """Fit ``scipy.stats.gamma`` to anomaly scores of normal data; return its ``quantile``.

    A clip is anomalous when its score exceeds the threshold. The DCASE baseline fits per-batch
    mean losses; stetho fits per-clip scores (documented deviation). Scores must be finite and
    not all equal; with fewer than 3 values, or if the fit fails, the empirical quantile is used
    (logged).
    """
    import scipy.stats

    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0 or not np.isfinite(s).all():
        raise ValueError("gamma_threshold needs a non-empty array of finite scores")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    if s.size < 3 or np.ptp(s) == 0:
        log.warning("too few distinct normal scores (%d) for a Gamma fit; using the empirical quantile", s.size)
        return float(np.quantile(s, quantile))
    try:
        shape, loc, scale = scipy.stats.gamma.fit(s)
        thr = float(scipy.stats.gamma.ppf(quantile, shape, loc=loc, scale=scale))
    except (RuntimeError, ValueError, FloatingPointError) as exc:  # pragma: no cover - scipy edge
        log.warning("Gamma fit failed (%s); using the empirical quantile", exc)
        return float(np.quantile(s, quantile))
    if not np.isfinite(thr):
        log.warning("Gamma fit gave a non-finite quantile; using the empirical quantile")
        return float(np.quantile(s, quantile))
    return thr


#: A domain needs this many scores for a distribution of its own; smaller ones are modelled as
#: the best-sampled domain's distribution, rescaled to their median.
MIN_DOMAIN_SCORES = 8


def _gamma_sf(s: np.ndarray):
    """A Gamma survival function fitted to ``s`` that describes it, or ``None``.

    The three-parameter fit (free ``loc``, as the DCASE baselines fit it) can degenerate: the
    maximum likelihood puts ``loc`` at the smallest score with a shape below 1, a spike that
    claims almost every score is far in the tail. A fit is kept only with a shape of at least 1
    and a Kolmogorov-Smirnov p-value of at least 0.05; else the two-parameter fit (``loc`` 0, for
    positive scores) is tried the same way."""
    import scipy.stats

    fits = []
    try:
        fits.append(scipy.stats.gamma.fit(s))
        if (s > 0).all():
            fits.append(scipy.stats.gamma.fit(s, floc=0.0))
    except (RuntimeError, ValueError, FloatingPointError):  # pragma: no cover - scipy edge
        pass
    for shape, loc, scale in fits:
        if not (np.isfinite([shape, loc, scale]).all() and scale > 0 and shape >= 1.0):
            continue
        if scipy.stats.kstest(s, "gamma", args=(shape, loc, scale)).pvalue < 0.05:
            continue
        return lambda t, a=shape, b=loc, c=scale: float(scipy.stats.gamma.sf(t, a, loc=b, scale=c))
    return None


def _location_scale_sf(s: np.ndarray):
    """A log-normal (positive scores) or normal survival function from the mean and standard
    deviation (``ddof=1``) of the (log) scores: two parameters, for few scores."""
    import scipy.stats

    positive = bool((s > 0).all())
    x = np.log(s) if positive else s
    mu, sd = float(np.mean(x)), float(np.std(x, ddof=1))
    if not sd > 0:
        sd = max(abs(mu), 1.0) * 1e-3
    if positive:
        return lambda t: 1.0 if t <= 0 else float(scipy.stats.norm.sf((np.log(t) - mu) / sd))
    return lambda t: float(scipy.stats.norm.sf((t - mu) / sd))


def _sf(scores: np.ndarray):
    """A continuous survival function of normal scores.

    * ``MIN_DOMAIN_SCORES`` (8) or more distinct values: a Gamma fit that describes them
      (:func:`_gamma_sf`), else the log-normal (normal) fit if a Kolmogorov-Smirnov test accepts
      it, else the linearly interpolated empirical distribution.
    * 2 to 7 values: the log-normal (normal) fit. An empirical distribution of so few scores puts
      a 0.1 tail beyond the largest one, so one high held-out clip would move the threshold far
      out; two parameters extrapolate more gently.
    * one value: a step at it (nothing tells the spread; ``fit`` warns).
    """
    import scipy.stats

    s = np.sort(np.asarray(scores, dtype=np.float64))
    distinct = np.unique(s).size
    if s.size >= MIN_DOMAIN_SCORES and distinct >= MIN_DOMAIN_SCORES:
        sf = _gamma_sf(s)
        if sf is not None:
            return sf
        ls = _location_scale_sf(s)
        x = np.log(s) if (s > 0).all() else s
        if scipy.stats.kstest(x, "norm", args=(np.mean(x), np.std(x, ddof=1))).pvalue >= 0.05:
            return ls
    elif distinct >= 2:
        return _location_scale_sf(s)
    # Plotting positions (i + 1) / (n + 1): the largest score is exceeded with probability
    # 1 / (n + 1), not 0, and the survival falls linearly to 0 one spacing beyond it.
    n = s.size
    cdf = np.arange(1, n + 1) / (n + 1)
    step = float(np.ptp(s)) / max(n - 1, 1) or max(abs(float(s[-1])), 1.0) * 1e-3
    xs = np.concatenate([[s[0] - step], s, [s[-1] + step]])
    ys = np.concatenate([[0.0], cdf, [1.0]])
    return lambda t: float(1.0 - np.interp(t, xs, ys))


def _domain_parts(s: np.ndarray, d: np.ndarray) -> list:
    """One survival function per domain. A domain with fewer than ``MIN_DOMAIN_SCORES`` scores and
    fewer than the best-sampled domain (typically the target domain: DCASE gives 10 target clips
    per section) takes the shape of the
    best-sampled domain's distribution, rescaled by the ratio of the two medians (positive scores)
    or shifted by their difference (otherwise), so one or two held-out clips place it without
    being its whole distribution."""
    domains = list(dict.fromkeys(d.tolist()))
    sizes = {dom: int((d == dom).sum()) for dom in domains}
    ref = max(domains, key=lambda dom: sizes[dom])
    ref_s = s[d == ref]
    ref_sf = _sf(ref_s)
    if sizes[ref] < 3:
        return [_sf(s[d == dom]) for dom in domains]
    positive = bool((s > 0).all())
    m_ref = float(np.median(ref_s))
    parts = []
    for dom in domains:
        if dom == ref:
            parts.append(ref_sf)
        elif sizes[dom] >= min(MIN_DOMAIN_SCORES, sizes[ref]):
            parts.append(_sf(s[d == dom]))
        elif positive and m_ref > 0:
            r = float(np.median(s[d == dom])) / m_ref
            parts.append(lambda t, r=r: ref_sf(t / r))
        else:
            shift = float(np.median(s[d == dom])) - m_ref
            parts.append(lambda t, shift=shift: ref_sf(t - shift))
    return parts


def fpr_threshold(scores: np.ndarray, domains: np.ndarray | list | None = None, fpr: float = 0.1) -> float:
    """The threshold that flags a share ``fpr`` of normal clips like ``scores``.

    ``scores`` are out-of-sample scores of normal clips (clips the model did not train on). With
    ``domains`` (one label per score), each domain counts equally, however few clips it has: the
    threshold ``t`` solves ``mean_d P_d(score > t) = fpr``. ``P_d`` is fitted to the domain's
    scores (:func:`_sf`: a Gamma fit for 8 or more, else a log-normal one); a domain with fewer
    than 8 scores and fewer than the best-sampled domain takes that domain's distribution
    rescaled to its median.
    A target-domain clip is therefore never judged by a threshold fitted on source clips alone.
    """
    import scipy.optimize

    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0 or not np.isfinite(s).all():
        raise ValueError("fpr_threshold needs a non-empty array of finite scores")
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    d = np.zeros(s.size, dtype=object) if domains is None else np.asarray(domains, dtype=object)
    if d.shape != s.shape:
        raise ValueError(f"{d.size} domain labels for {s.size} scores")
    parts = _domain_parts(s, d)

    def excess(t: float) -> float:
        return float(np.mean([sf(t) for sf in parts])) - fpr

    span = float(np.ptp(s)) or max(abs(float(s.max())), 1.0)
    lo, hi = float(s.min()) - span, float(s.max()) + span
    while excess(lo) < 0:
        lo -= span
    while excess(hi) > 0:
        hi += span
        span *= 2
    return float(scipy.optimize.brentq(excess, lo, hi, xtol=1e-12 * max(1.0, abs(hi)), maxiter=200))
