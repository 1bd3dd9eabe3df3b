"""Calibration metrics of predicted probabilities, before and after calibration.

For predictions ``p`` [n] and 0/1 labels ``y`` [n]:

* **PCOC** (predicted clicks over observed clicks): ``sum(p) / sum(y)``; 1 is
  calibrated on average, 1.25 is 25% too high. Overall and per field value.
* **field-RCE** (field-level relative calibration error, Pan et al., "Field-aware
  Calibration: A Simple and Empirically Strong Method for Reliable Probabilistic
  Predictions", WWW 2020, arXiv:1905.10713), over the values ``z`` of one field,
  ``D_z`` the rows of value ``z``, ``N = n``::

      field-RCE = (1 / N) * sum_z |D_z| * |sum_{i in D_z} (y_i - p_i)| / sum_{i in D_z} (y_i + eps)

  i.e. each value's relative error of the total, weighted by its share of rows
  (``eps`` = 1e-6 only keeps a value without positives finite). 0 is perfect;
  a model that is 25% high everywhere scores 0.25.
* **ECE** with equal-frequency bins (``n_bins`` = 20 bins of equal row count over
  sorted ``p``): ``sum_b (n_b / n) * |mean(p_b) - mean(y_b)|``. Equal-frequency
  because CTR/CTCVR scores crowd near 0, where equal-width bins would put
  almost every row in the first bin.
* **log loss**: :func:`esmm.evaluation.metrics.logloss`.

:func:`calibration_report` computes them for pCTR (against click) and pCTCVR
(against click*conversion), raw and, given maps, calibrated: the flat metric
names below (training output, registry ``metrics_json``, report, ``bench
quality``) and a nested per-value PCOC dict (artifact ``meta.json``)::

    {ctr,ctcvr}_pcoc_{raw,cal}            {ctr,ctcvr}_ece_{raw,cal}
    {ctr,ctcvr}_logloss_{raw,cal}         {ctr,ctcvr}_field_rce_<field>_{raw,cal}
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from esmm.evaluation.metrics import _bins, logloss

TASKS = (("ctr", "pctr"), ("ctcvr", "pctcvr"))


def pcoc(p: np.ndarray, y: np.ndarray) -> float:
    """sum(p) / sum(y); NaN without positives."""
    s = float(np.sum(y))
    return float(np.sum(p)) / s if s > 0 else math.nan


def pcoc_by_value(p: np.ndarray, y: np.ndarray, values: np.ndarray) -> dict[str, dict[str, float]]:
    """Per value of ``values`` [n]: {"rows", "positives", "pcoc"}."""
    uniq, inv = np.unique(np.asarray(values), return_inverse=True)
    sp = np.bincount(inv, weights=p, minlength=len(uniq))
    sy = np.bincount(inv, weights=y, minlength=len(uniq))
    n = np.bincount(inv, minlength=len(uniq))
    return {
        str(u): {"rows": int(n[j]), "positives": float(sy[j]), "pcoc": float(sp[j] / sy[j]) if sy[j] > 0 else math.nan}
        for j, u in enumerate(uniq)
    }


def field_rce(p: np.ndarray, y: np.ndarray, values: np.ndarray, eps: float = 1e-6) -> float:
    """Field-level relative calibration error over the values of one field (module doc)."""
    p = np.asarray(p, np.float64)
    y = np.asarray(y, np.float64)
    if len(p) == 0:
        return math.nan
    uniq, inv = np.unique(np.asarray(values), return_inverse=True)
    sp = np.bincount(inv, weights=p, minlength=len(uniq))
    sy = np.bincount(inv, weights=y, minlength=len(uniq))
    n = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    return float(np.sum(n * np.abs(sy - sp) / (sy + n * eps)) / len(p))


def ece(p: np.ndarray, y: np.ndarray, n_bins: int = 20) -> float:
    """Expected calibration error over equal-frequency bins (module doc)."""
    p = np.asarray(p, np.float64)
    y = np.asarray(y, np.float64)
    if len(p) == 0:
        return math.nan
    order = np.argsort(p, kind="mergesort")
    sizes = np.array([len(c) for c in np.array_split(order, min(n_bins, len(p)))], dtype=np.float64)
    mp, obs = _bins(p, y, n_bins)
    return float(np.sum(sizes / len(p) * np.abs(mp - obs)))


def task_metrics(p: np.ndarray, y: np.ndarray, field_values: dict[str, np.ndarray]) -> dict[str, float]:
    """pcoc, ece, logloss and field_rce_<field> of one task's predictions."""
    m = {"pcoc": pcoc(p, y), "ece": ece(p, y), "logloss": logloss(p, y)}
    for f, v in field_values.items():
        m[f"field_rce_{f}"] = field_rce(p, y, v)
    return m


def calibration_report(
    pred: dict[str, np.ndarray],
    click: np.ndarray,
    conversion: np.ndarray,
    field_values: dict[str, np.ndarray],
    calibrated: Optional[dict[str, np.ndarray]] = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """(flat metrics, per-value PCOC) of raw ``pred`` and, if given, ``calibrated`` scores.

    ``pred``/``calibrated``: {"pctr", "pctcvr"} [n] (calibrated: what serving/scores
    holds, :func:`esmm.calibration.maps.apply`); ``field_values``: encoded column per
    field to break the metrics down by (e.g. position, device) [n].
    """
    o = np.asarray(click, np.float64)
    labels = {"ctr": o, "ctcvr": o * np.asarray(conversion, np.float64)}
    variants = {"raw": {"pctr": np.asarray(pred["pctr"], np.float64), "pctcvr": np.asarray(pred["pctcvr"], np.float64)}}
    if calibrated is not None:
        variants["cal"] = {k: np.asarray(calibrated[k], np.float64) for k in ("pctr", "pctcvr")}
    flat: dict[str, float] = {}
    per_value: dict[str, Any] = {}
    for variant, scores in variants.items():
        for task, col in TASKS:
            for name, v in task_metrics(scores[col], labels[task], field_values).items():
                flat[f"{task}_{name}_{variant}"] = v
            for f, vals in field_values.items():
                per_value.setdefault(f, {}).setdefault(task, {})[variant] = pcoc_by_value(
                    scores[col], labels[task], vals
                )
    return flat, per_value


def format_report(flat: dict[str, float]) -> str:
    """A few lines, raw vs calibrated, for the training output."""
    lines = []
    for task, _ in TASKS:
        names = sorted(
            {
                k[len(task) + 1 :].rsplit("_", 1)[0]
                for k in flat
                if k.startswith(task + "_") and k.endswith(("_raw", "_cal"))
            }
        )
        cells = []
        for n in names:
            r, c = flat.get(f"{task}_{n}_raw"), flat.get(f"{task}_{n}_cal")
            cells.append(f"{n} {'n/a' if r is None else f'{r:.4g}'}" + (f" -> {c:.4g}" if c is not None else ""))
        lines.append(f"  {task}: " + ", ".join(cells))
    return "calibration (raw -> calibrated):\n" + "\n".join(lines)
