"""encode_features: the one mapping shared by the feature job and the scorer."""

import math

import pytest
from pyspark.sql import types as T

from esmm.config.schema import CategoricalField, FeatureSpec, NumericField
from pipelines.features.job import encode_features

SPEC = FeatureSpec(
    categorical=[CategoricalField("user_city", buckets=50), CategoricalField("position", buckets=8)],
    numeric=[
        NumericField("price", transform="log1p", clip_min=0.0, clip_max=3.0, fill=-1.0),
        NumericField("rating", transform="none", clip_min=1.0, clip_max=5.0),
    ],
)
SCHEMA = T.StructType(
    [
        T.StructField("impression_id", T.StringType()),
        T.StructField("user_city", T.StringType()),
        T.StructField("position", T.LongType()),
        T.StructField("price", T.DoubleType()),
        T.StructField("rating", T.DoubleType()),
    ]
)


def test_encoding_rules(spark):
    rows = [
        ("a", "city7", 3, 1.5, 4.0),
        ("b", None, None, None, float("nan")),
        ("c", "", 3, float("inf"), 9.0),
        ("d", "city7", 4, 100.0, 0.0),
        ("e", "city8", 3, -5.0, 2.5),
    ]
    out = {r.impression_id: r for r in encode_features(spark.createDataFrame(rows, SCHEMA), SPEC).collect()}
    assert set(out["a"].asDict()) == {"impression_id", "user_city", "position", "price", "rating", "feature_mapping_id"}
    # NULL and '' map to row 0; equal values map to equal rows; rows stay in [1, buckets).
    assert out["b"].user_city == 0 and out["b"].position == 0 and out["c"].user_city == 0
    assert out["a"].user_city == out["d"].user_city != 0
    assert out["a"].position == out["c"].position == out["e"].position
    assert all(1 <= out[k].user_city < 50 for k in "ade") and all(1 <= out[k].position < 8 for k in "acde")
    # Numeric: fill, then log1p(max(x,0)), then clip.
    assert out["a"].price == pytest.approx(math.log1p(1.5), rel=1e-6)
    assert out["b"].price == pytest.approx(0.0)  # fill -1 -> log1p(max(-1,0)) = 0
    assert out["c"].price == pytest.approx(0.0)  # inf is bad -> fill
    assert out["d"].price == pytest.approx(3.0)  # log1p(100)=4.6 clipped to 3
    assert out["e"].price == pytest.approx(0.0)
    assert out["a"].rating == 4.0 and out["b"].rating == 1.0 and out["c"].rating == 5.0
    assert out["d"].rating == 1.0 and out["e"].rating == 2.5
    assert {r.feature_mapping_id for r in out.values()} == {SPEC.mapping_id}


def test_mapping_is_stable_across_days_and_types(spark):
    """Golden values pin the hash: a change here silently invalidates every stored example
    and model, so it must come with a new hash_version."""
    df = spark.createDataFrame([("x", "city7", 3, 1.0, 1.0)], SCHEMA)
    r = encode_features(df, SPEC).first()
    assert (r.user_city, r.position) == (GOLDEN_CITY7, GOLDEN_POS3)
    # An integer column stored as STRING by another producer maps the same way.
    s = spark.createDataFrame(
        [("x", "city7", "3", 1.0, 1.0)],
        "impression_id string, user_city string, position string, price double, rating double",
    )
    assert encode_features(s, SPEC).first().position == GOLDEN_POS3


GOLDEN_CITY7, GOLDEN_POS3 = 39, 4  # recorded with hash_version 1
