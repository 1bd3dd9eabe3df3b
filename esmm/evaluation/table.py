"""The one order of evaluation metrics and the one way to print them as text.

Used by ``esmm evaluate``, ``esmm bench`` (:mod:`benchmarks.quality`) and the
nightly report (:mod:`pipelines.report.page`: its HTML table and the demo's text
table). Metric names are those of :func:`esmm.evaluation.metrics.evaluate`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

METRIC_ORDER = (
    "rows",
    "clicks",
    "conversions",
    "ctr_auc",
    "cvr_auc_clicked",
    "ctcvr_auc",
    "cvr_auc_all_truth",
    "cvr_auc_all_potential",
    "ctr_logloss",
    "cvr_logloss_clicked",
    "ctcvr_logloss",
    "ctr_calibration",
    "cvr_calibration_clicked",
    "ctcvr_calibration",
    "pcvr_bias_all",
    "pcvr_bias_clicked",
    "pcvr_over_all",
    "pcvr_over_clicked",
    # calibration, before (_raw) and after (_cal) the artifact's maps (esmm.calibration.metrics)
    "ctcvr_pcoc_raw",
    "ctcvr_pcoc_cal",
    "ctr_pcoc_raw",
    "ctr_pcoc_cal",
    "ctcvr_field_rce_position_raw",
    "ctcvr_field_rce_position_cal",
    "ctcvr_ece_raw",
    "ctcvr_ece_cal",
)


def ordered(names: Iterable[str]) -> list[str]:
    """``names`` in :data:`METRIC_ORDER`, then any others alphabetically."""
    names = set(names)
    return [m for m in METRIC_ORDER if m in names] + sorted(names - set(METRIC_ORDER))


def format_value(v: Any) -> str:
    """One cell: floats to 4 decimals (counts of 1000 or more as whole numbers with
    thousands separators), NaN as ``n/a``, None as empty, anything else as ``str``."""
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4f}"
    return str(v)


def format_table(rows: dict[str, dict[str, Any]], columns: Optional[list[str]] = None, corner: str = "model") -> str:
    """Plain-text table: one line per key of ``rows``, one column per entry of ``columns``.

    ``columns`` defaults to the metrics any row holds, in :func:`ordered` order;
    ``corner`` heads the first column (e.g. ``model``, or ``metric`` for a table
    whose rows are metrics).
    """
    cols = columns or ordered(m for r in rows.values() for m in r)
    cells = [[corner, *cols]]
    for name, r in rows.items():
        cells.append([name, *[format_value(r.get(c)) for c in cols]])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells)
