"""The run report's uncertainty: 95% intervals of the headline metrics, the gate's
test numbers, and reliability diagrams with per-bin intervals and counts.

:func:`collect` reads the evaluation's per-row scores (the ``predictions.npz``
files the nightly ``evaluate`` step wrote, :func:`esmm.evaluation.predictions.save_predictions`)
into a small JSON-able dict; the rest turns that dict into HTML and a PNG
without reading anything. Statistics: :mod:`esmm.evaluation.intervals`.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from esmm.evaluation.intervals import metric_intervals, paired_intervals, reliability_bins
from esmm.evaluation.table import ordered

LEVEL = 0.95
TASKS = (("ctr", "CTR (all impressions)"), ("cvr", "CVR (clicked impressions)"), ("ctcvr", "CTCVR (all impressions)"))
ROLES = ("candidate", "champion")


def collect(predictions: dict[str, str], n_bins: int = 10) -> dict[str, Any]:
    """``{"intervals": {role: {metric: [lo, hi]}}, "paired": {metric: [lo, hi]},
    "bins": {role: {task: {column: [values]}}}}`` from ``role -> predictions.npz``.

    Roles whose file is missing are left out; ``paired`` (candidate - champion)
    needs both, aligned on the same rows.
    """
    from esmm.evaluation.predictions import align, load_predictions

    preds = {r: load_predictions(p) for r, p in predictions.items() if r in ROLES and p and Path(p).is_file()}
    out: dict[str, Any] = {"intervals": {}, "paired": {}, "bins": {}}
    if len(preds) == 2:
        preds["candidate"], preds["champion"] = align(preds["candidate"], preds["champion"])
        p = preds["candidate"]
        out["paired"] = paired_intervals(p, preds["champion"], p["click"], p["conversion"], LEVEL)
    for role, p in preds.items():
        o, y = p["click"], p["click"] * p["conversion"]
        c = o > 0
        out["intervals"][role] = metric_intervals(p, o, p["conversion"], LEVEL)
        out["bins"][role] = {
            task: {k: v.tolist() for k, v in reliability_bins(s, t, n_bins, LEVEL).items()}
            for task, s, t in (("ctr", p["pctr"], o), ("cvr", p["pcvr"][c], y[c]), ("ctcvr", p["pctcvr"], y))
        }
    return out


def _num(v: Optional[float]) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.4f}"


def _iv(metrics: dict[str, float], ivs: dict[str, list[float]], name: str) -> str:
    v, iv = metrics.get(name), ivs.get(name)
    if v is None:
        return ""
    return f"{_num(v)} [{_num(iv[0])}, {_num(iv[1])}]" if iv else f"{_num(v)} (no interval)"


def interval_table(metrics: dict[str, dict[str, float]], unc: dict[str, Any]) -> str:
    """HTML: each metric with its 95% interval per role, and candidate - champion with its paired interval."""
    ivs = unc.get("intervals") or {}
    roles = [r for r in ROLES if r in metrics and r in ivs]
    if not roles:
        return ""
    shown = [m for m in ordered(m for r in roles for m in ivs[r]) if any(m in metrics[r] for r in roles)]
    paired = unc.get("paired") or {}
    both = len(roles) == 2
    head = "".join(f"<th>{r} [95% interval]</th>" for r in roles)
    rows = []
    for m in shown:
        cells = "".join(f"<td>{_iv(metrics[r], ivs[r], m)}</td>" for r in roles)
        if both:
            a, b = metrics["candidate"].get(m), metrics["champion"].get(m)
            cells += (
                f"<td>{_iv({m: a - b}, paired, m)}</td>"
                if m in paired and a is not None and b is not None
                else "<td></td>"
            )
        rows.append(f"<tr><th>{html.escape(m)}</th>{cells}</tr>")
    note = (
        '<p class="note">95% intervals on the evaluation day\'s rows: AUCs DeLong; log losses normal over '
        "rows; calibration (mean prediction / observed rate) Poisson score interval of the positive count; "
        "candidate - champion paired on the same rows. Metrics without one (truth-based, counts) are in "
        "the table above.</p>"
    )
    return (
        f"<table><tr><th>metric</th>{head}{'<th>candidate - champion [95%]</th>' if both else ''}</tr>"
        + "".join(rows)
        + "</table>"
        + note
    )


def gate_table(gate: dict[str, Any]) -> str:
    """HTML: the numbers of each of the gate's tests (pipelines.nightly.gate.decide)."""
    tests = gate.get("tests") or {}
    if not tests:
        return ""
    rows = []
    for name in ("ctcvr_auc", "ctcvr_logloss"):
        t = tests.get(name)
        if t:
            verdict = "worse beyond the noise" if t.get("worse") else "not worse beyond the noise"
            rows.append(
                f"<tr><th>{name} (paired)</th><td>{_num(t['candidate'])}</td><td>{_num(t['champion'])}</td>"
                f"<td>{_num(t['diff'])}</td><td>{_num(t['se'])}</td><td>{_num(t['z'])}</td>"
                f"<td>{t['p_worse']:.3g}</td><td>{t['level']:.3g}</td><td>{verdict}</td></tr>"
            )
    c = tests.get("calibration")
    if c:
        verdict = "interval wholly outside the bounds" if c.get("outside") else "interval overlaps the bounds"
        rows.append(
            f"<tr><th>ctcvr_calibration</th><td>{_num(c['ratio'])} [{_num(c['lo'])}, {_num(c['hi'])}]</td>"
            f"<td colspan=\"6\">bounds [{c['min']}, {c['max']}], {c['level']:.0%} interval</td>"
            f"<td>{verdict}</td></tr>"
        )
    counts = (
        f"<p class=\"note\">{gate.get('n_conversions', 0):,} conversions on {gate.get('n_rows', 0):,} "
        f"evaluation rows. p: one-sided p-value of \"the candidate is not worse\"; the candidate is "
        f"rejected when p &lt; level on either test (alpha split over the two).</p>"
    )
    return (
        "<table><tr><th>test</th><th>candidate</th><th>champion</th><th>diff</th><th>SE</th><th>z</th>"
        "<th>p</th><th>level</th><th>verdict</th></tr>" + "".join(rows) + "</table>" + counts
    )


def chart_reliability(bins: dict[str, dict[str, dict[str, list[float]]]], path: Path) -> Optional[str]:
    """One PNG: a row per role, a panel per task; observed rate per bin with its Wilson
    interval against the bin's mean prediction, the positives written at each point
    and the rows per bin in the corner."""
    if not bins:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    roles = [r for r in ROLES if r in bins]
    fig, axes = plt.subplots(len(roles), 3, figsize=(13, 4 * len(roles)), squeeze=False)
    for row, role in zip(axes, roles):
        for ax, (task, title) in zip(row, TASKS):
            b = {k: np.asarray(v, dtype=float) for k, v in bins[role].get(task, {}).items()}
            if not b or not len(b["n"]):
                ax.text(0.5, 0.5, "no rows", ha="center", va="center")
                ax.set_title(f"{role}: {title}")
                continue
            hi = max(float(np.nanmax(b["hi"])), float(b["mean_pred"].max()), 1e-4) * 1.1
            ax.plot([0, hi], [0, hi], "--", color="grey", lw=1, label="calibrated")
            ax.errorbar(
                b["mean_pred"],
                b["rate"],
                yerr=np.clip([b["rate"] - b["lo"], b["hi"] - b["rate"]], 0.0, None),
                fmt="o-",
                capsize=3,
                label="observed, 95% Wilson interval",
            )
            for x, yv, k in zip(b["mean_pred"], b["rate"], b["positives"]):
                ax.annotate(f"{int(k)}", (x, yv), textcoords="offset points", xytext=(4, -9), fontsize=6)
            n_lo, n_hi = int(b["n"].min()), int(b["n"].max())
            ax.text(
                0.98,
                0.02,
                f"{len(b['n'])} bins of {n_lo:,}{'' if n_lo == n_hi else f'-{n_hi:,}'} rows; "
                f"numbers: positives per bin",
                transform=ax.transAxes,
                ha="right",
                fontsize=7,
                color="#555",
            )
            ax.set_xlim(0, hi)
            ax.set_ylim(0, hi)
            ax.set_title(f"{role}: {title}")
            ax.set_xlabel("mean prediction (equal-count bin)")
            ax.set_ylabel("observed rate")
            ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name
