"""Post-training calibration of pCTR and pCTCVR; pCVR follows from the two.

A model's scores are multiplied by a value and bid by a bidder, so their level
matters, not only their order. The maps are fitted after training on a held-out,
label-mature day that is neither a training nor an evaluation day
(``calibration.dates``), on that day's raw model outputs:

* pCTR against ``click``, pCTCVR against ``click * conversion``, over all impressions;
* ``isotonic`` (default): pool-adjacent-violators (PAV) on the raw score, then
  piecewise-linear interpolation between the PAV blocks' centres (see
  :func:`isotonic_knots`); ``platt``: ``sigmoid(a * logit(p) + b)`` fitted by Newton
  steps on the log loss (:func:`fit_platt`);
* field-aware (``calibration.fields``, e.g. ``[position]``): one map per value of
  the configured categorical fields (their *encoded* values, the ints of
  ``curated/examples`` and of the scorer; with several fields the value is the
  combination, ``"3|7"``) when that value has at least ``calibration.min_count``
  positives of the map's target (clicks for pCTR, conversions for pCTCVR) on the
  calibration day; every other value (and a value never seen) uses the global map.

Application (:func:`apply`), for raw ``pctr``, ``pctcvr`` [n]::

    pctr_c   = map_ctr[field value](pctr)
    pctcvr_c = map_ctcvr[field value](pctcvr)
    pcvr     = clip(pctcvr_c / pctr_c, 0, 1)
    pctcvr   = pctr_c * pcvr                 (= min(pctcvr_c, pctr_c))

pCVR is not calibrated on its own: a bidder uses pCTR x pCVR, so pCVR is derived
from the two calibrated quantities and the identity ``pctcvr = pctr * pcvr`` holds
exactly in serving/scores. The clip only bites where the two maps disagree
(calibrated pCTCVR above calibrated pCTR, impossible for probabilities); pCTCVR is
then capped at pCTR.

Ranking: within one field value a single map applies to pCTR and to pCTCVR, and
every map is monotone non-decreasing, strictly increasing between the first and
the last knot, so two impressions of the same field value keep their order (the
cap above aside); scores never become equal unless they fall in the same flat
end piece. Across field values the order changes: that is what field-aware
calibration corrects. The derived pCVR is a ratio and is not a monotone map of
the raw pCVR.

Serialised form (:meth:`CalibrationMaps.to_state`), a plain dict safe for
``torch.load(weights_only=True)``, saved as ``calibration.pt`` in the artifact::

    {"format": 1, "model_id": str, "calibration_id": str, "method": str,
     "fields": [str], "min_count": int, "dates": [str],
     "maps": {"pctr" | "pctcvr": {"global": {"x": float64 [K], "y": float64 [K]},
                                   "by_value": {value: {"x": ..., "y": ...}}}}}

(``x``/``y``: the knots, for Platt the two parameters ``x = [a, b]``, ``y = []``.)
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

STATE_FORMAT = 1
FILE_NAME = "calibration.pt"
TARGETS = ("pctr", "pctcvr")
METHODS = ("isotonic", "platt")
_EPS = 1e-7  # scores are kept inside (eps, 1 - eps): logit and log loss stay finite


class CalibrationError(ValueError):
    """Maps that do not belong to the model, or that cannot be fitted."""


# --------------------------------------------------------------------------- isotonic (PAV)


def pav(x: np.ndarray, y: np.ndarray, w: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted isotonic regression of ``y`` on ``x`` by pool-adjacent-violators.

    Rows of equal ``x`` are pooled first (they must get one value). Returns the
    blocks in increasing order: (weighted mean x, fitted value, weight), with
    fitted values strictly increasing: adjacent blocks with equal means merge.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(x) if w is None else np.asarray(w, dtype=np.float64)
    if x.size == 0:
        raise CalibrationError("isotonic regression on no rows")
    order = np.argsort(x, kind="mergesort")
    x, y, w = x[order], y[order], w[order]
    starts = np.r_[0, np.flatnonzero(np.diff(x)) + 1]
    sw = np.add.reduceat(w, starts)
    sy = np.add.reduceat(w * y, starts)
    sx = np.add.reduceat(w * x, starts)
    # Stack of blocks as running sums; a new point merges backwards while it does
    # not exceed the block before it.
    bw, by, bx = [], [], []
    for i in range(len(sw)):
        cw, cy, cx = sw[i], sy[i], sx[i]
        while bw and by[-1] / bw[-1] >= cy / cw:
            cw, cy, cx = cw + bw.pop(), cy + by.pop(), cx + bx.pop()
        bw.append(cw)
        by.append(cy)
        bx.append(cx)
    bw_, by_, bx_ = np.array(bw), np.array(by), np.array(bx)
    return bx_ / bw_, by_ / bw_, bw_


def isotonic_knots(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots (x [K], y [K]) of the isotonic map of raw scores ``p`` to labels ``y``.

    The knots are the PAV blocks' centres (mean raw score of the block) with the
    block's rate. Between knots the map interpolates linearly, so it is strictly
    increasing there and distinct raw scores stay distinct (a step function would
    tie every score of a block, throwing away the model's order inside it).
    Below the first knot and above the last the map is the line through (0, 0)
    and that knot (proportional): strictly increasing too, and no score is mapped
    to exactly 0 (nor above 1 - 1e-7). A lowest block without any positive (rate 0, common for pCTCVR) gets
    the rate that proportionality with the next block gives it (``y1 * c0 / c1``),
    so no impression is predicted impossible (an infinite log loss) and the
    lowest block is not one tie. The block rates are then scaled by one factor
    so that the map's total over the calibration rows equals their labels' total
    (what PAV's step function gives; interpolation alone was off by ~5% on a
    sparse target).
    """
    cx, cy, _ = pav(np.clip(p, _EPS, 1 - _EPS), y)
    if cy[0] <= 0.0:
        cy = cy.copy()
        cy[0] = cy[1] * cx[0] / cx[1] if len(cy) > 1 else _EPS
    xs, ys = cx, cy
    if xs[0] > 0.0:
        xs, ys = np.r_[0.0, xs], np.r_[0.0, ys]
    if xs[-1] < 1.0:  # continue proportionally (the line through the origin and the last knot)
        xs, ys = np.r_[xs, 1.0], np.r_[ys, ys[-1] / xs[-1]]
    # Interpolating between centres (and lifting an empty lowest block) moves the
    # total a little off the labels' total, which PAV itself preserves. Every piece
    # is linear in the knots' rates, so one factor on them restores it exactly.
    total = np.interp(np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS), xs, ys).sum()
    if total > 0:
        ys = ys * (float(np.sum(y)) / total)
    ys[1:] = np.clip(ys[1:], _EPS, 1 - _EPS)
    return xs, ys


# --------------------------------------------------------------------------- Platt


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def fit_platt(p: np.ndarray, y: np.ndarray, steps: int = 50) -> tuple[float, float]:
    """(a, b) of ``sigmoid(a * logit(p) + b)`` minimising the log loss (Newton's method).

    Starts at the identity (1, 0). Raises :class:`CalibrationError` if the fitted
    slope is not positive (the map would reverse the model's ranking).
    """
    z = _logit(p)
    y = np.asarray(y, dtype=np.float64)
    X = np.c_[z, np.ones_like(z)]
    theta = np.array([1.0, 0.0])
    for _ in range(steps):
        q = 1.0 / (1.0 + np.exp(-(X @ theta)))
        grad = X.T @ (q - y)
        hess = (X * (q * (1 - q))[:, None]).T @ X + 1e-9 * np.eye(2)
        delta = np.linalg.solve(hess, grad)
        theta = theta - delta
        if np.max(np.abs(delta)) < 1e-10:
            break
    a, b = float(theta[0]), float(theta[1])
    if not (a > 0 and math.isfinite(a) and math.isfinite(b)):
        raise CalibrationError(
            f"Platt scaling fitted slope {a:.4g} (must be > 0): the raw scores rank "
            f"inversely or not at all on the calibration day; use isotonic"
        )
    return a, b


# --------------------------------------------------------------------------- one map


@dataclass(frozen=True)
class Map:
    """One monotone map of raw scores to probabilities. ``x``/``y``: knots (isotonic) or
    ``x = [a, b]`` (platt)."""

    method: str
    x: np.ndarray
    y: np.ndarray

    def __call__(self, p: np.ndarray) -> np.ndarray:
        p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
        if self.method == "platt":
            a, b = self.x
            return 1.0 / (1.0 + np.exp(-(a * _logit(p) + b)))
        return np.interp(p, self.x, self.y)

    @classmethod
    def fit(cls, method: str, p: np.ndarray, y: np.ndarray) -> "Map":
        if method == "platt":
            return cls("platt", np.array(fit_platt(p, y)), np.zeros(0))
        xs, ys = isotonic_knots(p, y)
        return cls("isotonic", xs, ys)

    def to_state(self) -> dict[str, Any]:
        import torch

        return {
            "x": torch.from_numpy(np.ascontiguousarray(self.x, dtype=np.float64)),
            "y": torch.from_numpy(np.ascontiguousarray(self.y, dtype=np.float64)),
        }

    @classmethod
    def from_state(cls, method: str, s: dict[str, Any]) -> "Map":
        return cls(method, np.asarray(s["x"], dtype=np.float64), np.asarray(s["y"], dtype=np.float64))


# --------------------------------------------------------------------------- the model's maps


def field_keys(field_values: dict[str, np.ndarray], fields: list[str]) -> np.ndarray:
    """Per row, the field value a map is chosen by: ``"v"`` for one field, ``"v1|v2"`` for several.

    ``field_values``: encoded categorical column per field name, int arrays [n].
    """
    missing = [f for f in fields if f not in field_values]
    if missing:
        raise CalibrationError(f"calibration fields {missing} have no values here; have " f"{sorted(field_values)}")
    cols = [np.asarray(field_values[f]).astype(np.int64).astype(str) for f in fields]
    out = cols[0]
    for c in cols[1:]:
        out = np.char.add(np.char.add(out, "|"), c)
    return out


@dataclass
class CalibrationMaps:
    """The calibration of one model: a global map and per-field-value maps per target."""

    model_id: str
    method: str
    fields: list[str]
    min_count: int
    dates: list[str]
    global_maps: dict[str, Map]
    by_value: dict[str, dict[str, Map]] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)  # rows and positives of the fit (for meta)

    @property
    def calibration_id(self) -> str:
        """Content hash of the maps: which calibration scored a row of serving/scores."""
        h = hashlib.sha256(f"{self.model_id}|{self.method}|{self.fields}|{self.dates}".encode())
        for t in TARGETS:
            for key, m in [("", self.global_maps[t]), *sorted(self.by_value.get(t, {}).items())]:
                h.update(f"{t}:{key}".encode())
                h.update(np.asarray(m.x, np.float64).tobytes())
                h.update(np.asarray(m.y, np.float64).tobytes())
        return "cal-" + h.hexdigest()[:12]

    @classmethod
    def fit(
        cls,
        model_id: str,
        pctr: np.ndarray,
        pctcvr: np.ndarray,
        click: np.ndarray,
        conversion: np.ndarray,
        field_values: Optional[dict[str, np.ndarray]] = None,
        *,
        method: str = "isotonic",
        fields: Optional[list[str]] = None,
        min_count: int = 100,
        dates: Optional[list[str]] = None,
    ) -> "CalibrationMaps":
        """Fit on one calibration set: raw scores and labels [n], encoded field columns [n]."""
        if method not in METHODS:
            raise CalibrationError(f"calibration.method {method!r} is not one of {', '.join(METHODS)}")
        fields = list(fields or [])
        o = np.asarray(click, dtype=np.float64)
        labels = {"pctr": o, "pctcvr": o * np.asarray(conversion, dtype=np.float64)}
        raw = {"pctr": np.asarray(pctr, np.float64), "pctcvr": np.asarray(pctcvr, np.float64)}
        for t in TARGETS:
            if labels[t].sum() <= 0:
                raise CalibrationError(
                    f"calibration day(s) {dates}: no positive for {t} among "
                    f"{len(o):,} rows; pick a day with clicks and conversions"
                )
        glob = {t: Map.fit(method, raw[t], labels[t]) for t in TARGETS}
        by_value: dict[str, dict[str, Map]] = {t: {} for t in TARGETS}
        counts: dict[str, Any] = {
            "rows": int(len(o)),
            "clicks": int(labels["pctr"].sum()),
            "conversions": int(labels["pctcvr"].sum()),
            "values": {},
        }
        if fields:
            keys = field_keys(field_values or {}, fields)
            uniq, inv = np.unique(keys, return_inverse=True)
            for t in TARGETS:
                pos = np.bincount(inv, weights=labels[t], minlength=len(uniq))
                for j in np.flatnonzero(pos >= min_count):
                    rows = inv == j
                    by_value[t][str(uniq[j])] = Map.fit(method, raw[t][rows], labels[t][rows])
                counts["values"][t] = {
                    "own_map": len(by_value[t]),
                    "global_fallback": int(len(uniq) - len(by_value[t])),
                }
        return cls(model_id, method, fields, int(min_count), list(dates or []), glob, by_value, counts)

    def apply(
        self, pctr: np.ndarray, pctcvr: np.ndarray, field_values: Optional[dict[str, np.ndarray]] = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Calibrated (pctr, pcvr, pctcvr) float64 [n] of raw pctr, pctcvr [n] (module doc)."""
        raw = {"pctr": np.asarray(pctr, np.float64), "pctcvr": np.asarray(pctcvr, np.float64)}
        out = {t: self.global_maps[t](raw[t]) for t in TARGETS}
        if self.fields and any(self.by_value.get(t) for t in TARGETS):
            keys = field_keys(field_values or {}, self.fields)
            uniq, inv = np.unique(keys, return_inverse=True)
            for t in TARGETS:
                maps = self.by_value.get(t, {})
                for j, k in enumerate(uniq):
                    m = maps.get(str(k))
                    if m is not None:
                        rows = inv == j
                        out[t][rows] = m(raw[t][rows])
        pctr_c = out["pctr"]
        pcvr = np.clip(out["pctcvr"] / pctr_c, 0.0, 1.0)
        return pctr_c, pcvr, pctr_c * pcvr

    # ---- serialisation

    def to_state(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "model_id": self.model_id,
            "calibration_id": self.calibration_id,
            "method": self.method,
            "fields": list(self.fields),
            "min_count": self.min_count,
            "dates": list(self.dates),
            "maps": {
                t: {
                    "global": self.global_maps[t].to_state(),
                    "by_value": {k: m.to_state() for k, m in self.by_value.get(t, {}).items()},
                }
                for t in TARGETS
            },
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], model_id: str, where: str = "calibration maps") -> "CalibrationMaps":
        """Rebuild from :meth:`to_state`; refuses maps saved for another model id."""
        if state.get("format") != STATE_FORMAT:
            raise CalibrationError(f"{where}: format {state.get('format')!r}, this code reads {STATE_FORMAT}")
        if state.get("model_id") != model_id:
            raise CalibrationError(
                f"{where}: the maps were fitted for model {state.get('model_id')!r}, "
                f"not {model_id!r}; refit them with `esmm calibrate --model {model_id} "
                f"--date D`"
            )
        method = state["method"]
        maps = state["maps"]
        obj = cls(
            model_id,
            method,
            list(state["fields"]),
            int(state["min_count"]),
            list(state["dates"]),
            {t: Map.from_state(method, maps[t]["global"]) for t in TARGETS},
            {t: {k: Map.from_state(method, s) for k, s in maps[t]["by_value"].items()} for t in TARGETS},
        )
        if state.get("calibration_id") != obj.calibration_id:
            raise CalibrationError(
                f"{where}: content does not hash to its calibration id "
                f"{state.get('calibration_id')!r}; the file is corrupt"
            )
        return obj

    def save(self, artifact_dir: str | Path) -> Path:
        """Write ``<artifact_dir>/calibration.pt`` atomically."""

        from esmm.util.files import atomic_torch_save

        return atomic_torch_save(self.to_state(), Path(artifact_dir) / FILE_NAME)

    def summary(self) -> dict[str, Any]:
        """JSON-able description for meta.json."""
        return {
            "calibration_id": self.calibration_id,
            "method": self.method,
            "fields": self.fields,
            "min_count": self.min_count,
            "dates": self.dates,
            "counts": self.counts,
            "file": FILE_NAME,
        }


def load(artifact_dir: str | Path, model_id: str) -> Optional[CalibrationMaps]:
    """The maps of an artifact (``weights_only=True``), or None when it has none (uncalibrated)."""
    import torch

    path = Path(artifact_dir) / FILE_NAME
    if not path.exists():
        return None
    return CalibrationMaps.from_state(torch.load(path, map_location="cpu", weights_only=True), model_id, str(path))


def apply(
    maps: Optional[CalibrationMaps],
    pctr: np.ndarray,
    pctcvr: np.ndarray,
    field_values: Optional[dict[str, np.ndarray]] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibrated (pctr, pcvr, pctcvr) [n]; without maps the raw scores with pcvr = pctcvr / pctr."""
    if maps is None:
        pctr = np.asarray(pctr, np.float64)
        pctcvr = np.asarray(pctcvr, np.float64)
        return pctr, np.clip(pctcvr / np.clip(pctr, _EPS, None), 0.0, 1.0), pctcvr
    return maps.apply(pctr, pctcvr, field_values)
