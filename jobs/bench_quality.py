"""``esmm bench quality``: naive vs ESMM vs ESCM2-IPS/DR on generated logs, several seeds.

Steps: generate logs (``pipelines.generate``) -> label and encode into
``curated/examples`` -> train each model kind with each seed on days 1..n-1 ->
evaluate on day n -> one table of mean ± std per metric (like Table 2 of the
ESMM paper, plus the truth-based metrics).

TEMPORARY minimal labelling (:func:`minimal_examples`): the label and feature
jobs of issue 3 are not on main yet, so this bench labels the generator output
itself: impressions deduplicated by id; click = a click with that impression id
within ``labels.click_window``; conversion = a conversion whose click_id belongs
to a click of the impression, within ``labels.attribution_window`` of that click.
Conversions without click_id (which need last-touch attribution) are not
generated here (``generate.no_click_id_rate=0``) rather than mis-attributed;
malformed records are off (the generator's default). All generated conversions
are in the raw table already (the generator writes future ones too), so every
label is mature (``label_mature`` = true). Replace by the issue-3 jobs when they land.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Optional

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from esmm.config import MODEL_KINDS, Config, load_config
from esmm.evaluate import METRIC_ORDER, format_table

SIZES = {  # name: (days, impressions per day); the last day is the evaluation day
    "tiny": (3, 5_000),
    "default": (7, 60_000),
    "large": (8, 250_000),
    "xl": (15, 1_000_000),
}


def minimal_examples(impressions: DataFrame, clicks: DataFrame, conversions: DataFrame,
                     cfg: Config) -> DataFrame:
    """Raw logs -> rows of the ``curated/examples`` contract (see module docstring)."""
    from pipelines.features import encode_features

    click_window = cfg.labels.seconds("click_window")
    attribution = cfg.labels.seconds("attribution_window")
    imp = impressions.dropDuplicates(["impression_id"])
    clk = clicks.dropDuplicates(["click_id"]).select(
        "click_id", F.col("impression_id"), F.col("ts").alias("click_ts"))
    clk = clk.join(imp.select("impression_id", F.col("ts").alias("imp_ts")), "impression_id").where(
        F.col("click_ts").cast("long") - F.col("imp_ts").cast("long") <= click_window)
    clicked = clk.groupBy("impression_id").agg(F.lit(1).alias("click"))
    conv = conversions.dropDuplicates(["conversion_id"]).where(F.col("click_id").isNotNull()).select(
        "click_id", F.col("ts").alias("conv_ts")).join(clk, "click_id").where(
        (F.col("conv_ts").cast("long") - F.col("click_ts").cast("long")).between(0, attribution))
    converted = conv.groupBy("impression_id").agg(F.lit(1).alias("conversion"))
    labelled = (imp.join(clicked, "impression_id", "left").join(converted, "impression_id", "left")
                .select("*", F.coalesce("click", F.lit(0)).cast("int").alias("_c"),
                        F.coalesce("conversion", F.lit(0)).cast("int").alias("_v"))
                .drop("click", "conversion", "dt")
                .withColumnRenamed("_c", "click").withColumnRenamed("_v", "conversion")
                .withColumn("dt", F.date_format(F.col("ts"), "yyyy-MM-dd"))
                .withColumn("label_mature", F.lit(True)))
    enc = encode_features(labelled, cfg.features)
    cols = ["impression_id", "dt", "click", "conversion", "label_mature",
            *[f.name for f in cfg.features.categorical], *[f.name for f in cfg.features.numeric],
            "feature_mapping_id"]
    return enc.select(*cols)


def prepare(spark: SparkSession, cfg: Config) -> dict[str, int]:
    """Generate raw logs and sim/truth, then write curated/examples. Returns row counts."""
    from pipelines import generate
    from pipelines.delta_io import read_delta, write_delta

    counts = generate.run(spark, cfg)
    ex = minimal_examples(read_delta(spark, cfg.lakehouse.path("impressions")),
                          read_delta(spark, cfg.lakehouse.path("clicks")),
                          read_delta(spark, cfg.lakehouse.path("conversions")), cfg)
    # One file per day and a few row groups per file: row-group shuffling has units to shuffle.
    path = cfg.lakehouse.path("examples")
    (ex.repartition(len(cfg.generate.dates), "dt").write.format("delta").mode("overwrite")
     .option("overwriteSchema", "true").option("parquet.block.size", str(4 * 1024 * 1024))
     .partitionBy("dt").save(path))
    counts["examples"] = spark.read.format("delta").load(path).count()
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
    gen = [f"generate.days={days}", f"generate.impressions_per_day={per_day}",
           "generate.no_click_id_rate=0.0", "generate.malformed_rate=0.0"]
    if cvr is not None:
        gen.append(f"generate.cvr={cvr}")
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
            f"{seeds} seed(s), {epochs} epoch(s); eval rows={first.get('rows', 0):,.0f} "
            f"clicks={first.get('clicks', 0):,.0f} conversions={first.get('conversions', 0):,.0f}; "
            f"{time.time() - t0:.0f}s")
    # Transposed (metrics as rows) so the four models fit side by side.
    table = format_table({m: {k: rows[k][m] for k in rows} for m in metric_names}, list(rows))
    out = head + "\n" + table.replace("model", "metric", 1)
    print(out, flush=True)
    return out
