"""The benches' shared statistics over seeds: mean and sample std, paired differences
with their t, the share of the oracle's lift, and the verdict of a paired difference."""

from __future__ import annotations

import math

import numpy as np


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample std (ddof 1; 0 for one value) of the finite values."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    """Paired difference a - b over seeds: mean, sample std, n and t = mean / (std / sqrt(n))
    (NaN with fewer than 2 pairs or zero spread)."""
    d = [x - y for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    s = mean_std(d)
    se = s["std"] / math.sqrt(s["n"]) if s["n"] > 1 else math.nan
    s["t"] = s["mean"] / se if se and math.isfinite(se) and se > 0 else math.nan
    return s


def lift_share(model_auc: float, oracle_auc: float) -> float:
    """Share of the oracle's AUC lift over chance that a model reaches."""
    return (model_auc - 0.5) / (oracle_auc - 0.5) if oracle_auc and oracle_auc > 0.5 else math.nan


def verdict(d: dict[str, float]) -> str:
    """Plain words for a paired difference: shown only when positive with t > 2."""
    if d["n"] < 2 or not math.isfinite(d["t"]):
        return f"NOT shown (cannot tell from {d['n']} seed(s))"
    if d["mean"] > 0 and d["t"] > 2:
        return "shown (positive, paired t > 2)"
    if d["mean"] > 0:
        return "NOT shown (inside the noise: paired t <= 2)"
    return "NOT shown (negative mean)"
