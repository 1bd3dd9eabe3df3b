"""Ali-CCP raw release, pure transforms: text lines -> ``curated/labels`` rows + quarantine rows.

Parses the skeleton and common-features lines, joins them by ``common_feature_index``
and maps the joined features onto the feature spec's columns (:func:`to_labels`, also
used by the processed layouts of :mod:`pipelines.ingest.aliccp_processed`). The file
formats, the output schema and the quarantine reasons are in the docstring of
:mod:`pipelines.ingest.aliccp`, which runs these transforms as jobs.
"""

from __future__ import annotations

import re

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from esmm.config.schema import CategoricalField, FeatureSpec

SPLITS = ("train", "val", "test")
SOURCES = ("aliccp_skeleton", "aliccp_common")
_FEATURE = "^([^\x01\x02\x03]+)\x02([^\x01\x02\x03]+)\x03([^\x01\x02\x03]*)$"
_LABEL = ("0", "1")
FIELD_COLUMN = re.compile(r"^f(.+)$")


def field_id(f: CategoricalField) -> str:
    """Ali-CCP field id of a spec field: its column ``f<id>`` (e.g. ``f109_14`` -> ``109_14``)."""
    m = FIELD_COLUMN.match(f.source)
    if not m:
        raise ValueError(
            f"features.categorical {f.name!r}: Ali-CCP columns are named f<field id> "
            f"(e.g. f109_14), got column {f.source!r}; use conf/aliccp.yaml"
        )
    return m.group(1)


# --------------------------------------------------------------------------- parsing (pure)


def _features(list_col: Column) -> Column:
    """feature_list STRING -> ARRAY<STRUCT<field STRING, id STRING>> ('' -> empty array)."""
    parts = F.when(list_col == "", F.array().cast("array<string>")).otherwise(F.split(list_col, "\x01"))
    return F.transform(
        parts,
        lambda x: F.struct(
            F.regexp_extract(x, _FEATURE, 1).alias("field"), F.regexp_extract(x, _FEATURE, 2).alias("id")
        ),
    )


def _bad_features(list_col: Column) -> Column:
    parts = F.when(list_col == "", F.array().cast("array<string>")).otherwise(F.split(list_col, "\x01"))
    return F.exists(parts, lambda x: ~x.rlike(_FEATURE))


def _count(list_col: Column) -> Column:
    return F.when(list_col == "", F.lit(0)).otherwise(F.size(F.split(list_col, "\x01")))


def _first_reason(*checks: tuple[Column, str]) -> Column:
    """The first failing check's reason, NULL when all pass (checks in priority order)."""
    reason = F.lit(None).cast("string")
    for bad, name in reversed(checks):
        reason = F.when(bad, F.lit(name)).otherwise(reason)
    return reason


def parse_skeleton(lines: DataFrame) -> DataFrame:
    """``value`` STRING (one skeleton line) -> sample_id, click INT, conversion INT,
    common_index, features ARRAY<STRUCT<field, id>>, line, reason (NULL = valid)."""
    line = F.regexp_replace(F.col("value"), "\r$", "")
    c = F.split(line, ",", 6)
    n_cols, lst = F.size(c), c.getItem(5)
    blank_id = (F.trim(c.getItem(0)) == "") | (F.trim(c.getItem(3)) == "")
    reason = _first_reason(
        (n_cols != 6, "malformed_line"),
        (blank_id, "malformed_line"),
        (~c.getItem(1).isin(*_LABEL) | ~c.getItem(2).isin(*_LABEL), "bad_label"),
        (_bad_features(lst), "bad_feature"),
        (c.getItem(4).cast("int").isNull() | (c.getItem(4).cast("int") != _count(lst)), "feature_num_mismatch"),
        ((c.getItem(2) == "1") & (c.getItem(1) == "0"), "conversion_without_click"),
    )
    return lines.select(
        F.when(n_cols == 6, c.getItem(0)).alias("sample_id"),
        c.getItem(1).cast("int").alias("click"),
        c.getItem(2).cast("int").alias("conversion"),
        c.getItem(3).alias("common_index"),
        _features(lst).alias("features"),
        line.alias("line"),
        reason.alias("reason"),
    )


def parse_common(lines: DataFrame) -> DataFrame:
    """``value`` STRING (one common-features line) -> common_index, common_features, line, reason.

    Every copy of an index that appears on several lines is quarantined
    (``duplicate_common_index``): choosing one would silently change the skeleton rows.
    """
    line = F.regexp_replace(F.col("value"), "\r$", "")
    c = F.split(line, ",", 3)
    lst = c.getItem(2)
    reason = _first_reason(
        ((F.size(c) != 3) | (F.trim(c.getItem(0)) == ""), "malformed_line"),
        (_bad_features(lst), "bad_feature"),
        (c.getItem(1).cast("int").isNull() | (c.getItem(1).cast("int") != _count(lst)), "feature_num_mismatch"),
    )
    parsed = lines.select(
        F.when(F.size(c) == 3, c.getItem(0)).alias("common_index"),
        _features(lst).alias("common_features"),
        line.alias("line"),
        reason.alias("reason"),
    )
    copies = (
        parsed.where(F.col("reason").isNull())
        .groupBy("common_index")
        .agg(F.count(F.lit(1)).alias("copies"))
        .where("copies > 1")
    )
    return parsed.join(copies, "common_index", "left").select(
        "common_index",
        "common_features",
        "line",
        F.when(F.col("reason").isNull() & F.col("copies").isNotNull(), F.lit("duplicate_common_index"))
        .otherwise(F.col("reason"))
        .alias("reason"),
    )


def join_common(skeleton: DataFrame, common: DataFrame) -> DataFrame:
    """Valid skeleton rows + the features of their valid common line.

    Output: the :func:`parse_skeleton` columns plus ``common_features``; ``reason``
    becomes ``common_index_not_found`` where no valid common line has the index.
    """
    good = common.where(F.col("reason").isNull()).select("common_index", "common_features")
    j = skeleton.where(F.col("reason").isNull()).join(good, "common_index", "left")
    missing = F.col("common_features").isNull()
    return j.select(
        "sample_id",
        "click",
        "conversion",
        "common_index",
        "features",
        F.coalesce("common_features", F.array().cast(j.schema["features"].dataType)).alias("common_features"),
        "line",
        F.when(missing, F.lit("common_index_not_found")).alias("reason"),
    )


def _ids(features: Column, fid: str) -> Column:
    return F.transform(F.filter(features, lambda x: x["field"] == F.lit(fid)), lambda x: x["id"])


def to_labels(joined: DataFrame, spec: FeatureSpec, split: str, day: str) -> DataFrame:
    """Joined rows -> ``curated/labels`` rows (schema in :mod:`pipelines.ingest.aliccp`'s docstring), plus ``reason``
    (``multiple_values:f<id>`` for a single-valued field with several ids, else the input's)."""
    fids = {f.source: field_id(f) for f in spec.categorical}
    fids.setdefault("f101", "101")
    fids.setdefault("f205", "205")
    # Each field's ids once, in a projection of their own: the next one reads them twice
    # (value and check), and Spark does not inline a non-trivial expression twice.
    ids = joined.select(
        "sample_id",
        "click",
        "conversion",
        "line",
        "reason",
        *[
            F.concat(_ids(F.col("features"), fid), _ids(F.col("common_features"), fid)).alias(f"__{c}")
            for c, fid in fids.items()
        ],
    )
    singles = [f for f in spec.categorical if not f.multi]
    reason = F.coalesce(
        F.col("reason"), _first_reason(*[(F.size(f"__{f.source}") > 1, f"multiple_values:{f.source}") for f in singles])
    )
    midnight = F.to_timestamp(F.lit(day))
    return ids.select(
        F.concat(F.lit(f"{split}-"), F.col("sample_id")).alias("impression_id"),
        midnight.alias("ts"),
        F.col("__f101").getItem(0).alias("user_id"),
        F.col("__f205").getItem(0).alias("item_id"),
        *[
            (F.col(f"__{f.source}") if f.multi else F.col(f"__{f.source}").getItem(0)).alias(f.source)
            for f in spec.categorical
        ],
        F.col("click").cast("int").alias("click"),
        F.lit(None).cast("timestamp").alias("first_click_ts"),
        F.col("conversion").cast("int").alias("conversion"),
        F.lit(None).cast("timestamp").alias("conversion_ts"),
        F.lit(True).alias("label_mature"),
        (midnight + F.expr("INTERVAL 1 DAY") - F.expr("INTERVAL 1 MICROSECOND")).alias("as_of"),
        F.lit(day).alias("dt"),
        "sample_id",
        "line",
        reason.alias("reason"),
    )


def quarantine(rows: DataFrame, source: str, key: str, day: str) -> DataFrame:
    """Rows with a ``reason`` -> quarantine rows (source, record_id, reason, record = the line, dt).

    ``record_id`` is the row's ``key`` (sample id or common index), or ``sha256:<hex>``
    of the line when the key is blank.
    """
    blank = F.col(key).isNull() | (F.trim(F.col(key)) == "")
    rid = F.when(blank, F.concat(F.lit("sha256:"), F.sha2(F.col("line"), 256))).otherwise(F.col(key))
    return rows.where(F.col("reason").isNotNull()).select(
        F.lit(source).alias("source"),
        rid.alias("record_id"),
        "reason",
        F.col("line").alias("record"),
        F.lit(day).alias("dt"),
    )


def build(
    skeleton_lines: DataFrame, common_lines: DataFrame, spec: FeatureSpec, split: str, day: str
) -> tuple[DataFrame, DataFrame]:
    """Two text DataFrames (``value``) -> (labels, quarantine) of one split, lazily.

    labels: the ``curated/labels`` rows (:mod:`pipelines.ingest.aliccp`'s docstring); quarantine: source, record_id,
    reason, record, dt.
    """
    skel = parse_skeleton(skeleton_lines)
    common = parse_common(common_lines)
    rows = to_labels(join_common(skel, common), spec, split, day)
    labels = rows.where(F.col("reason").isNull()).drop("sample_id", "line", "reason")
    bad = (
        quarantine(skel, SOURCES[0], "sample_id", day)
        .unionByName(quarantine(rows, SOURCES[0], "sample_id", day))
        .unionByName(quarantine(common, SOURCES[1], "common_index", day))
    )
    return labels, bad
