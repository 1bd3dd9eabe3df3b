"""Confidence intervals and paired tests for evaluation metrics (numpy only).

The nightly gate (:mod:`esmm.evaluation.predictions`) and the run report use these to say how far
a metric measured on one evaluation day can be trusted. Inputs are 1-d arrays
over the same ``n`` rows: scores in [0, 1], labels in {0, 1}.

* AUC: DeLong, DeLong & Clarke-Pearson (1988) variance of the Mann-Whitney
  statistic, computed with the O(n log n) midrank algorithm of Sun & Xu (2014,
  IEEE Signal Processing Letters 21(11)); ties count one half, as in
  :func:`esmm.evaluation.metrics.auc`. For two models on the same rows the covariance of
  the two AUCs comes with it, which makes the test of their difference paired.
* Mean log loss: a mean over rows, so its standard error is the row standard
  deviation over sqrt(n); paired for two models through the per-row differences.
* Calibration ratio (sum of predictions / observed positives): the predictions
  are fixed, the positive count is a sum of independent Bernoulli draws, whose
  variance is below that of a Poisson count of the same mean; the Poisson score
  (Wilson) interval of the count is therefore slightly conservative, and exact
  enough for the rare events this project counts.
* Rates in bins (reliability diagrams): the Wilson score interval.

Intervals are two-sided at ``level`` (0.95 by default); the paired tests return
``p_worse``, the one-sided p-value of the null "the candidate is not worse": small
only when the candidate is worse beyond the noise.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

LOGLOSS_EPS = 1e-7  # the clip of esmm.evaluation.metrics.logloss, so means agree with its metric


def z_of(level: float) -> float:
    """The two-sided normal quantile: 1.96 for ``level = 0.95``."""
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _binary(labels: np.ndarray) -> np.ndarray:
    y = np.asarray(labels, dtype=np.float64)
    if y.ndim != 1 or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be a 1-d array of 0/1 values")
    return y.astype(bool)


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with tied values given the mean of their ranks."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], len(xs)]
    out = np.empty(len(x), dtype=np.float64)
    out[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return out


def delong(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of ``k`` models on the same rows and their DeLong covariance.

    ``scores`` [k, n] (or [n] for one model), ``labels`` [n] in {0, 1}.
    Returns ``(auc [k], cov [k, k])``; NaN without a positive or a negative row.
    Sun & Xu: with ``tz`` the midranks over all rows, ``tx`` over the ``m``
    positives and ``ty`` over the ``n`` negatives, positive i outranks the share
    ``(tz_i - tx_i) / n`` of negatives (its structural component V10_i) and
    negative j is outranked by the share ``1 - (tz_j - ty_j) / m`` of positives
    (V01_j); AUC is the mean of either, and
    ``cov = cov(V10) / m + cov(V01) / n`` (sample covariances, ddof 1).
    """
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    pos = _binary(labels)
    if s.shape[1] != len(pos):
        raise ValueError(f"scores have {s.shape[1]} rows, labels {len(pos)}")
    m, n = int(pos.sum()), int((~pos).sum())
    k = s.shape[0]
    if m == 0 or n == 0:
        return np.full(k, np.nan), np.full((k, k), np.nan)
    v10, v01 = np.empty((k, m)), np.empty((k, n))
    for r in range(k):
        tz = midranks(s[r])
        v10[r] = (tz[pos] - midranks(s[r, pos])) / n
        v01[r] = 1.0 - (tz[~pos] - midranks(s[r, ~pos])) / m
    aucs = v10.mean(axis=1)
    s10 = np.atleast_2d(np.cov(v10, ddof=1)) if m > 1 else np.zeros((k, k))
    s01 = np.atleast_2d(np.cov(v01, ddof=1)) if n > 1 else np.zeros((k, k))
    return aucs, s10 / m + s01 / n


def auc_interval(scores: np.ndarray, labels: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """``(auc, lo, hi)``: the DeLong standard error, normal interval clipped to [0, 1]."""
    a, cov = delong(scores, labels)
    auc, se = float(a[0]), math.sqrt(max(float(cov[0, 0]), 0.0))
    if math.isnan(auc):
        return math.nan, math.nan, math.nan
    z = z_of(level)
    return auc, max(0.0, auc - z * se), min(1.0, auc + z * se)


def paired_test(diff: float, se: float, higher_is_better: bool) -> tuple[float, float]:
    """``(z, p_worse)`` of a difference ``candidate - champion`` with standard error ``se``.

    ``p_worse``: the one-sided p-value of the null "the candidate is not worse"
    (worse: lower when ``higher_is_better``, higher otherwise). A zero standard error (identical
    predictions) with a zero difference gives z = 0, p = 0.5: an exact copy is
    never "worse".
    """
    if math.isnan(diff) or math.isnan(se):
        return math.nan, math.nan
    if se == 0.0:
        z = 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
    else:
        z = diff / se
    return z, normal_sf(-z if higher_is_better else z)


def delong_test(candidate: np.ndarray, champion: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """DeLong's paired test of two AUCs on the same rows.

    Returns ``candidate``, ``champion`` (AUCs), ``diff`` (candidate - champion),
    ``se`` (of the difference), ``z`` and ``p_worse`` (one-sided p-value of
    the null "the candidate's AUC is not lower").
    """
    a, cov = delong(np.vstack([candidate, champion]), labels)
    diff = float(a[0] - a[1])
    se = math.sqrt(max(float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]), 0.0)) if not math.isnan(diff) else math.nan
    z, p = paired_test(diff, se, higher_is_better=True)
    return {"candidate": float(a[0]), "champion": float(a[1]), "diff": diff, "se": se, "z": z, "p_worse": p}


def row_logloss(p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row binary cross-entropy [n] (predictions clipped to [eps, 1 - eps])."""
    p = np.clip(np.asarray(p, dtype=np.float64), LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
    y = np.asarray(labels, dtype=np.float64)
    return -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))


def mean_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: normal interval of a mean over independent rows."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return (float(v.mean()) if len(v) else math.nan), math.nan, math.nan
    mu, se = float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))
    z = z_of(level)
    return mu, mu - z * se, mu + z * se


def logloss_test(candidate: np.ndarray, champion: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Paired z-test of the mean log losses of two models on the same rows.

    The per-row differences ``d_i = ll_cand_i - ll_champ_i`` are independent
    across rows, so ``mean(d)`` has standard error ``sd(d) / sqrt(n)``. A paired
    bootstrap of the mean would estimate the same standard error (to O(1/n))
    at B times the cost. Returns ``candidate``, ``champion`` (mean log losses),
    ``diff``, ``se``, ``z`` and ``p_worse`` (one-sided p-value of the null
    "the candidate's loss is not higher").
    """
    lc, lh = row_logloss(candidate, labels), row_logloss(champion, labels)
    d = lc - lh
    if len(d) < 2:
        return {
            "candidate": math.nan,
            "champion": math.nan,
            "diff": math.nan,
            "se": math.nan,
            "z": math.nan,
            "p_worse": math.nan,
        }
    diff, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
    z, p = paired_test(diff, se, higher_is_better=False)
    return {"candidate": float(lc.mean()), "champion": float(lh.mean()), "diff": diff, "se": se, "z": z, "p_worse": p}


def poisson_interval(count: float, level: float = 0.95) -> tuple[float, float]:
    """Score (Wilson) interval of a Poisson mean from one observed ``count``.

    Solves ``(count - mu)^2 = z^2 mu``: ``count + z^2/2 -+ z sqrt(count + z^2/4)``.
    """
    z = z_of(level)
    half = z * math.sqrt(count + z * z / 4.0)
    return max(count + z * z / 2.0 - half, 0.0), count + z * z / 2.0 + half


def calibration_interval(p: np.ndarray, labels: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """``(ratio, lo, hi)`` of mean prediction / observed rate = sum(p) / positives.

    The interval is ``sum(p) / mu`` over the Poisson interval of the positive
    count ``mu``; with no positive the ratio is NaN and the interval [sum(p)/hi, inf).
    """
    expected = float(np.sum(np.asarray(p, dtype=np.float64)))
    observed = float(np.sum(np.asarray(labels, dtype=np.float64)))
    lo_mu, hi_mu = poisson_interval(observed, level)
    ratio = expected / observed if observed > 0 else math.nan
    return ratio, expected / hi_mu, (expected / lo_mu if lo_mu > 0 else math.inf)


def wilson_interval(k: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of binomial rates ``k / n`` (arrays; NaN where n = 0)."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    z = z_of(level)
    with np.errstate(invalid="ignore", divide="ignore"):
        ph = k / n
        den = 1.0 + z * z / n
        centre = (ph + z * z / (2.0 * n)) / den
        half = z * np.sqrt(ph * (1.0 - ph) / n + z * z / (4.0 * n * n)) / den
        # The interval holds k / n in exact arithmetic; at k = 0 or k = n rounding can put the
        # bound a hair on the wrong side (a negative error bar), so pin it there.
        lo = np.clip(np.minimum(centre - half, ph), 0.0, 1.0)
        hi = np.clip(np.maximum(centre + half, ph), 0.0, 1.0)
    return lo, hi


def metric_intervals(
    pred: dict[str, np.ndarray], click: np.ndarray, conversion: np.ndarray, level: float = 0.95
) -> dict[str, list[float]]:
    """``metric -> [lo, hi]`` for the metrics of :func:`esmm.evaluation.metrics.compute_metrics`
    that are measured on labelled rows (AUCs, mean log losses, calibration ratios).

    ``pred``: ``pctr``, ``pcvr``, ``pctcvr`` [n]; ``click``, ``conversion`` [n].
    """
    o = np.asarray(click, dtype=np.float64)
    y = o * np.asarray(conversion, dtype=np.float64)
    c = o > 0
    tasks = {
        "ctr": (pred["pctr"], o, "ctr_auc", "ctr_logloss", "ctr_calibration"),
        "cvr": (pred["pcvr"][c], y[c], "cvr_auc_clicked", "cvr_logloss_clicked", "cvr_calibration_clicked"),
        "ctcvr": (pred["pctcvr"], y, "ctcvr_auc", "ctcvr_logloss", "ctcvr_calibration"),
    }
    out: dict[str, list[float]] = {}
    for p, t, auc_name, ll_name, cal_name in tasks.values():
        if len(t) == 0:
            continue
        out[auc_name] = list(auc_interval(p, t, level)[1:])
        out[ll_name] = list(mean_interval(row_logloss(p, t), level)[1:])
        out[cal_name] = list(calibration_interval(p, t, level)[1:])
    return out


def paired_intervals(
    cand: dict[str, np.ndarray],
    champ: dict[str, np.ndarray],
    click: np.ndarray,
    conversion: np.ndarray,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """``metric -> [lo, hi]`` of candidate - champion on the same rows (AUCs: DeLong;
    log losses: per-row differences)."""
    o = np.asarray(click, dtype=np.float64)
    y = o * np.asarray(conversion, dtype=np.float64)
    c = o > 0
    z = z_of(level)
    out: dict[str, list[float]] = {}
    for key, auc_name, ll_name, rows, t in (
        ("pctr", "ctr_auc", "ctr_logloss", slice(None), o),
        ("pcvr", "cvr_auc_clicked", "cvr_logloss_clicked", c, y[c]),
        ("pctcvr", "ctcvr_auc", "ctcvr_logloss", slice(None), y),
    ):
        a, b = cand[key][rows], champ[key][rows]
        if len(t) < 2:
            continue
        d = delong_test(a, b, t)
        out[auc_name] = [d["diff"] - z * d["se"], d["diff"] + z * d["se"]]
        ll = logloss_test(a, b, t)
        out[ll_name] = [ll["diff"] - z * ll["se"], ll["diff"] + z * ll["se"]]
    return out


def reliability_bins(p: np.ndarray, labels: np.ndarray, n_bins: int = 10, level: float = 0.95) -> dict[str, np.ndarray]:
    """Equal-count bins of ``p`` for a reliability diagram, each with its Wilson interval.

    Returns arrays [b]: ``mean_pred``, ``rate`` (observed), ``n`` (rows),
    ``positives``, ``lo``, ``hi`` (interval of the observed rate).
    """
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    chunks = np.array_split(np.argsort(p, kind="mergesort"), min(n_bins, len(p))) if len(p) else []
    n = np.array([len(c) for c in chunks], dtype=np.float64)
    k = np.array([y[c].sum() for c in chunks], dtype=np.float64)
    lo, hi = wilson_interval(k, n, level)
    return {
        "mean_pred": np.array([p[c].mean() for c in chunks]),
        "rate": k / np.maximum(n, 1),
        "n": n,
        "positives": k,
        "lo": lo,
        "hi": hi,
    }
