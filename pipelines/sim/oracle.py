"""Oracle metrics of a generated world: how well its true probabilities rank its outcomes.

These are the ceilings a model can approach on that world. Each AUC ranks the
outcome with the probability that generated it:

==================  ===============================  ==========================================
metric              score                            label, rows
==================  ===============================  ==========================================
``ctr_auc``         true_ctr                         click, all impressions
``cvr_auc_clicked`` true_cvr                         conversion, clicked impressions
``cvr_auc_all``     true_cvr                         potential_conversion, all impressions
``ctcvr_auc``       true_ctr * true_cvr              click * potential_conversion, all
==================  ===============================  ==========================================

plus ``mean_true_cvr_all`` / ``mean_true_cvr_clicked`` (their ratio shows the
world's selection bias) and counts.

The AUCs are computed in Spark, linear in rows, at any scale: scores are binned
on the logit scale (width :data:`BIN_WIDTH`, ~30,000 bins over any probability a
double holds away from 0 and 1), positives and negatives are counted per
(group, metric, bin), and a window over the bins of a group accumulates the
negatives ranked below. Pairs inside one bin count one half, as ties do, so the
result is the exact AUC of the binned score; the error against the unbinned
score is at most the share of pairs that share a bin (below 1e-3 on any world
generated here, whose logits spread over several units).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

BIN_WIDTH = 0.001  # logit units
_EPS = 1e-12

ORACLE_METRICS = ("ctr_auc", "cvr_auc_clicked", "cvr_auc_all", "ctcvr_auc")


def _logit_bin(p: Column) -> Column:
    q = F.least(F.greatest(p, F.lit(_EPS)), F.lit(1.0 - _EPS))
    return F.floor(F.log(q / (1.0 - q)) / BIN_WIDTH).cast("long")


def binned_auc(df: DataFrame, group: str, metric: str, score: str, label: str) -> DataFrame:
    """AUC of ``score`` against the 0/1 ``label`` per value of ``group`` and ``metric``.

    ``df``: one row per scored row, columns ``group``, ``metric`` (which AUC the
    row counts in), ``score`` in [0, 1] and ``label`` 0/1. Returns one row per
    (group, metric): ``group``, ``metric``, ``auc`` DOUBLE (NULL without a positive
    or without a negative).
    """
    b = (
        df.select(group, metric, _logit_bin(F.col(score)).alias("bin"), F.col(label).cast("double").alias("y"))
        .groupBy(group, metric, "bin")
        .agg(F.sum("y").alias("pos"), F.sum(1.0 - F.col("y")).alias("neg"))
    )
    below = Window.partitionBy(group, metric).orderBy("bin").rowsBetween(Window.unboundedPreceding, -1)
    b = b.select("*", F.coalesce(F.sum("neg").over(below), F.lit(0.0)).alias("neg_below"))
    agg = b.groupBy(group, metric).agg(
        F.sum(F.col("pos") * (F.col("neg_below") + 0.5 * F.col("neg"))).alias("num"),
        (F.sum("pos") * F.sum("neg")).alias("den"),
    )
    return agg.select(group, metric, F.when(F.col("den") > 0, F.col("num") / F.col("den")).alias("auc"))


def oracle_metrics(outcomes: DataFrame, group: str = "dt") -> DataFrame:
    """Oracle metrics per value of ``group`` (a pure transform).

    ``outcomes``: ``true_ctr`` DOUBLE, ``true_cvr`` DOUBLE, ``click`` INT,
    ``potential_conversion`` INT and ``group`` (one row per impression, before any
    logging mess). Returns one row per group: ``group``, ``impressions``, ``clicks``,
    ``conversions`` (clicked and converted), ``potential_conversions``,
    ``mean_true_ctr``, ``mean_true_cvr_all``, ``mean_true_cvr_clicked``, and one
    DOUBLE column per name in :data:`ORACLE_METRICS`.
    """
    click, pot = F.col("click"), F.col("potential_conversion")
    variants = F.array(
        F.struct(
            F.lit("ctr_auc").alias("m"), F.col("true_ctr").alias("s"), click.alias("y"), F.lit(True).alias("keep")
        ),
        F.struct(
            F.lit("cvr_auc_clicked").alias("m"),
            F.col("true_cvr").alias("s"),
            pot.alias("y"),
            (click == 1).alias("keep"),
        ),
        F.struct(
            F.lit("cvr_auc_all").alias("m"), F.col("true_cvr").alias("s"), pot.alias("y"), F.lit(True).alias("keep")
        ),
        F.struct(
            F.lit("ctcvr_auc").alias("m"),
            (F.col("true_ctr") * F.col("true_cvr")).alias("s"),
            (click * pot).alias("y"),
            F.lit(True).alias("keep"),
        ),
    )
    long = (
        outcomes.select(group, F.explode(variants).alias("v"))
        .where(F.col("v.keep"))
        .select(group, F.col("v.m").alias("metric"), F.col("v.s").alias("score"), F.col("v.y").alias("label"))
    )
    aucs = (
        binned_auc(long, group, "metric", "score", "label")
        .groupBy(group)
        .pivot("metric", list(ORACLE_METRICS))
        .agg(F.first("auc"))
    )
    counts = outcomes.groupBy(group).agg(
        F.count(F.lit(1)).alias("impressions"),
        F.sum(click).cast("long").alias("clicks"),
        F.sum(click * pot).cast("long").alias("conversions"),
        F.sum(pot).cast("long").alias("potential_conversions"),
        F.avg("true_ctr").alias("mean_true_ctr"),
        F.avg("true_cvr").alias("mean_true_cvr_all"),
        (F.sum(click * F.col("true_cvr")) / F.sum(click)).alias("mean_true_cvr_clicked"),
    )
    return counts.join(aucs, group, "left")


def world_oracle(outcomes: DataFrame) -> DataFrame:
    """:func:`oracle_metrics` per ``dt`` plus one row with ``dt`` = ``'all'`` (every day)."""
    per_day = oracle_metrics(outcomes, "dt")
    overall = oracle_metrics(outcomes.withColumn("dt", F.lit("all")), "dt")
    return per_day.unionByName(overall)


def format_oracle(row: dict) -> str:
    """One line of a world's oracle metrics (a row of :func:`oracle_metrics` as a dict)."""
    aucs = " ".join(f"{m}={row[m]:.4f}" for m in ORACLE_METRICS if row.get(m) is not None)
    ratio = row["mean_true_cvr_clicked"] / row["mean_true_cvr_all"] if row.get("mean_true_cvr_all") else float("nan")
    return (
        f"{row['impressions']:,} impressions, {row['clicks']:,} clicks, {row['conversions']:,} conversions; "
        f"oracle {aucs}; mean true CVR clicked/all = {ratio:.3f}"
    )


def read_oracle(spark: SparkSession, cfg, day: str = "all") -> dict:
    """The sim/oracle row of ``day`` (a dt or 'all') as a dict; KeyError naming the
    table when the world has none (written by an older generator)."""
    path = cfg.lakehouse.path("oracle")
    try:
        row = spark.read.format("delta").load(path).where(F.col("dt") == day).first()
    except Exception as e:  # AnalysisException: no Delta table there
        raise KeyError(f"{path}: no oracle table; run esmm generate again") from e
    if row is None:
        raise KeyError(f"{path}: no row for dt={day!r}")
    return row.asDict()
