"""The run report: one HTML page with PNG charts per nightly run date.

``reports/<D>/index.html`` (``cfg.lakehouse.path("reports")``), written by the
nightly ``report`` step and by ``esmm report --date D``. Sections:

* data volumes per arrival day (raw impressions, clicks, conversions) and
  quarantined records per day and source;
* label maturity per impression day (share of label-mature rows, CTR, CVR);
* the metric table of the candidate against the champion on the evaluation
  day, and the gate's decision;
* 95% intervals of the headline metrics and the gate's test numbers, and
  reliability diagrams with per-bin intervals and counts
  (:mod:`pipelines.report.uncertainty`, from the evaluation's per-row scores;
  without them, the PNGs the evaluation wrote into each model's artifact folder);
* pCVR and pCTCVR distributions of ``serving/scores`` for the scored days;
* training curves (the per-step losses the trainer recorded in each model's
  ``losses.json``) and the history of the registered models' evaluation metrics.

Two halves: :func:`collect` reads the tables (Spark and delta-rs) into a
:class:`ReportData` of small pandas frames; :func:`render` turns a
``ReportData`` into the page with matplotlib's Agg backend, no Spark. The page
is self-contained (relative ``<img>`` paths, inline CSS, no scripts) and is
written to a temporary folder then renamed, so a reader never sees half a report.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from esmm.evaluation.table import format_table, format_value, ordered
from pipelines.report import uncertainty as report_uncertainty


@dataclass
class ReportData:
    """Everything the page shows; each frame may be empty (the section then says so)."""

    run_date: str
    volumes: pd.DataFrame  # dt, impressions, clicks, conversions
    quarantine: pd.DataFrame  # dt, source, n
    maturity: pd.DataFrame  # dt, rows, mature_share, ctr, cvr
    scores: pd.DataFrame  # dt, pcvr, pctcvr (a sample)
    models: pd.DataFrame  # model_id, created_at, status, ctcvr_auc, ctr_auc, ctcvr_calibration
    steps: list[dict[str, Any]] = field(default_factory=list)  # runs-table rows of run_date
    plan: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # role -> metrics
    model_ids: dict[str, str] = field(default_factory=dict)  # role -> model id
    gate: dict[str, Any] = field(default_factory=dict)
    reliability: dict[str, str] = field(default_factory=dict)  # role -> PNG path to copy
    curves: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # role -> losses.json records
    uncertainty: dict[str, Any] = field(default_factory=dict)  # pipelines.report.uncertainty.collect


# --------------------------------------------------------------------------- collect


def _delta_rows(path: str) -> list[dict[str, Any]]:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(path).to_pyarrow_table().to_pylist()
    except (TableNotFoundError, FileNotFoundError, OSError):
        return []


def collect(
    spark,
    cfg,
    run_date: str,
    outputs: Optional[dict[str, dict[str, Any]]] = None,
    plan: Optional[dict[str, Any]] = None,
    score_sample: int = 20_000,
) -> ReportData:
    """Read what the page shows (small aggregates) for ``run_date``.

    ``outputs``: the nightly steps' outputs (default: read from the runs table);
    ``plan``: the run's date plan (default: the one the labels step recorded).
    """
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from esmm.registry import artifacts as registry
    from pipelines.nightly.runs import RunsTable

    def table(name: str):
        path = cfg.lakehouse.path(name)
        return spark.read.format("delta").load(path) if DeltaTable.isDeltaTable(spark, path) else None

    runs = RunsTable(cfg.lakehouse.path("runs"))
    steps = runs.rows(run_date) if _delta_rows(cfg.lakehouse.path("runs")) else []
    if outputs is None:
        outputs = {s["step"]: json.loads(s["outputs"]) if s["outputs"] else {} for s in steps}
    plan = plan or (outputs.get("labels") or {}).get("plan") or {}

    parts = []
    for name in ("impressions", "clicks", "conversions"):
        df = table(name)
        if df is not None:
            parts.append(
                df.where(F.col("dt") <= run_date).groupBy("dt").count().toPandas().rename(columns={"count": name})
            )
    volumes = pd.DataFrame(columns=["dt", "impressions", "clicks", "conversions"])
    for p in parts:
        volumes = p if volumes.empty else volumes.merge(p, on="dt", how="outer")
    volumes = volumes.fillna(0).sort_values("dt").reset_index(drop=True)

    q = table("quarantine")
    quarantine = (
        q.where(F.col("dt") <= run_date).groupBy("dt", "source").count().withColumnRenamed("count", "n").toPandas()
        if q is not None
        else pd.DataFrame(columns=["dt", "source", "n"])
    )

    lab = table("labels")
    maturity = pd.DataFrame(columns=["dt", "rows", "mature_share", "ctr", "cvr"])
    if lab is not None:
        maturity = (
            lab.where(F.col("dt") <= run_date)
            .groupBy("dt")
            .agg(
                F.count(F.lit(1)).alias("rows"),
                F.avg(F.col("label_mature").cast("double")).alias("mature_share"),
                F.avg("click").alias("ctr"),
                (F.sum("conversion") / F.greatest(F.sum("click"), F.lit(1))).alias("cvr"),
            )
            .orderBy("dt")
            .toPandas()
        )

    sc = table("scores")
    score_dates = plan.get("score_dates") or [run_date]
    scores = pd.DataFrame(columns=["dt", "pcvr", "pctcvr"])
    if sc is not None:
        sel = sc.where(F.col("dt").isin(score_dates)).select("dt", "pcvr", "pctcvr")
        scores = sel.orderBy(F.xxhash64("pctcvr", "pcvr")).limit(score_sample).toPandas()

    reg = registry.list_models(cfg.lakehouse.path("registry"))
    models = pd.DataFrame(
        reg, columns=list(reg[0].keys()) if reg else ["model_id", "created_at", "status", "ctcvr_auc", "ctr_auc"]
    )

    ev = outputs.get("evaluate") or {}
    gate = outputs.get("gate") or {}
    model_ids = {k: v for k, v in (ev.get("model_ids") or {}).items() if v}
    metrics = ev.get("metrics") or {}
    reliability, curves = {}, {}
    for role, mid in model_ids.items():
        artifact = Path(cfg.lakehouse.path("models")) / mid
        png = ev.get("reliability", {}).get(role) or str(artifact / "reliability.png")
        if Path(png).is_file():
            reliability[role] = png
        losses = registry.read_losses(artifact)
        if losses:
            curves[role] = losses
    return ReportData(
        run_date,
        volumes,
        quarantine,
        maturity,
        scores,
        models,
        steps,
        plan,
        metrics,
        model_ids,
        gate,
        reliability,
        curves,
        uncertainty=report_uncertainty.collect(ev.get("predictions") or {}),
    )


# --------------------------------------------------------------------------- charts


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _plt().close(fig)
    return path.name


def chart_volumes(d: ReportData, out: Path) -> Optional[str]:
    if d.volumes.empty and d.quarantine.empty:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    v = d.volumes
    if not v.empty:
        x = range(len(v))
        axes[0].bar(x, v["impressions"], color="#9ecae1", label="impressions")
        axes[0].set_xticks(list(x), v["dt"], rotation=45, ha="right", fontsize=8)
        ax2 = axes[0].twinx()
        ax2.plot(list(x), v["clicks"], "o-", color="#e6550d", label="clicks")
        ax2.plot(list(x), v["conversions"], "s-", color="#31a354", label="conversions")
        axes[0].set_ylabel("impressions")
        ax2.set_ylabel("clicks, conversions")
        h1, l1 = axes[0].get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        axes[0].legend(h1 + h2, l1 + l2, fontsize=8, loc="lower left")
    axes[0].set_title("raw rows per arrival day")
    q = d.quarantine
    if not q.empty:
        piv = q.pivot_table(index="dt", columns="source", values="n", aggfunc="sum").fillna(0).sort_index()
        bottom = None
        for src in piv.columns:
            axes[1].bar(piv.index, piv[src], bottom=bottom, label=src)
            bottom = piv[src] if bottom is None else bottom + piv[src]
        axes[1].legend(fontsize=8)
        axes[1].tick_params(axis="x", rotation=45, labelsize=8)
    else:
        axes[1].text(0.5, 0.5, "nothing quarantined", ha="center", va="center")
    axes[1].set_title("quarantined records per day and source")
    return _save(fig, out / "volumes.png")


def chart_maturity(d: ReportData, out: Path) -> Optional[str]:
    m = d.maturity
    if m.empty:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    axes[0].bar(m["dt"], m["mature_share"], color="#756bb1")
    axes[0].set_ylim(0, 1.05)
    axes[0].set_title("share of label-mature impressions")
    axes[1].plot(m["dt"], m["ctr"], "o-", label="CTR")
    axes[1].plot(m["dt"], m["cvr"], "s-", label="CVR (conversions / clicks)")
    axes[1].set_title("observed rates per impression day (recent days still open)")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    return _save(fig, out / "maturity.png")


def chart_scores(d: ReportData, out: Path) -> Optional[str]:
    s = d.scores
    if s.empty:
        return None
    import numpy as np

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for ax, col in zip(axes, ("pcvr", "pctcvr")):
        vals = s[col].astype(float).clip(lower=1e-7)
        bins = np.logspace(math.log10(vals.min()), math.log10(max(vals.max(), vals.min() * 1.01)), 40)
        for day, g in s.groupby("dt"):
            ax.hist(g[col].astype(float).clip(lower=1e-7), bins=bins, histtype="step", label=str(day))
        ax.set_xscale("log")
        ax.set_title(f"{col} of serving/scores (sample of {len(s):,})")
        ax.legend(fontsize=8)
    return _save(fig, out / "scores.png")


def chart_curves(d: ReportData, out: Path) -> Optional[str]:
    if not d.curves and d.models.empty:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    if d.curves:
        from esmm.registry.tracking import LOSS_RECORD_KEYS

        positive = True
        for role, hist in d.curves.items():
            h = pd.DataFrame(hist)
            for col in [c for c in h.columns if c not in LOSS_RECORD_KEYS]:
                axes[0].plot(h["step"], h[col], lw=2 if col == "total" else 1, label=f"{role} {col}")
                positive = positive and bool((h[col] > 0).all())
        if positive:  # loss parts differ by orders of magnitude (CTR vs CTCVR)
            axes[0].set_yscale("log")
        axes[0].set_xlabel("step (mean loss of the steps since the previous point)")
        axes[0].legend(fontsize=7)
    else:
        axes[0].text(0.5, 0.5, "the trainer recorded no per-step losses", ha="center", va="center")
    axes[0].set_title("training loss")
    mo = d.models
    if not mo.empty and "ctcvr_auc" in mo:
        mo = mo.sort_values("created_at")
        x = range(len(mo))
        axes[1].plot(list(x), mo["ctcvr_auc"].astype(float), "o-", label="CTCVR AUC")
        if "ctr_auc" in mo:
            axes[1].plot(list(x), mo["ctr_auc"].astype(float), "s-", label="CTR AUC")
        champ = [i for i, st in enumerate(mo["status"]) if st == "champion"]
        if champ:
            axes[1].axvline(champ[0], color="gold", lw=3, alpha=0.5, label="champion")
        axes[1].set_xticks(list(x), [str(m)[-14:] for m in mo["model_id"]], rotation=45, ha="right", fontsize=7)
        axes[1].legend(fontsize=8)
    axes[1].set_title("registered models: evaluation AUC")
    return _save(fig, out / "curves.png")


# --------------------------------------------------------------------------- page


def _fmt(v: Any) -> str:
    return html.escape(format_value(v))


def metric_table(metrics: dict[str, dict[str, float]]) -> str:
    """HTML table: one row per metric, one column per role (candidate, champion) and the delta."""
    roles = [r for r in ("candidate", "champion") if r in metrics] or list(metrics)
    if not roles:
        return "<p>No evaluation this run.</p>"
    names = ordered(m for r in roles for m in metrics[r])
    head = "".join(f"<th>{html.escape(r)}</th>" for r in roles)
    both = len(roles) == 2
    rows = []
    for m in names:
        vals = [metrics[r].get(m) for r in roles]
        cells = "".join(f"<td>{_fmt(v) if v is not None else ''}</td>" for v in vals)
        if both:
            a, b = vals
            delta = (a - b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None
            cells += f"<td>{_fmt(float(delta)) if delta is not None else ''}</td>"
        rows.append(f"<tr><th>{html.escape(m)}</th>{cells}</tr>")
    return (
        f"<table><tr><th>metric</th>{head}{'<th>candidate - champion</th>' if both else ''}</tr>"
        + "".join(rows)
        + "</table>"
    )


def text_table(metrics: dict[str, dict[str, float]]) -> str:
    """The metric table as aligned text, for the terminal (the demo prints it)."""
    roles = [r for r in ("candidate", "champion") if r in metrics]
    if not roles:
        return "(no evaluation)"
    names = ordered(m for r in roles for m in metrics[r])
    return format_table({m: {r: metrics[r].get(m, float("nan")) for r in roles} for m in names}, roles, corner="metric")


_CSS = """body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
th:first-child{text-align:left}.ok{color:#1a7f37}.bad{color:#b42318}.note{color:#555;font-size:90%}
img{max-width:100%;border:1px solid #eee}"""


def render(d: ReportData, out_dir: str | Path) -> Path:
    """Write ``out_dir/index.html`` and its PNGs (replacing a previous report). Returns the page."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:6]}")
    tmp.mkdir(parents=True)
    try:
        body = _body(d, tmp)
        (tmp / "index.html").write_text(
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>esmm nightly {html.escape(d.run_date)}</title><style>{_CSS}</style></head>"
            f"<body>{body}</body></html>\n"
        )
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:6]}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / "index.html"


def _img(name: Optional[str], alt: str, missing: str) -> str:
    if name is None:
        return f'<p class="note">{html.escape(missing)}</p>'
    return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'


def _body(d: ReportData, out: Path) -> str:
    parts = [f"<h1>esmm nightly run {html.escape(d.run_date)}</h1>"]
    if d.steps:
        rows = "".join(
            f"<tr><th>{html.escape(s['step'])}</th><td class=\"{'bad' if s['status'] == 'failed' else 'ok'}\">"
            f"{html.escape(s['status'])}</td><td>{s['attempt']}</td>"
            f"<td style=\"text-align:left\">{html.escape(s.get('message') or '')}</td></tr>"
            for s in d.steps
        )
        parts.append(
            "<h2>Steps</h2><table><tr><th>step</th><th>status</th><th>attempt</th>"
            f"<th>message</th></tr>{rows}</table>"
        )
    if d.plan:
        mature = d.plan.get("eval_mature", True)
        note = (
            ""
            if mature
            else (
                ' <b class="bad">(labels of this day are NOT mature: conversions '
                "still to come are counted as negatives; demo setting)</b>"
            )
        )
        parts.append(
            f"<p class=\"note\">Labels refreshed for {', '.join(d.plan.get('refresh_dates') or []) or 'none'}; "
            f"trained on {', '.join(d.plan.get('train_dates') or []) or 'none'}; evaluated on "
            f"{d.plan.get('eval_date') or 'none'}{note}; scored {', '.join(d.plan.get('score_dates') or [])}.</p>"
        )
    parts.append("<h2>Candidate against champion</h2>")
    ids = ", ".join(f"{r}: {html.escape(m)}" for r, m in d.model_ids.items())
    if ids:
        parts.append(f"<p>{ids}</p>")
    parts.append(metric_table(d.metrics))
    parts.append(report_uncertainty.interval_table(d.metrics, d.uncertainty))
    if d.gate:
        ok = d.gate.get("promoted")
        parts.append(
            f"<p class=\"{'ok' if ok else 'bad'}\">Gate: {html.escape(str(d.gate.get('decision', d.gate.get('skipped', ''))))}</p>"
        )
        parts.append(report_uncertainty.gate_table(d.gate))
    parts.append("<h2>Calibration</h2>")
    if d.uncertainty.get("bins"):
        parts.append(
            _img(
                report_uncertainty.chart_reliability(d.uncertainty["bins"], out / "reliability.png"),
                "reliability diagrams with per-bin 95% intervals and counts",
                "",
            )
        )
    elif d.reliability:
        for role, png in d.reliability.items():
            name = f"reliability_{role}.png"
            shutil.copyfile(png, out / name)
            parts.append(f"<h3>{html.escape(role)}</h3>" + _img(name, f"reliability diagram, {role}", ""))
    else:
        parts.append('<p class="note">No reliability diagram this run.</p>')
    parts.append("<h2>Data volumes and quarantine</h2>")
    parts.append(_img(chart_volumes(d, out), "data volumes and quarantine counts", "No raw data found."))
    parts.append("<h2>Label maturity</h2>")
    parts.append(_img(chart_maturity(d, out), "label maturity per day", "No labels table yet."))
    parts.append("<h2>Scores</h2>")
    parts.append(_img(chart_scores(d, out), "pCVR and pCTCVR distributions", "Nothing scored yet."))
    parts.append("<h2>Training</h2>")
    parts.append(_img(chart_curves(d, out), "training curves and model history", "No model trained yet."))
    return "\n".join(parts)
