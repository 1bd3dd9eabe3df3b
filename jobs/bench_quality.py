"""``esmm bench quality``: naive vs ESMM vs ESCM2-IPS/DR on generated logs, several seeds.

Steps (the production pipeline, nothing bench-specific in between):

1. ``pipelines.generate.run``: raw/impressions, raw/clicks, raw/conversions and
   sim/truth for ``generate.days`` days, with the generator's defaults (duplicates,
   late arrivals, multi-clicks and ``no_click_id_rate`` = 0.1 conversions that need
   last-touch attribution: the label job's attribution is part of what is measured).
   Only the size (``--size``) and, with ``--cvr``, ``generate.cvr`` are set.
2. ``pipelines.labels.run`` for every generated day, all with one as-of time
   (:func:`backfill_as_of`)::

       as_of = end of the last generated day (next midnight UTC)
               + labels.click_window + labels.attribution_window

   i.e. a backfill run once the logs are complete. The generator writes every
   event at once, including clicks and conversions that happen after the last day
   (with their own future ``dt``); ``as_of`` decides what counts. With this as-of
   every impression of every generated day has ``ts + click_window +
   attribution_window <= as_of``, so all its rows have ``label_mature`` = true
   (checked: :func:`prepare` fails otherwise). A smaller as-of (e.g. each day's
   own end, the nightly default) would leave the last days' conversions
   unobserved and their rows immature, which ``train.mature_only`` would drop.
3. ``pipelines.features.run`` for the same days -> ``curated/examples``.
4. ``esmm.train.train(cfg)`` for each model kind and seed: train on days
   1..n-1, evaluate on day n (with sim/truth metrics).
5. One table of mean ± sample std over seeds per metric (like Table 2 of the
   ESMM paper, plus the truth-based metrics).
"""
from __future__ import annotations

import datetime as dt
import math
import time
from typing import Optional

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from esmm.config import MODEL_KINDS, Config
from esmm.config_loader import load_config
from esmm.metrics_table import METRIC_ORDER, format_table
from jobs.bench_sizes import SIZES


def bench_overrides(size: str, cvr: Optional[float] = None) -> list[str]:
    """Config overrides of a bench size: only the amount of data (and the conversion
    rate when asked); every other generator setting keeps its default."""
    days, per_day = SIZES[size]
    gen = [f"generate.days={days}", f"generate.impressions_per_day={per_day}"]
    if cvr is not None:
        gen.append(f"generate.cvr={cvr}")
    return gen


def backfill_as_of(cfg: Config) -> dt.datetime:
    """As-of time of the bench's label runs: the end of the last generated day plus
    click_window + attribution_window, so every generated day's labels are mature."""
    from esmm.timeutil import default_as_of

    return default_as_of(cfg.generate.dates[-1]) + dt.timedelta(
        seconds=cfg.labels.seconds("click_window") + cfg.labels.seconds("attribution_window"))


def prepare(spark: SparkSession, cfg: Config, log=print) -> dict[str, int]:
    """Generate logs, label every generated day (as of :func:`backfill_as_of`) and build
    ``curated/examples`` for them. Returns counts (raw tables, labelled clicks and
    conversions, examples). Raises RuntimeError when any example row is immature."""
    from pipelines import features, generate, labels
    from pipelines.delta_io import read_delta

    dates = cfg.generate.dates
    counts = generate.run(spark, cfg)
    as_of = backfill_as_of(cfg)
    log(f"bench quality: labelling {dates[0]}..{dates[-1]} as of {as_of.isoformat()}")
    reports = labels.run(spark, cfg, dates, as_of, log=log)
    counts["label_clicks"] = sum(r.clicks for r in reports)
    counts["label_conversions"] = sum(r.conversions for r in reports)
    per_day = features.run(spark, cfg, dates, log=log)
    counts["examples"] = sum(per_day.values())
    path = cfg.lakehouse.path("examples")
    immature = {r["dt"]: r["count"] for r in read_delta(spark, path)
                .where(F.col("dt").isin(*dates) & ~F.col("label_mature")).groupBy("dt").count().collect()}
    if immature:
        raise RuntimeError(f"{path}: rows with label_mature=false on {immature} although labelled "
                           f"as of {as_of.isoformat()}; training would drop them")
    return counts


def _mean_std(values: list[float]) -> str:
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return "n/a"
    return f"{np.mean(v):.4f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.4f}"


def run(spark: Optional[SparkSession], conf_files: list[str], base_overrides: list[str], size: str = "default",
        seeds: int = 3, models: tuple[str, ...] = MODEL_KINDS, cvr: Optional[float] = None,
        epochs: int = 2, skip_prepare: bool = False) -> str:
    """Run the comparison; returns the printed table (also printed as it goes)."""
    from esmm.train import train

    days, per_day = SIZES[size]
    gen = bench_overrides(size, cvr)
    cfg = load_config(conf_files, [*base_overrides, *gen])
    dates = cfg.generate.dates
    t0 = time.time()
    if not skip_prepare:
        counts = prepare(spark, cfg)
        print(f"bench quality: data ready in {time.time() - t0:.0f}s: "
              + ", ".join(f"{k}={v:,}" for k, v in counts.items()), flush=True)
    results: dict[str, list[dict[str, float]]] = {m: [] for m in models}
    for seed in range(seeds):
        for kind in models:
            run_cfg = load_config(conf_files, [
                *base_overrides, *gen, f"model.kind={kind}", f"train.seed={1000 + seed}",
                f"train.train_start={dates[0]}", f"train.train_end={dates[-2]}",
                f"train.eval_dates=[{dates[-1]}]", f"train.epochs={epochs}", "train.resume=false",
                "train.progress=false"])
            r = train(run_cfg)
            results[kind].append({**r.metrics, "samples_per_s": r.samples_per_s})
            print(f"  seed {seed} {kind:9s} {r.samples:,} rows in {r.seconds:.0f}s "
                  f"({r.samples_per_s:,.0f}/s): ctcvr_auc={r.metrics.get('ctcvr_auc', math.nan):.4f} "
                  f"cvr_auc_all_truth={r.metrics.get('cvr_auc_all_truth', math.nan):.4f} "
                  f"pcvr_bias_all={r.metrics.get('pcvr_bias_all', math.nan):+.4f}", flush=True)
    metric_names = [m for m in METRIC_ORDER if m not in ("rows", "clicks", "conversions")]
    rows = {k: {m: _mean_std([r.get(m, math.nan) for r in v]) for m in metric_names}
            for k, v in results.items()}
    first = next(iter(results.values()))[0]
    head = (f"bench quality: size={size} ({days} days x {per_day:,} impressions; train "
            f"{dates[0]}..{dates[-2]}, eval {dates[-1]}), ctr={cfg.generate.ctr}, cvr={cfg.generate.cvr}, "
            f"labels as of {backfill_as_of(cfg):%Y-%m-%dT%H:%MZ}, {seeds} seed(s), {epochs} epoch(s); eval rows={first.get('rows', 0):,.0f} "
            f"clicks={first.get('clicks', 0):,.0f} conversions={first.get('conversions', 0):,.0f}; "
            f"{time.time() - t0:.0f}s")
    # Transposed (metrics as rows) so the four models fit side by side.
    table = format_table({m: {k: rows[k][m] for k in rows} for m in metric_names}, list(rows))
    out = head + "\n" + table.replace("model", "metric", 1)
    print(out, flush=True)
    return out
