"""Small ``curated/examples`` Delta tables for trainer tests (the issue-3 contract).

Rows are synthetic with a known signal: field ``a`` (50 buckets) drives clicks,
field ``b`` (20 buckets) drives conversions, so a model that learns shows it.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from esmm.config.schema import CategoricalField, FeatureSpec, NumericField

TINY_SPEC = FeatureSpec(
    categorical=[CategoricalField("a", buckets=50), CategoricalField("b", buckets=20)], numeric=[NumericField("x")]
)
TINY_OVERRIDES = [
    "features.categorical=[{name: a, buckets: 50}, {name: b, buckets: 20}]",
    "features.numeric=[{name: x}]",
    "model.embedding_dim=4",
    "model.tower=[16, 8]",
    "model.dropout=0.0",
    "train.progress=false",
    "train.batch_size=128",
    "train.shuffle_buffer=512",
    "train.reader_workers=1",
]


def examples_df(
    spark: SparkSession,
    dates: list[str],
    rows_per_day: int,
    seed: int = 0,
    immature_last_day: bool = False,
    id_prefix: str = "imp",
) -> DataFrame:
    """Rows of the examples contract for TINY_SPEC (mapping id included)."""
    n = len(dates) * rows_per_day
    day = (F.col("id") / rows_per_day).cast("int")
    a = (F.col("id") * 7 % 49 + 1).cast("int")
    b = (F.col("id") * 13 % 19 + 1).cast("int")
    p_click = F.when(a % 3 == 0, 0.5).otherwise(0.1)
    p_conv = F.when(b % 2 == 0, 0.6).otherwise(0.1)
    click = (F.rand(seed) < p_click).cast("int")
    conv = (click.cast("boolean") & (F.rand(seed + 1) < p_conv)).cast("int")
    dt_col = F.element_at(F.array(*[F.lit(d) for d in dates]), day + 1)
    mature = (day < len(dates) - 1) if immature_last_day else F.lit(True)
    return spark.range(n).select(
        F.concat(F.lit(id_prefix + "-"), F.col("id").cast("string")).alias("impression_id"),
        dt_col.alias("dt"),
        click.alias("click"),
        conv.alias("conversion"),
        mature.alias("label_mature"),
        a.alias("a"),
        b.alias("b"),
        (F.rand(seed + 2)).cast("float").alias("x"),
        F.lit(TINY_SPEC.mapping_id).alias("feature_mapping_id"),
    )


def write_examples(df: DataFrame, path: str, files_per_day: int = 1, replace_where: str | None = None) -> None:
    """Write as Delta partitioned by dt, ``files_per_day`` Parquet files per date."""
    w = (
        df.repartition(files_per_day, "dt", F.col("impression_id"))
        .sortWithinPartitions("dt")
        .write.format("delta")
        .mode("overwrite")
        .partitionBy("dt")
    )
    if replace_where:
        w = w.option("replaceWhere", replace_where)
    w.save(path)


def ddp_worker(rank: int, world: int, port: int, cfg, out_dir: str) -> None:
    """Entry of one spawned rank: the env a launcher would set, then train(cfg)."""
    import json
    import os

    import torch

    from esmm.training.trainer import train

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    r = train(cfg)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(
            {
                "steps": r.steps,
                "samples": r.samples,
                "total": r.total_samples,
                "model_id": r.model_id,
                "artifact_dir": r.artifact_dir,
                "checkpoint": r.checkpoint,
                "version": r.examples_version,
                "digest": r.param_digest,
                "history": r.history,
            },
            f,
        )


def write_examples_rs(path: str, dates: list[str], rows_per_day: int, seed: int = 0) -> None:
    """The rows of :func:`examples_df` (same signal, all labels mature) written by delta-rs:
    no JVM, one file (one row group) per day."""
    import numpy as np
    import pyarrow as pa
    from deltalake import write_deltalake

    rng = np.random.default_rng(seed)
    n = len(dates) * rows_per_day
    a = (np.arange(n) * 7 % 49 + 1).astype("int32")
    b = (np.arange(n) * 13 % 19 + 1).astype("int32")
    click = (rng.random(n) < np.where(a % 3 == 0, 0.5, 0.1)).astype("int32")
    conv = (click.astype(bool) & (rng.random(n) < np.where(b % 2 == 0, 0.6, 0.1))).astype("int32")
    table = pa.table(
        {
            "impression_id": [f"imp-{i}" for i in range(n)],
            "dt": np.repeat(dates, rows_per_day).tolist(),
            "click": click,
            "conversion": conv,
            "label_mature": np.ones(n, dtype=bool),
            "a": a,
            "b": b,
            "x": rng.random(n).astype("float32"),
            "feature_mapping_id": [TINY_SPEC.mapping_id] * n,
        }
    )
    write_deltalake(path, table, partition_by=["dt"])
