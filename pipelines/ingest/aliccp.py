"""Ali-CCP ingest: the public release (Tianchi dataset 408) -> ``curated/labels`` + quarantine.

Raw release: two text files per split, joined by ``common_feature_index``::

    sample_skeleton_{train,test}.csv: sample_id,click,conversion,common_feature_index,feature_num,feature_list
    common_features_{train,test}.csv: common_feature_index,feature_num,feature_list

A feature list holds ``feature_num`` features separated by ``\\x01``; a feature is
``field_id\\x02feature_id\\x03value``. The skeleton row carries the item side and the
common row the user side of one impression. Every feature id of a field is kept:
a field marked ``multi`` in the feature spec becomes an ARRAY<STRING> column of all
its ids (skeleton ids first, then common ids, each in file order); a single-valued
field becomes a STRING column (NULL when the row has none).

The ``\\x03`` value is dropped (every id is kept, whatever its value): the ESMM
paper's model embeds and pools ids, with no per-id weight. The fields whose values carry
information are the multi-valued behaviour fields and crosses (torch-rechub's processing
keeps a dense ``D<field>`` column for exactly 109_14, 110_14, 127_14, 150_14, 508, 509,
702, 853; README, Ali-CCP). Keeping them would need a weight array beside each id array
through labels, examples, loader and scorer (EmbeddingBag weights ids in ``sum`` mode only).

Output rows follow the ``curated/labels`` contract (one row per impression)::

    impression_id STRING ('<split>-<sample_id>'), ts TIMESTAMP (midnight of dt), user_id STRING (f101),
    item_id STRING (f205), f<field> STRING | ARRAY<STRING> (one per spec field), click INT,
    first_click_ts TIMESTAMP (NULL), conversion INT, conversion_ts TIMESTAMP (NULL),
    label_mature BOOLEAN (true: the release's labels are final), as_of TIMESTAMP (end of dt), dt STRING

The release has no timestamps, so each split gets a pseudo-date (``aliccp.train_date``,
``aliccp.val_date``, ``aliccp.test_date``; every layout, every file of a split on its
date; ``--date`` puts a slice on a date of its own, never another split's): the ESMM
paper trains on the train half and evaluates on the test half.

The gate: the quarantine is written first; when more than ``aliccp.max_bad_fraction``
of a source's records (skeleton lines, common lines) are quarantined the job raises
:class:`IngestGateError` naming the file, the counts and the top reasons, and
``curated/labels`` is not written (that date keeps what an earlier ingest wrote).
:class:`IngestGateError` is re-exported here for callers of the jobs.

PaddleRec's processed text layout (``sample_id,click,conversion,field:id,...``, a
multi-valued field repeated) goes through the same :func:`to_labels` (:func:`run_paddle`),
and so does torch-rechub's processed CSV layout (:func:`run_csv`).

Quarantine reasons (source ``aliccp_skeleton`` or ``aliccp_common``; the record is the raw line):

    malformed_line              wrong number of comma-separated columns, or a blank id
    bad_label                   click or conversion not 0/1
    bad_feature                 a feature not of the form field\\x02id\\x03value (e.g. a bad separator)
    feature_num_mismatch        feature_num differs from the number of features in the list
    conversion_without_click    conversion=1 with click=0 (the release's labels are post-click)
    duplicate_common_index      several common lines share one index (all copies quarantined)
    common_index_not_found      no valid common line with the skeleton row's index
    multiple_values:f<id>       several ids in a field the spec marks single-valued

Everything is a linear Spark plan over ``spark.read.text`` (no driver collect); the
join is a shuffle join, so memory stays flat as the files grow.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Optional

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from esmm.config.schema import CategoricalField, Config, FeatureSpec
from pipelines.ingest.gate import IngestGateError, check_bad_fraction  # noqa: F401 (IngestGateError: re-exported)

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
    """Joined rows -> ``curated/labels`` rows (schema in the module docstring), plus ``reason``
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

    labels: the ``curated/labels`` rows (module docstring); quarantine: source, record_id,
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


# --------------------------------------------------------------------------- jobs


def _write(
    spark: SparkSession,
    cfg: Config,
    labels: DataFrame,
    bad: DataFrame,
    day: str,
    read: dict[str, tuple[int, str]],
    log=print,
) -> dict[str, int]:
    """Replace this job's quarantine rows of ``day``, gate on the quarantined share
    (:func:`check_bad_fraction`, ``read`` = source -> (records read, file names)),
    then replace ``dt = day`` of curated/labels; report."""
    from esmm.util.timeutil import new_run_id
    from pipelines.io.delta import read_delta, write_delta
    from pipelines.io.quarantine import stamp, write_quarantine

    run_id = new_run_id("aliccp")
    labels_path, q_path = cfg.lakehouse.path("labels"), cfg.lakehouse.path("quarantine")
    q = stamp(bad, run_id, dt.datetime.now(dt.timezone.utc))
    # Only this job's sources: the label job and the scorer quarantine into the same table.
    # Written first: the gate reads its counts back instead of parsing the input once more.
    write_quarantine(q, q_path, [day], SOURCES)
    by_source: dict[str, dict[str, int]] = {}
    for row in (
        read_delta(spark, q_path)
        .where((F.col("dt") == day) & F.col("source").isin(*SOURCES))
        .groupBy("source", "reason")
        .agg(F.count(F.lit(1)).alias("n"))
        .collect()
    ):
        by_source.setdefault(row["source"], {})[row["reason"]] = int(row["n"])
    reasons: dict[str, int] = {}
    for per in by_source.values():
        for k, v in per.items():
            reasons[k] = reasons.get(k, 0) + v
    check_bad_fraction(by_source, read, day, cfg.aliccp.max_bad_fraction)
    write_delta(labels, labels_path, ["dt"], replace_where=f"dt = '{day}'")
    r = (
        read_delta(spark, labels_path)
        .where(F.col("dt") == day)
        .agg(F.count(F.lit(1)).alias("rows"), F.sum("click").alias("clicks"), F.sum("conversion").alias("conversions"))
        .first()
    )
    counts = {"rows": int(r["rows"]), "clicks": int(r["clicks"] or 0), "conversions": int(r["conversions"] or 0)}
    counts.update({f"quarantined:{k}": v for k, v in sorted(reasons.items())})
    log(
        f"curated/labels dt={day}: {counts['rows']:,} impressions, {counts['clicks']:,} clicks, "
        f"{counts['conversions']:,} conversions; quarantined: "
        + (", ".join(f"{k}={v:,}" for k, v in sorted(reasons.items())) or "none")
    )
    return counts


def day_of(cfg: Config, split: str, day: Optional[str] = None) -> str:
    """The pseudo-date of ``split`` (``aliccp.<split>_date``, or a slice's ``day``).

    Raises ValueError when ``day`` is another split's date: the write would replace that
    split's rows (a date holds one split, so training and evaluation days never mix).
    """
    if day is None:
        return cfg.aliccp.date_of(split)
    other = [s for s in SPLITS if s != split and cfg.aliccp.date_of(s) == day]
    if other:
        raise ValueError(
            f"--date {day} is aliccp.{other[0]}_date: a {split} slice there would replace "
            f"the {other[0]} split's rows; pick a date no other split uses"
        )
    return day


def run(
    spark: SparkSession, cfg: Config, skeleton: str, common: str, split: str, day: Optional[str] = None, log=print
) -> dict[str, int]:
    """Ingest one split of the raw release into ``dt = day`` (default: ``aliccp.<split>_date``).

    Re-running replaces that date (labels) and this job's quarantine rows of it. Raises
    :class:`IngestGateError` (labels not written) when more than ``aliccp.max_bad_fraction``
    of the skeleton lines, or of the common lines, are quarantined.
    Returns rows, clicks, conversions and ``quarantined:<reason>`` counts.
    """
    day = day_of(cfg, split, day)
    skel_lines, common_lines = spark.read.text(skeleton), spark.read.text(common)
    labels, bad = build(skel_lines, common_lines, cfg.features, split, day)
    read = {SOURCES[0]: (skel_lines.count(), skeleton), SOURCES[1]: (common_lines.count(), common)}
    return _write(spark, cfg, labels, bad, day, read, log)


def run_paddle(
    spark: SparkSession, cfg: Config, paths: list[str], split: str, day: Optional[str] = None, log=print
) -> dict[str, int]:
    """Ingest PaddleRec text files (all of one split) into ``dt = day`` (default ``aliccp.<split>_date``)."""
    day = day_of(cfg, split, day)
    lines = spark.read.text(paths)
    parsed = parse_paddle(lines)
    rows = to_labels(parsed.where(F.col("reason").isNull()), cfg.features, split, day)
    labels = rows.where(F.col("reason").isNull()).drop("sample_id", "line", "reason")
    bad = quarantine(parsed, SOURCES[0], "sample_id", day).unionByName(quarantine(rows, SOURCES[0], "sample_id", day))
    return _write(spark, cfg, labels, bad, day, {SOURCES[0]: (lines.count(), ", ".join(paths))}, log)


def run_csv(
    spark: SparkSession,
    cfg: Config,
    paths: list[str],
    split: Optional[str] = None,
    day: Optional[str] = None,
    log=print,
) -> dict[str, dict[str, int]]:
    """Ingest processed CSV files, all files of one split together into that split's date.

    The split comes from each file name (or ``split`` for all); the date is
    ``aliccp.<split>_date`` (or ``day``, for a single split), the raw ingest's scheme.
    Returns split -> the counts of :func:`run`.
    """
    groups: dict[str, list[str]] = {}
    for path in paths:
        groups.setdefault(split or split_of(path), []).append(path)
    if day is not None and len(groups) > 1:
        raise ValueError(
            f"--date {day} with files of several splits ({', '.join(groups)}): one date "
            f"holds one split; ingest each split's files on their own"
        )
    out = {}
    for s, files in groups.items():
        d = day_of(cfg, s, day)
        raw = read_csv(spark, files)
        rows = parse_csv(raw, cfg.features, s, d)
        labels = rows.where(F.col("reason").isNull()).drop("sample_id", "line", "reason")
        out[s] = _write(
            spark,
            cfg,
            labels,
            quarantine(rows, SOURCES[0], "sample_id", d),
            d,
            {SOURCES[0]: (raw.count(), ", ".join(files))},
            log,
        )
    return out
