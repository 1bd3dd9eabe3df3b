"""The conversion-delay curve of the delayed-feedback methods (``train.delayed_feedback``
``dfm`` / ``esdfm``; the losses are in esmm/model/losses.py).

``S(e)`` = P(delay > e | the click converts within the attribution window), the delay
measured from the first click (``curated/examples.conversion_delay_s``). It is fitted,
non-parametrically, on the converted rows whose labels are mature: their delays are
fully observed, none is cut off by the as-of (an immature row's delay is censored, and a
fit on it would be biased short). A curve is ``knots`` quantiles of those delays,
``S`` linear between them, 1 at 0 and 0 past the largest delay seen.

Why not a parametric curve (Chapelle's exponential): real delays are a mixture, a third
within the hour and a long tail over days, which one exponential fits badly at both ends;
the empirical curve needs no family and only a few hundred conversions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

MIN_CONVERSIONS = 50  # fewer mature conversions: the curve would be noise; refuse to fit


@dataclass(frozen=True)
class DelayCurve:
    """An empirical delay survival curve: ``knots`` [K] seconds (sorted quantiles at
    probabilities ``probs`` [K], from 0 to 1), fitted on ``n`` delays of ``dates``."""

    knots: tuple[float, ...]
    probs: tuple[float, ...]
    n: int
    dates: tuple[str, ...] = ()

    @classmethod
    def fit(cls, delays: np.ndarray, knots: int = 201, dates: tuple[str, ...] = ()) -> "DelayCurve":
        """The curve of ``delays`` [n] seconds (>= 0). ValueError under :data:`MIN_CONVERSIONS`."""
        d = np.asarray(delays, dtype=np.float64)
        d = d[np.isfinite(d)]
        if len(d) < MIN_CONVERSIONS:
            raise ValueError(
                f"{len(d)} label-mature conversion(s) with a delay on {list(dates) or 'the fit days'}: at least "
                f"{MIN_CONVERSIONS} are needed to fit the delay curve; raise train.delay_fit_days or build "
                "curated/examples for older days"
            )
        probs = np.linspace(0.0, 1.0, knots)
        q = np.quantile(np.clip(d, 0.0, None), probs)
        return cls(tuple(float(x) for x in q), tuple(float(p) for p in probs), int(len(d)), tuple(dates))

    def survival(self, elapsed: Tensor) -> Tensor:
        """S(elapsed) [B] for ``elapsed`` [B] seconds: 1 - the curve's CDF, linear between knots."""
        x = torch.as_tensor(self.knots, dtype=torch.float64, device=elapsed.device)
        p = torch.as_tensor(self.probs, dtype=torch.float64, device=elapsed.device)
        e = elapsed.to(torch.float64)
        # Index of the first knot above e; ties (repeated quantiles) take the last equal knot.
        i = torch.searchsorted(x, e, right=True).clamp(1, len(x) - 1)
        x0, x1, p0, p1 = x[i - 1], x[i], p[i - 1], p[i]
        w = torch.where(x1 > x0, (e - x0) / (x1 - x0).clamp(min=1e-12), torch.ones_like(e))
        cdf = (p0 + w.clamp(0.0, 1.0) * (p1 - p0)).clamp(0.0, 1.0)
        cdf = torch.where(e < x[0], torch.zeros_like(cdf), cdf)
        cdf = torch.where(e >= x[-1], torch.ones_like(cdf), cdf)
        return (1.0 - cdf).to(elapsed.dtype if elapsed.is_floating_point() else torch.float32)

    def summary(self) -> dict:
        """For the artifact's meta.json: how it was fitted and its median and 90th percentile."""
        q = np.interp([0.5, 0.9], self.probs, self.knots)
        return {
            "conversions": self.n,
            "dates": list(self.dates),
            "median_s": float(q[0]),
            "p90_s": float(q[1]),
            "max_s": float(self.knots[-1]),
        }


def fit_dates(train_end: str, days: int) -> list[str]:
    """The ``days`` dates ending ``train_end`` (inclusive), oldest first: where the curve looks."""
    import datetime as dt

    end = dt.date.fromisoformat(train_end)
    return [(end - dt.timedelta(days=k)).isoformat() for k in range(days - 1, -1, -1)]


def fit_from_examples(table_path: str, version: int, train_end: str, days: int) -> DelayCurve:
    """The curve of the label-mature converted rows of ``curated/examples`` (Delta ``version``)
    in the ``days`` days ending ``train_end``. Raises ValueError (too few) or
    FileNotFoundError (no examples on those days), both naming the table and the days."""
    import pyarrow.compute as pc

    from esmm.data.examples import read_arrow, resolve_snapshot

    dates = fit_dates(train_end, days)
    snap = resolve_snapshot(table_path, dates, version)
    try:
        t = read_arrow(snap, ["conversion", "label_mature", "conversion_delay_s"], filter_mature=True)
    except Exception as e:  # noqa: BLE001 - a table of an older release lacks the column
        raise ValueError(
            f"{table_path} v{version}: cannot read conversion_delay_s on {dates[0]}..{dates[-1]} ({e}); "
            "re-run `esmm labels` and `esmm features` for those days"
        ) from e
    t = t.filter(pc.equal(t.column("conversion"), 1))
    delays = t.column("conversion_delay_s").to_numpy(zero_copy_only=False).astype(np.float64)
    return DelayCurve.fit(delays, dates=(f"{dates[0]}..{dates[-1]}",))
