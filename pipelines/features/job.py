"""Feature mapping: raw feature columns -> model-ready integer and float columns.

One function, :func:`encode_features`, is the mapping. The feature job and the
scoring job both call it, so training, evaluation and scoring can never map a
value differently. The mapping is stateless (hashing), so yesterday's examples
stay valid when new values appear today and no vocabulary has to be rebuilt.

Categorical field ``f`` with ``buckets`` B::

    index = 0                                        if value is NULL or ''
          = 1 + pmod(xxhash64(f.name, string(value)), B - 1)   otherwise   (INT in [0, B))

Multi-valued categorical field (``multi``; raw column an ARRAY): every element is
hashed as above, in order, into ARRAY<INT>; a NULL or empty array becomes ``[0]``
(the NULL row, as for a single-valued field), so every row has at least one id.

Numeric field: NULL, NaN and +/-inf become ``fill``; then ``log1p`` (of
max(x, 0)) if configured; then clipping to [clip_min, clip_max]; cast to FLOAT.
No statistics are fitted, so nothing can leak from evaluation data.

``hash_version`` and everything above enter :attr:`FeatureSpec.mapping_id`,
which every examples row and every model artifact carries.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from esmm.config.schema import CategoricalField, FeatureSpec, NumericField


def _hash(field: CategoricalField, value: Column) -> Column:
    raw = value.cast("string")
    h = F.xxhash64(F.lit(field.name), raw)
    idx = F.lit(1) + F.pmod(h, F.lit(field.buckets - 1).cast("long"))
    return F.when(raw.isNull() | (raw == ""), F.lit(0)).otherwise(idx).cast("int")


def categorical_index(field: CategoricalField) -> Column:
    """Embedding row(s) of the raw column ``field.source`` (0 = NULL/empty).

    INT for a single-valued field; ARRAY<INT> (one row per element, same hash) for a
    ``multi`` field, ``[0]`` when the array is NULL or empty.
    """
    if not field.multi:
        return _hash(field, F.col(field.source))
    arr = F.col(field.source)
    ids = F.transform(arr, lambda x: _hash(field, x))
    return F.when(arr.isNull() | (F.size(arr) == 0), F.array(F.lit(0))).otherwise(ids)


def numeric_value(field: NumericField) -> Column:
    """FLOAT model input of the raw column ``field.source`` (see module docstring)."""
    x = F.col(field.source).cast("double")
    bad = x.isNull() | F.isnan(x) | (x == float("inf")) | (x == float("-inf"))
    x = F.when(bad, F.lit(float(field.fill))).otherwise(x)
    if field.transform == "log1p":
        x = F.log1p(F.greatest(x, F.lit(0.0)))
    if field.clip_min is not None:
        x = F.greatest(x, F.lit(float(field.clip_min)))
    if field.clip_max is not None:
        x = F.least(x, F.lit(float(field.clip_max)))
    return x.cast("float")


def encode_features(df: DataFrame, spec: FeatureSpec) -> DataFrame:
    """Replace the raw feature columns of ``df`` by their encoded values.

    Input: any DataFrame holding each feature's raw column (``field.source``).
    Output: the same rows and non-feature columns, plus one INT (``multi``:
    ARRAY<INT>) column per categorical field and one FLOAT column per numeric field, each named
    ``field.name`` (a raw column of that name is replaced), plus
    ``feature_mapping_id`` STRING. Raw source columns that differ from the
    feature name are kept.
    """
    encoded = {f.name: categorical_index(f).alias(f.name) for f in spec.categorical}
    encoded.update({f.name: numeric_value(f).alias(f.name) for f in spec.numeric})
    keep = [F.col(c) for c in df.columns if c not in encoded and c != "feature_mapping_id"]
    return df.select(*keep, *encoded.values(), F.lit(spec.mapping_id).alias("feature_mapping_id"))


def feature_names(spec: FeatureSpec) -> tuple[list[str], list[str]]:
    """(categorical names, numeric names) in spec order: the model's column order."""
    return [f.name for f in spec.categorical], [f.name for f in spec.numeric]


# --------------------------------------------------------------------------- the feature job

EXAMPLE_LABELS = ("impression_id", "dt", "click", "conversion", "label_mature")
DELAY_COLUMNS = ("click_elapsed_s", "conversion_delay_s")


def _delays(labels: DataFrame) -> list:
    """The labels' delay columns; derived from their timestamps for a labels table written
    before the columns existed (or an ingest that has no click times: null then)."""
    if all(c in labels.columns for c in DELAY_COLUMNS):
        return [F.col(c).cast("double").alias(c) for c in DELAY_COLUMNS]
    if all(c in labels.columns for c in ("first_click_ts", "conversion_ts", "as_of")):
        from pipelines.labels.rules import delay_columns

        return delay_columns(F.col("first_click_ts"), F.col("conversion_ts"), F.col("as_of"))
    return [F.lit(None).cast("double").alias(c) for c in DELAY_COLUMNS]


def build_examples(labels: DataFrame, spec: FeatureSpec) -> DataFrame:
    """``curated/labels`` rows -> ``curated/examples`` rows (pure).

    Output schema, in this order: impression_id STRING, dt STRING, click INT,
    conversion INT, label_mature BOOLEAN, click_elapsed_s DOUBLE, conversion_delay_s DOUBLE
    (seconds; null without a click / a conversion), one INT column per categorical field
    (``field.name``, index in [0, buckets), 0 = NULL/empty; ARRAY<INT> of every value's
    index for a ``multi`` field), one FLOAT column per
    numeric field (``field.name``), feature_mapping_id STRING (``spec.mapping_id``).
    """
    sources = list(dict.fromkeys(f.source for f in [*spec.categorical, *spec.numeric]))
    missing = [c for c in [*EXAMPLE_LABELS, *sources] if c not in labels.columns]
    if missing:
        raise ValueError(
            f"curated/labels lacks columns {missing} needed by the feature spec "
            f"(features.categorical / features.numeric); present: {sorted(labels.columns)}"
        )
    base = labels.select(
        *EXAMPLE_LABELS, *_delays(labels), *[c for c in sources if c not in (*EXAMPLE_LABELS, *DELAY_COLUMNS)]
    )
    cat, num = feature_names(spec)
    return encode_features(base, spec).select(*EXAMPLE_LABELS, *DELAY_COLUMNS, *cat, *num, "feature_mapping_id")


def run(spark, cfg, dates: list[str], log=print) -> dict[str, int]:
    """Build ``curated/examples`` for ``dates`` from ``curated/labels``.

    One atomic Delta commit replaces exactly those dates (replaceWhere on dt), so a
    re-run gives the same table and other dates are untouched. Raises
    FileNotFoundError naming the dates that have no labels yet. Returns rows per date.
    """
    from pipelines.io.delta import read_delta, write_delta

    labels_path = cfg.lakehouse.path("labels")
    labels = read_delta(spark, labels_path).where(F.col("dt").isin(*dates))
    present = {r["dt"] for r in labels.select("dt").distinct().collect()}
    absent = [d for d in dates if d not in present]
    if absent:
        raise FileNotFoundError(
            f"{labels_path} has no rows for dt {absent}; run " f"`esmm labels --date D` for them first"
        )
    examples = build_examples(labels, cfg.features)
    in_dates = ", ".join(f"'{d}'" for d in dates)
    path = cfg.lakehouse.path("examples")
    # merge_schema: a table written before the delay columns existed gains them (older days: null).
    write_delta(examples, path, ["dt"], replace_where=f"dt IN ({in_dates})", merge_schema=True)
    written = read_delta(spark, path).where(F.col("dt").isin(*dates))
    multi = [f for f in cfg.features.categorical if f.multi]
    # The table keeps every value of a multi-valued field; the model reads the first max_len
    # (esmm.data.examples.pack_categorical). Counted here so that cut is never silent.
    over = [F.sum((F.size(f.name) > f.max_len).cast("long")).alias(f"over:{f.name}") for f in multi]
    rows = {r["dt"]: r for r in written.groupBy("dt").agg(F.count(F.lit(1)).alias("count"), *over).collect()}
    counts = {d: r["count"] for d, r in rows.items()}
    for d in dates:
        r = rows.get(d)
        cut = [
            f"{f.name} {r[f'over:{f.name}']:,} (> {f.max_len} values)"
            for f in multi
            if r is not None and r[f"over:{f.name}"]
        ]
        log(
            f"curated/examples dt={d}: {counts.get(d, 0):,} rows (feature mapping {cfg.features.mapping_id})"
            + (f"; rows whose bag the model cuts to max_len: {', '.join(cut)}" if cut else "")
        )
    return counts
