"""Feature mapping: raw feature columns -> model-ready integer and float columns.

One function, :func:`encode_features`, is the mapping. The feature job and the
scoring job both call it, so training, evaluation and scoring can never map a
value differently. The mapping is stateless (hashing), so yesterday's examples
stay valid when new values appear today and no vocabulary has to be rebuilt.

Categorical field ``f`` with ``buckets`` B::

    index = 0                                        if value is NULL or ''
          = 1 + pmod(xxhash64(f.name, string(value)), B - 1)   otherwise   (INT in [0, B))

Numeric field: NULL, NaN and +/-inf become ``fill``; then ``log1p`` (of
max(x, 0)) if configured; then clipping to [clip_min, clip_max]; cast to FLOAT.
No statistics are fitted, so nothing can leak from evaluation data.

``hash_version`` and everything above enter :attr:`FeatureSpec.mapping_id`,
which every examples row and every model artifact carries.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from esmm.config import CategoricalField, FeatureSpec, NumericField


def categorical_index(field: CategoricalField) -> Column:
    """INT embedding row of the raw column ``field.source`` (0 = NULL/empty)."""
    raw = F.col(field.source).cast("string")
    h = F.xxhash64(F.lit(field.name), raw)
    idx = F.lit(1) + F.pmod(h, F.lit(field.buckets - 1).cast("long"))
    return F.when(raw.isNull() | (raw == ""), F.lit(0)).otherwise(idx).cast("int")


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
    Output: the same rows and non-feature columns, plus one INT column per
    categorical field and one FLOAT column per numeric field, each named
    ``field.name`` (a raw column of that name is replaced), plus
    ``feature_mapping_id`` STRING. Raw source columns that differ from the
    feature name are kept.
    """
    encoded = {f.name: categorical_index(f).alias(f.name) for f in spec.categorical}
    encoded.update({f.name: numeric_value(f).alias(f.name) for f in spec.numeric})
    keep = [F.col(c) for c in df.columns if c not in encoded and c != "feature_mapping_id"]
    return df.select(*keep, *encoded.values(),
                     F.lit(spec.mapping_id).alias("feature_mapping_id"))


def feature_names(spec: FeatureSpec) -> tuple[list[str], list[str]]:
    """(categorical names, numeric names) in spec order: the model's column order."""
    return [f.name for f in spec.categorical], [f.name for f in spec.numeric]
