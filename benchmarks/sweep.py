"""``esmm bench sweep``: where does ESMM help? A grid of generated worlds.

Grid: conversion sparsity ``generate.cvr`` (default 0.5%, 2%, 5%, 15% of clicks
convert) x selection-bias strength ``generate.selection_bias`` (none 0, default
0.5, strong 0.9), ``--seeds`` worlds per cell (default 3), each trained with
every model (default naive and ESMM) by :func:`benchmarks.quality.run_seed` (the
direct pipeline: examples straight from the simulator) at ``--size`` (default
``sweep``: 4 days x 30,000 impressions, 90,000 training rows). The time is
estimated from the first world and printed; the whole grid costs about
cells x seeds x (world + models x training).

Outputs under ``--out``: ``sweep.json`` (every run), ``sweep.png`` (three panels
with error bars = sample std over seeds: ESMM - naive entire-space CVR AUC
against potential outcomes, ESMM - naive CTCVR AUC, and each model's pCVR
over-estimation mean pCVR / mean true CVR over all impressions) and ``sweep.html``
(the chart and the numbers, with paired t-statistics).
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from pathlib import Path
from typing import Optional

from benchmarks.quality import bench_overrides, run_seed
from benchmarks.sizes import SIZES, bias_value
from benchmarks.stats import mean_std, paired
from esmm.config.loader import load_config

_NAN = {"mean": math.nan, "std": math.nan, "n": 0}


def cell_summary(records: list[dict], models: tuple[str, ...]) -> dict:
    """Paired ESMM - naive differences and per-model pCVR over-estimation of one cell."""
    out: dict = {"n": len(records)}
    if "esmm" in models and "naive" in models:
        for name in ("cvr_auc_all_potential", "ctcvr_auc", "cvr_auc_all_truth"):
            out[f"esmm_minus_naive_{name}"] = paired(
                [r["models"]["esmm"].get(name, math.nan) for r in records],
                [r["models"]["naive"].get(name, math.nan) for r in records],
            )
    for kind in models:
        for name in ("pcvr_over_all", "cvr_auc_all_potential", "ctcvr_auc"):
            out[f"{kind}_{name}"] = mean_std([r["models"][kind].get(name, math.nan) for r in records])
    out["oracle_cvr_auc_all"] = mean_std([r["oracle"]["cvr_auc_all"] for r in records])
    out["eval_conversions"] = mean_std([float(r["oracle"]["conversions"]) for r in records])
    return out


def plot(cells: dict, cvrs: list[float], biases: list[str], models: tuple[str, ...], path: Path) -> Path:
    """The three-panel PNG (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    x = list(range(len(cvrs)))
    width = 0.8 / max(len(biases), 1)
    for ax, name, title in (
        (axes[0], "cvr_auc_all_potential", "ESMM - naive: entire-space CVR AUC"),
        (axes[1], "ctcvr_auc", "ESMM - naive: CTCVR AUC"),
    ):
        for j, b in enumerate(biases):
            d = [cells.get((c, b), {}).get(f"esmm_minus_naive_{name}", _NAN) for c in cvrs]
            ax.errorbar(
                [i + (j - (len(biases) - 1) / 2) * width for i in x],
                [v["mean"] for v in d],
                yerr=[v["std"] for v in d],
                fmt="o",
                capsize=4,
                label=f"selection bias {b}",
            )
        ax.axhline(0.0, color="grey", lw=1)
        ax.set_xticks(x, [f"{c:g}" for c in cvrs])
        ax.set_xlabel("generate.cvr (conversions per click)")
        ax.set_ylabel("AUC difference (mean ± std over seeds)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    ax = axes[2]
    markers = "osD^v"
    for j, b in enumerate(biases):
        for m, kind in enumerate(models):
            d = [cells.get((c, b), {}).get(f"{kind}_pcvr_over_all", _NAN) for c in cvrs]
            ax.errorbar(
                [i + (j - (len(biases) - 1) / 2) * width + 0.03 * m for i in x],
                [v["mean"] for v in d],
                yerr=[v["std"] for v in d],
                fmt=markers[m % len(markers)],
                capsize=3,
                color=f"C{j}",
                alpha=1.0 if m == 0 else 0.6,
                label=f"{kind}, bias {b}",
            )
    ax.axhline(1.0, color="grey", lw=1)
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{c:g}" for c in cvrs])
    ax.set_xlabel("generate.cvr (conversions per click)")
    ax.set_ylabel("mean pCVR / mean true CVR, all impressions")
    ax.set_title("pCVR over-estimation (1 = unbiased)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _fmt(s: dict) -> str:
    if not s or not s.get("n"):
        return "n/a"
    t = f", t {s['t']:+.1f}" if "t" in s and math.isfinite(s["t"]) else ""
    return f"{s['mean']:+.4f} ± {s['std']:.4f}{t}"


def table_rows(cells: dict, cvrs: list[float], biases: list[str], models: tuple[str, ...]) -> list[list[str]]:
    head = [
        "cvr",
        "bias",
        "seeds",
        "eval conversions",
        "ESMM-naive ES-CVR AUC",
        "ESMM-naive CTCVR AUC",
        *[f"{k} pCVR/true" for k in models],
    ]
    rows = [head]
    for b in biases:
        for c in cvrs:
            if (c, b) not in cells:
                continue
            s = cells[(c, b)]
            rows.append(
                [
                    f"{c:g}",
                    b,
                    str(s["n"]),
                    f"{s['eval_conversions']['mean']:.0f}",
                    _fmt(s.get("esmm_minus_naive_cvr_auc_all_potential", {})),
                    _fmt(s.get("esmm_minus_naive_ctcvr_auc", {})),
                    *[f"{s[f'{k}_pcvr_over_all']['mean']:.2f} ± {s[f'{k}_pcvr_over_all']['std']:.2f}" for k in models],
                ]
            )
    return rows


def write_html(rows: list[list[str]], png: Path, header: str, path: Path) -> Path:
    img = base64.b64encode(png.read_bytes()).decode()
    cells = "\n".join(
        "<tr>"
        + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(v)}</{'th' if i == 0 else 'td'}>" for v in r)
        + "</tr>"
        for i, r in enumerate(rows)
    )
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>esmm bench sweep</title>"
        f"<style>td,th{{padding:3px 8px;border:1px solid #ccc;font-family:monospace}}</style>"
        f"</head><body><h1>esmm bench sweep</h1><p>{html.escape(header)}</p>"
        f"<img src='data:image/png;base64,{img}'><table>{cells}</table>"
        f"<p>Error bars and ± are sample std over seeds; t = paired t-statistic over seeds.</p>"
        f"</body></html>"
    )
    return path


def run(
    spark,
    conf_files: list[str],
    base_overrides: list[str],
    size: str = "sweep",
    seeds: int = 3,
    models: tuple[str, ...] = ("naive", "esmm"),
    cvrs: Optional[list[float]] = None,
    biases: Optional[list[str]] = None,
    epochs: int = 1,
    out_dir: Optional[str] = None,
) -> dict:
    """Run the grid; writes sweep.json, sweep.png and sweep.html under ``out_dir``
    (default ``<lakehouse.root>/reports/bench_sweep``). Returns the JSON."""
    cvrs = cvrs or [0.005, 0.02, 0.05, 0.15]
    biases = biases or ["none", "default", "strong"]
    for b in biases:
        bias_value(b)  # a wrong name fails before any work
    grid = [(c, b) for b in biases for c in cvrs]
    days, per_day = SIZES[size]
    cfg = load_config(conf_files, [*base_overrides, *bench_overrides(size)])
    out = Path(out_dir or Path(cfg.lakehouse.path("reports")) / "bench_sweep")
    t0 = time.time()
    records: dict = {}
    runs, total = 0, len(grid) * seeds
    result: dict = {}
    # Cell by cell, all seeds of a cell before the next, writing the outputs after each
    # run: a sweep stopped early leaves its runs, and a chart of them (the seeds column
    # says how many each cell has).
    for c, b in grid:
        ov = [*base_overrides, *bench_overrides(size, c, bias_value(b))]
        records[(c, b)] = []
        for k in range(seeds):
            records[(c, b)].append(run_seed(spark, conf_files, ov, k, models, epochs))
            runs += 1
            spent = time.time() - t0
            print(
                f"bench sweep: {runs}/{total} (cvr {c:g}, bias {b}, seed {k}) after {spent:.0f}s; "
                f"estimated total {spent / runs * total / 60:.0f} min",
                flush=True,
            )
            header = (
                f"bench sweep: {runs}/{total} runs (cvr {', '.join(f'{c:g}' for c in cvrs)} x selection "
                f"bias {', '.join(f'{b} ({bias_value(b)})' for b in biases)}, {seeds} seeds each; world "
                f"seed 42+k, train seed 2018+k), size {size} ({days} days x {per_day:,}; evaluate on the "
                f"last day), {epochs} epoch(s), models {', '.join(models)}; wall time {spent:.0f}s"
            )
            result = write_outputs(records, cvrs, biases, models, header, out)
    return result


def write_outputs(
    records: dict, cvrs: list[float], biases: list[str], models: tuple[str, ...], header: str, out: Path
) -> dict:
    """sweep.json, sweep.png, sweep.html of the cells done so far; prints the table."""
    cells = {cell: cell_summary(recs, models) for cell, recs in records.items()}
    png = plot(cells, cvrs, biases, models, out / "sweep.png")
    rows = table_rows(cells, cvrs, biases, models)
    write_html(rows, png, header, out / "sweep.html")
    md = "\n".join(
        ["| " + " | ".join(r) + " |" for r in rows[:1]]
        + ["|---" * len(rows[0]) + "|"]
        + ["| " + " | ".join(r) + " |" for r in rows[1:]]
    )
    result = {
        "header": header,
        "cells": [
            {"cvr": c, "bias": b, "selection_bias": bias_value(b), "summary": cells[(c, b)], "runs": recs}
            for (c, b), recs in records.items()
        ],
    }
    (out / "sweep.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"{header}\n\n{md}\n\nwritten: {out / 'sweep.png'}, {out / 'sweep.html'}, {out / 'sweep.json'}", flush=True)
    return result
