"""Summaries of the tables, for the CLI, the demo and the run report."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from esmm.config.schema import Config
from pipelines.io.delta import read_delta


def raw_daily_counts(spark: SparkSession, cfg: Config) -> DataFrame:
    """Rows per arrival ``dt`` of each raw table.

    Schema: dt STRING, impressions LONG, clicks LONG, conversions LONG,
    clicks_per_impression DOUBLE, conversions_per_click DOUBLE.
    """
    parts = []
    for name in ("impressions", "clicks", "conversions"):
        df = read_delta(spark, cfg.lakehouse.path(name))
        parts.append(df.groupBy("dt").agg(F.count(F.lit(1)).alias(name)))
    out = parts[0].join(parts[1], "dt", "full").join(parts[2], "dt", "full").na.fill(0)
    return out.select(
        "dt",
        "impressions",
        "clicks",
        "conversions",
        F.round(F.col("clicks") / F.col("impressions"), 4).alias("clicks_per_impression"),
        F.round(F.col("conversions") / F.col("clicks"), 4).alias("conversions_per_click"),
    ).orderBy("dt")
