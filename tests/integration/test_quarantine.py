"""The quarantine table's shared rules: the blank test, record ids, the stamp and the writer."""

from __future__ import annotations

import datetime as dt
import hashlib

from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.io.delta import read_delta
from pipelines.io.quarantine import QUARANTINE_SCHEMA, any_blank, is_blank, record_id, stamp, write_quarantine

KEYS = T.StructType([T.StructField("a", T.StringType()), T.StructField("b", T.StringType())])
ROW = T.StructType([f for f in QUARANTINE_SCHEMA.fields if f.name not in ("run_id", "quarantined_at")])
NOW = dt.datetime(2026, 11, 2, 3, 4, 5)


def _fields(schema: T.StructType) -> list[tuple[str, T.DataType]]:
    return [(f.name, f.dataType) for f in schema.fields]


def test_blank_is_null_empty_or_only_spaces(spark):
    values = [None, "", " ", "  ", " x", "x ", "x", "\t", "0"]
    df = spark.createDataFrame([(v, "k") for v in values], KEYS)
    got = {r["a"]: r["blank"] for r in df.select("a", is_blank("a").alias("blank")).collect()}
    assert got == {
        None: True,
        "": True,
        " ": True,
        "  ": True,
        " x": False,
        "x ": False,
        "x": False,
        "\t": False,
        "0": False,
    }


def test_blank_of_a_non_string_column(spark):
    df = spark.createDataFrame([(None,), (0,), (7,)], "n BIGINT")
    assert [r[0] for r in df.select(is_blank("n")).orderBy(F.col("n").asc_nulls_first()).collect()] == [
        True,
        False,
        False,
    ]


def test_any_blank_and_record_id(spark):
    df = spark.createDataFrame([("1", "2"), ("1", " "), (None, "2")], KEYS)
    record = F.to_json(F.struct("a", "b"))
    got = df.select(
        any_blank(["a", "b"]).alias("blank"),
        record_id(["a", "b"], record).alias("two"),
        record_id(["a"], record).alias("one"),
    ).collect()

    def sha(rec: str) -> str:
        return "sha256:" + hashlib.sha256(rec.encode()).hexdigest()

    assert [tuple(r) for r in got] == [
        (False, '{"a":"1","b":"2"}', "1"),
        (True, sha('{"a":"1","b":" "}'), "1"),
        (True, sha('{"b":"2"}'), sha('{"b":"2"}')),  # to_json leaves NULL fields out
    ]


def _rows(spark, rows):
    return spark.createDataFrame(rows, ROW)


def _table(spark, path):
    return sorted((r["source"], r["record_id"], r["run_id"], r["dt"]) for r in read_delta(spark, path).collect())


def test_stamp_adds_run_and_time_in_schema_order(spark):
    out = stamp(_rows(spark, [("score", "k", "missing_key", "{}", "2026-11-02")]), "run-1", NOW)
    assert _fields(out.schema) == _fields(QUARANTINE_SCHEMA)
    assert [tuple(r) for r in out.collect()] == [("score", "k", "missing_key", "{}", "run-1", NOW, "2026-11-02")]


def test_each_job_replaces_only_its_own_sources_and_days(spark, tmp_path):
    path = str(tmp_path / "quarantine")
    D, E = "2026-11-02", "2026-11-03"
    labels = _rows(
        spark,
        [
            ("clicks", "c1", "orphan_click", "{}", D),
            ("impressions", "sha256:x", "missing_dt", "{}", "unknown"),
            ("clicks", "c9", "orphan_click", "{}", E),
        ],
    )
    write_quarantine(stamp(labels, "l1", NOW), path, [D, E, "unknown"], ["impressions", "clicks"])
    write_quarantine(stamp(_rows(spark, [("score", "k1", "missing_key", "{}", D)]), "s1", NOW), path, [D], ["score"])
    # The label job's re-run of D: its D and 'unknown' rows are replaced, E and the scorer's stay.
    write_quarantine(
        stamp(_rows(spark, [("clicks", "c2", "orphan_click", "{}", D)]), "l2", NOW),
        path,
        [D, "unknown"],
        ["impressions", "clicks"],
    )
    assert _table(spark, path) == [("clicks", "c2", "l2", D), ("clicks", "c9", "l1", E), ("score", "k1", "s1", D)]
    # The scorer's re-run of D with nothing to quarantine removes its earlier rows only.
    write_quarantine(stamp(_rows(spark, []), "s2", NOW), path, [D], ["score"], empty=True)
    assert _table(spark, path) == [("clicks", "c2", "l2", D), ("clicks", "c9", "l1", E)]


def test_empty_write_creates_the_table(spark, tmp_path):
    path = str(tmp_path / "quarantine")
    write_quarantine(stamp(_rows(spark, []), "s1", NOW), path, ["2026-11-02"], ["score"], empty=True)
    assert _fields(read_delta(spark, path).schema) == _fields(QUARANTINE_SCHEMA) and _table(spark, path) == []
