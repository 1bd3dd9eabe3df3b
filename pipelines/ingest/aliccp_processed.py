"""Ali-CCP processed layouts, pure transforms: torch-rechub's CSV and PaddleRec's text.

Both map onto the columns of the raw release's parse (:mod:`pipelines.ingest.aliccp_release`),
so they share its :func:`~pipelines.ingest.aliccp_release.to_labels` and quarantine rows;
the jobs that run them are :func:`pipelines.ingest.aliccp.run_csv` and
:func:`pipelines.ingest.aliccp.run_paddle`.
"""

from __future__ import annotations

import re
from typing import Optional

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from esmm.config.schema import FeatureSpec
from pipelines.ingest.aliccp_release import _LABEL, SPLITS, _first_reason, field_id

# --------------------------------------------------------------------------- processed CSV layout


def split_of_or_none(path: str) -> Optional[str]:
    """'train', 'val' or 'test' from a file name (ali_ccp_train_sample.csv -> 'train'), or None."""
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    found = [s for s in SPLITS if re.search(rf"(^|[^a-z]){s}([^a-z]|$)", name)]
    return found[0] if len(found) == 1 else None


def split_of(path: str) -> str:
    """:func:`split_of_or_none`, raising ValueError naming the file when the name does not tell."""
    found = split_of_or_none(path)
    if found is None:
        raise ValueError(
            f"{path}: cannot tell the split from the file name (want exactly one of "
            f"{', '.join(SPLITS)} in it); pass --split"
        )
    return found


def parse_csv(rows: DataFrame, spec: FeatureSpec, split: str, day: str) -> DataFrame:
    """Rows of the processed CSV layout (all STRING: click, purchase, one column per field id,
    dense D* columns, ``_corrupt_record``, ``_row`` BIGINT) -> the :func:`to_labels` columns
    (``sample_id`` = ``_row``, ``line`` = the record as JSON or the corrupt line, ``reason``).

    A field marked multi becomes a one-element array (the processed layout kept one id).
    """
    missing = [field_id(f) for f in spec.categorical if field_id(f) not in rows.columns]
    if missing:
        raise ValueError(
            f"Ali-CCP CSV lacks the columns {missing} of the feature spec; " f"present: {sorted(rows.columns)}"
        )
    raw = [c for c in rows.columns if c not in ("_corrupt_record", "_row")]
    line = F.coalesce(F.col("_corrupt_record"), F.to_json(F.struct(*[F.col(f"`{c}`") for c in raw])))
    click, conv = F.col("click"), F.col("purchase")
    reason = _first_reason(
        (F.col("_corrupt_record").isNotNull(), "malformed_line"),
        (~click.isin(*_LABEL) | ~conv.isin(*_LABEL) | click.isNull() | conv.isNull(), "bad_label"),
        ((conv == "1") & (click == "0"), "conversion_without_click"),
    )
    midnight = F.to_timestamp(F.lit(day))

    def value(fid: str) -> Column:
        v = F.col(f"`{fid}`")
        return F.when(F.trim(v) == "", F.lit(None)).otherwise(v)

    feats = [
        (
            F.when(value(field_id(f)).isNull(), F.array().cast("array<string>")).otherwise(F.array(value(field_id(f))))
            if f.multi
            else value(field_id(f))
        ).alias(f.source)
        for f in spec.categorical
    ]
    return rows.select(
        F.concat(F.lit(f"{split}-"), F.col("_row").cast("string")).alias("impression_id"),
        midnight.alias("ts"),
        _maybe(rows, "101").alias("user_id"),
        _maybe(rows, "205").alias("item_id"),
        *feats,
        click.cast("int").alias("click"),
        F.lit(None).cast("timestamp").alias("first_click_ts"),
        conv.cast("int").alias("conversion"),
        F.lit(None).cast("timestamp").alias("conversion_ts"),
        F.lit(True).alias("label_mature"),
        (midnight + F.expr("INTERVAL 1 DAY") - F.expr("INTERVAL 1 MICROSECOND")).alias("as_of"),
        F.lit(day).alias("dt"),
        F.col("_row").cast("string").alias("sample_id"),
        line.alias("line"),
        reason.alias("reason"),
    )


def _maybe(rows: DataFrame, fid: str) -> Column:
    return F.col(f"`{fid}`") if fid in rows.columns else F.lit(None).cast("string")


def read_csv(spark: SparkSession, paths: list[str]) -> DataFrame:
    """Processed CSV files with one header as STRING columns + ``_corrupt_record`` + ``_row``.

    Raises ValueError naming a file whose header differs from the first file's.
    """
    from pyspark.sql import types as T

    paths = [paths] if isinstance(paths, str) else list(paths)
    header = spark.read.option("header", True).csv(paths[0]).columns
    for p in paths[1:]:
        other = spark.read.option("header", True).csv(p).columns
        if other != header:
            raise ValueError(
                f"{p}: its CSV header {other} differs from {paths[0]}'s {header}; "
                f"files ingested together must share one header"
            )
    schema = T.StructType(
        [T.StructField(c, T.StringType()) for c in header] + [T.StructField("_corrupt_record", T.StringType())]
    )
    df = (
        spark.read.schema(schema)
        .option("header", True)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", "_corrupt_record")
        .csv(paths)
    )
    # Row ids: stable for one file read the same way (ids are only unique, not dense).
    return df.withColumn("_row", F.monotonically_increasing_id())


# --------------------------------------------------------------------------- PaddleRec text layout

_PADDLE_FEATURE = "^[^:,]+:[^:,]+$"


def parse_paddle(lines: DataFrame) -> DataFrame:
    """PaddleRec's processed text layout, ``value`` = ``sample_id,click,conversion,field:id,...``
    (a multi-valued field repeats) -> the :func:`join_common` columns (no common features).

    Reasons: malformed_line, bad_label, bad_feature (an item not ``field:id``),
    conversion_without_click.
    """
    line = F.regexp_replace(F.col("value"), "\r$", "")
    c = F.split(line, ",")
    items = F.slice(c, 4, F.greatest(F.size(c) - 3, F.lit(1)))
    items = F.when(F.size(c) > 3, items).otherwise(F.array().cast("array<string>"))
    reason = _first_reason(
        ((F.size(c) < 3) | (F.trim(c.getItem(0)) == ""), "malformed_line"),
        (~c.getItem(1).isin(*_LABEL) | ~c.getItem(2).isin(*_LABEL), "bad_label"),
        (F.exists(items, lambda x: ~x.rlike(_PADDLE_FEATURE)), "bad_feature"),
        ((c.getItem(2) == "1") & (c.getItem(1) == "0"), "conversion_without_click"),
    )
    feats = F.transform(
        items,
        lambda x: F.struct(F.substring_index(x, ":", 1).alias("field"), F.substring_index(x, ":", -1).alias("id")),
    )
    return lines.select(
        F.when(F.size(c) >= 3, c.getItem(0)).alias("sample_id"),
        c.getItem(1).cast("int").alias("click"),
        c.getItem(2).cast("int").alias("conversion"),
        F.lit(None).cast("string").alias("common_index"),
        feats.alias("features"),
        F.array().cast("array<struct<field:string,id:string>>").alias("common_features"),
        line.alias("line"),
        reason.alias("reason"),
    )
