"""Scoring's pure parts: unscorable rows, the candidates check."""

from __future__ import annotations

import pytest
from pyspark.sql import types as T

from esmm.config.schema import CategoricalField, FeatureSpec, NumericField
from pipelines.scoring.checks import check_candidates, check_keys, split_unscorable
from pipelines.scoring.model import ScoringInputError

SPEC = FeatureSpec(
    categorical=[CategoricalField("device", buckets=8)], numeric=[NumericField("price", transform="log1p")]
)
SCHEMA = T.StructType(
    [
        T.StructField("impression_id", T.StringType()),
        T.StructField("device", T.StringType()),
        T.StructField("price", T.StringType()),  # e.g. a JSON-landed table
        T.StructField("dt", T.StringType()),
    ]
)


@pytest.mark.parametrize("checked", [False, True], ids=["every-row-shuffled", "only-repeated-keys-shuffled"])
def test_split_unscorable_exact_rows(spark, checked):
    rows = [
        ("a", "ios", "1.5", "d"),
        ("a", "ios", "1.5", "d"),  # exact duplicate: one row
        ("b", None, None, "d"),  # NULL features are legitimate (filled by the mapping)
        (None, "pc", "2", "d"),
        ("  ", "pc", "2", "d"),  # missing keys
        ("c", "pc", "cheap", "d"),  # unparseable number
        ("e", "pc", "1", "d"),
        ("e", "ios", "1", "d"),
    ]  # same key, different values
    df = spark.createDataFrame(rows, SCHEMA)
    repeats = check_keys(df, SPEC, ["impression_id"], 2) if checked else None
    if checked:
        assert repeats.count == 2 and not repeats.overflow  # "a" and "e"
        assert (repeats.rows, repeats.reasons) == (8, {"missing_key": 2, "unparseable:price": 1})
        assert sorted(r[0] for r in repeats.hashes.collect()) == sorted(
            spark.sql("select xxhash64('a'), xxhash64('e')").collect()[0]
        )
    good, bad = split_unscorable(df, SPEC, ["impression_id"], repeats)
    assert good.columns == ["impression_id", "device", "price", "dt"]
    assert sorted(good.collect(), key=str) == sorted([("a", "ios", "1.5", "d"), ("b", None, None, "d")], key=str)
    got = sorted(
        ((r["impression_id"], r["device"], r["reason"]) for r in bad.collect()), key=lambda t: (str(t[0]), t[1])
    )
    assert got == sorted(
        [
            (None, "pc", "missing_key"),
            ("  ", "pc", "missing_key"),
            ("c", "pc", "unparseable:price"),
            ("e", "pc", "conflicting_duplicate_key"),
            ("e", "ios", "conflicting_duplicate_key"),
        ],
        key=lambda t: (str(t[0]), t[1]),
    )
    if checked:
        # Only the rows of "a" and "e" went through the shuffle; the rest were projected.
        plan = good._jdf.queryExecution().executedPlan().toString()
        assert "BroadcastHashJoin" in plan and "LeftAnti" in plan and "LeftSemi" in plan


def test_split_unscorable_without_repeated_keys_needs_no_shuffle(spark):
    rows = [
        ("a", "ios", "1.5", "d"),
        ("b", None, None, "d"),
        (None, "pc", "2", "d"),
        (None, "pc", "2", "d"),  # blank-key exact duplicates: one row
        ("  ", "pc", "2", "d"),
        ("", "pc", "2", "d"),
        (" x", "pc", "2", "d"),  # " x" is a key
        ("c", "pc", "cheap", "d"),
    ]
    df = spark.createDataFrame(rows, SCHEMA)
    repeats = check_keys(df, SPEC, ["impression_id"], 2)
    assert (repeats.count, repeats.hashes, repeats.overflow) == (0, None, False)  # blank keys ignored
    assert (repeats.rows, repeats.reasons) == (8, {"missing_key": 4, "unparseable:price": 1})
    good, bad = split_unscorable(df, SPEC, ["impression_id"], repeats)
    assert "Exchange" not in good._jdf.queryExecution().executedPlan().toString()
    assert sorted(good.collect(), key=str) == sorted(
        [("a", "ios", "1.5", "d"), ("b", None, None, "d"), (" x", "pc", "2", "d")], key=str
    )
    got = sorted(((r["impression_id"], r["reason"]) for r in bad.collect()), key=str)
    assert got == sorted(
        [(None, "missing_key"), ("  ", "missing_key"), ("", "missing_key"), ("c", "unparseable:price")], key=str
    )


def test_check_keys_counts_repeated_keys_and_overflows_to_the_full_shuffle(spark):
    rows = [
        ("a", "ios", "1.5", "d"),
        ("a", "ios", "1.5", "d"),
        ("b", "pc", "1", "d"),
        ("b", "ios", "1", "d"),
        ("c", "pc", "1", "d"),
        (None, "pc", "x", "d"),
        (None, "pc", "x", "d"),
    ]
    df = spark.createDataFrame(rows, SCHEMA)
    assert check_keys(df, SPEC, ["impression_id"], 2).count == 2
    over = check_keys(df, SPEC, ["impression_id"], 2, limit=1)
    assert (over.count, over.hashes, over.overflow) == (2, None, True)
    # The overflow plan shuffles every row and gives the same split.
    good, bad = split_unscorable(df, SPEC, ["impression_id"], over)
    assert sorted(r["impression_id"] for r in good.collect()) == ["a", "c"]
    assert sorted((str(r["impression_id"]), r["reason"]) for r in bad.collect()) == [
        ("None", "missing_key"),
        ("b", "conflicting_duplicate_key"),
        ("b", "conflicting_duplicate_key"),
    ]


def test_candidates_missing_columns_are_refused_by_name(spark):
    df = spark.createDataFrame([("a", "ios", "d")], "impression_id string, device string, dt string")
    with pytest.raises(
        ScoringInputError,
        match=r"candidates cand_table: missing key column\(s\) \[\] " r"and raw feature column\(s\) \['price'\]",
    ):
        check_candidates(df, SPEC, ["impression_id"], "cand_table")
    with pytest.raises(ScoringInputError, match=r"missing key column\(s\) \['request_id'\]"):
        check_candidates(df.withColumn("price", df.device), SPEC, ["request_id"], "t")
