"""The nightly gate: the whole promotion decision, in one place (numpy only).

:func:`promotion` is what the nightly's ``gate`` step calls: it reads both models'
per-row evaluation scores, decides whether they are comparable, and applies
:func:`decide`. A champion that could not be compared (a different feature
mapping, found by the ``evaluate`` step) always stays.

Both models are scored on the same evaluation rows (``pctcvr`` against the
entire-space label ``click * conversion``). The rule, in order:

1. No champion: the candidate is promoted (something must serve); its
   calibration is reported, not enforced.
2. Fewer than ``min_conversions`` conversions on the day: nothing is compared
   and the champion stays. The standard error of an AUC grows like
   1/sqrt(conversions) (about 0.05 on 18 conversions), so a comparison on such
   a day would promote and reject at random.
3. Otherwise the candidate is rejected when it is worse beyond the noise:
   DeLong's paired test on CTCVR AUC or the paired z-test on CTCVR log loss
   rejects "the candidate is not worse" at level ``alpha / 2`` each
   (Bonferroni), so a candidate as good as the champion is rejected by them at
   most ``alpha`` of the time; or the ``1 - alpha`` confidence interval of its
   calibration ratio (mean pCTCVR / observed rate) lies wholly outside
   ``[calibration_min, calibration_max]``.

The statistics are in :mod:`esmm.evaluation.intervals`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

from esmm.config.schema import GateConfig
from esmm.evaluation.intervals import calibration_interval, delong, delong_test, logloss_test
from esmm.evaluation.predictions import align, ctcvr_label, load_predictions

KEY = "nightly.gate"


@dataclass
class GateDecision:
    """What the gate decided and the numbers it decided on (JSON-able via :meth:`as_dict`)."""

    promote: bool
    reason: str
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)  # test name -> its numbers
    n_rows: int = 0
    n_conversions: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _scores(x: np.ndarray, name: str, n: int) -> np.ndarray:
    s = np.asarray(x, dtype=np.float64)
    if s.shape != (n,):
        raise ValueError(
            f"gate: {name} scores have shape {s.shape}, the labels ({n},); both models "
            f"must be scored on the same evaluation rows"
        )
    if not np.isfinite(s).all() or s.min(initial=0.0) < 0.0 or s.max(initial=0.0) > 1.0:
        raise ValueError(f"gate: {name} scores must be probabilities in [0, 1] (found values outside, or NaN)")
    return s


def calibration_check(p: np.ndarray, y: np.ndarray, cfg: GateConfig) -> dict[str, Any]:
    """The calibration ratio, its ``1 - alpha`` interval, and whether all of it is outside the bounds."""
    ratio, lo, hi = calibration_interval(p, y, level=1.0 - cfg.alpha)
    outside = hi < cfg.calibration_min or lo > cfg.calibration_max
    return {
        "ratio": ratio,
        "lo": lo,
        "hi": hi,
        "level": 1.0 - cfg.alpha,
        "min": cfg.calibration_min,
        "max": cfg.calibration_max,
        "outside": bool(outside),
    }


def _cal_text(c: dict[str, Any]) -> str:
    where = "wholly OUTSIDE" if c["outside"] else "overlaps"
    return (
        f"calibration (mean pCTCVR / observed) {c['ratio']:.3f}, {c['level']:.0%} interval "
        f"[{c['lo']:.3f}, {c['hi']:.3f}] {where} [{c['min']}, {c['max']}]"
    )


def _test_text(name: str, t: dict[str, Any]) -> str:
    verdict = "WORSE beyond the noise" if t["worse"] else "not worse beyond the noise"
    return (
        f"{name} {t['candidate']:.4f} vs champion {t['champion']:.4f} (diff {t['diff']:+.4f}, "
        f"SE {t['se']:.4f}, one-sided p {t['p_worse']:.3g} vs {t['level']:.3g}: {verdict})"
    )


def decide(candidate: np.ndarray, champion: Optional[np.ndarray], labels: np.ndarray, cfg: GateConfig) -> GateDecision:
    """Promote the candidate or keep the champion (rule in the module docstring).

    ``candidate``, ``champion``: pCTCVR [n] of each model on the same rows, in the
    same order (``champion`` None when there is none); ``labels``: click *
    conversion [n] in {0, 1}.
    """
    y = np.asarray(labels, dtype=np.float64)
    if y.ndim != 1 or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("gate: labels must be a 1-d array of click * conversion in {0, 1}")
    n, conv = len(y), int(y.sum())
    cand = _scores(candidate, "candidate", n)
    tests: dict[str, dict[str, Any]] = {"calibration": calibration_check(cand, y, cfg)}
    cal = _cal_text(tests["calibration"])
    if champion is None:
        return GateDecision(True, f"promoted: first model, no champion to compare with ({cal})", tests, n, conv)
    champ = _scores(champion, "champion", n)
    if conv < cfg.min_conversions:
        _, cov = delong(cand, y)
        se = math.sqrt(cov[0, 0]) if conv > 0 and conv < n else math.nan
        return GateDecision(
            False,
            f"kept the champion: {conv} conversions on the evaluation day, below "
            f"{KEY}.min_conversions = {cfg.min_conversions}; the CTCVR AUC's standard error on "
            f"them is {se:.3f}, so the models were not compared",
            tests,
            n,
            conv,
        )
    level = cfg.alpha / 2.0  # two tests share alpha
    for name, fn in (("ctcvr_auc", delong_test), ("ctcvr_logloss", logloss_test)):
        t = fn(cand, champ, y)
        t["level"] = level
        t["worse"] = bool(t["p_worse"] < level)  # False for NaN: no evidence
        tests[name] = t
    if any(math.isnan(tests[k]["p_worse"]) for k in ("ctcvr_auc", "ctcvr_logloss")):
        return GateDecision(
            False,
            "kept the champion: the paired tests are undefined on this day " "(a single class of label)",
            tests,
            n,
            conv,
        )
    texts = [_test_text("CTCVR AUC", tests["ctcvr_auc"]), _test_text("CTCVR log loss", tests["ctcvr_logloss"]), cal]
    reject = tests["ctcvr_auc"]["worse"] or tests["ctcvr_logloss"]["worse"] or tests["calibration"]["outside"]
    head = "kept the champion" if reject else "promoted"
    return GateDecision(not reject, f"{head} on {conv} conversions: " + "; ".join(texts), tests, n, conv)


def promotion(
    predictions: dict[str, str], champion_exists: bool, champion_note: Optional[str], cfg: GateConfig
) -> GateDecision:
    """The gate step's decision from the evaluate step's outputs.

    ``predictions``: ``{"candidate": path[, "champion": path]}`` of per-row scores
    (:func:`esmm.evaluation.predictions.save_predictions`); the champion's path is
    absent when the evaluate step found it not comparable. ``champion_exists``:
    the registry has a champion. ``champion_note``: why it was not compared.
    """
    if "candidate" not in predictions:
        raise RuntimeError(
            "the evaluate step recorded no per-row predictions (an older run?); "
            "re-run the evaluate step of this date"
        )
    cand = load_predictions(predictions["candidate"])
    champ = None
    if "champion" in predictions:
        cand, champ = align(cand, load_predictions(predictions["champion"]))
    d = decide(cand["pctcvr"], None if champ is None else champ["pctcvr"], ctcvr_label(cand), cfg)
    if champ is None and champion_exists:
        # A champion exists but could not be compared (different feature mapping): it stays.
        d = GateDecision(
            False,
            f"kept the champion: {champion_note or 'champion not comparable'}",
            d.tests,
            d.n_rows,
            d.n_conversions,
        )
    return d
