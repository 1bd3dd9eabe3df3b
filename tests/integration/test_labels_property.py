"""Properties of the label and feature jobs on generated logs (duplicates, late events,
multi-clicks, last-touch conversions, malformed records), against an independent SQL query,
and read back by another Delta reader (delta-rs)."""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from benchmarks.labels_oracle import count_sql, label_sql
from esmm.util.timeutil import parse_as_of
from jobs.cli import main
from pipelines.io.delta import read_delta
from pipelines.labels.rules import Windows

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DAYS = ["2026-11-01", "2026-11-02"]
AS_OF = "2026-11-12"  # every window of every day has closed
GEN = [
    "generate.start_date=2026-11-01",
    "generate.days=2",
    "generate.impressions_per_day=2000",
    "generate.n_users=150",
    "generate.n_items=40",  # repeat user-item pairs: last touch matters
    "generate.ctr=0.2",
    "generate.cvr=0.3",
    "generate.multi_click_rate=0.2",
    "generate.duplicate_rate=0.03",
    "generate.late_rate=0.05",
    "generate.no_click_id_rate=0.3",
    "generate.malformed_rate=0.012",
    "generate.partitions_per_day=1",
    # malformed_rate: a few records of each malformed kind (3 kinds of ~800 clicks).
    # The gate is tested in test_labels_job.py; here a few malformed records among ~100
    # conversions a day, or the lone late arrival of the day after, would trip it.
    "labels.max_bad_fraction=1.0",
]


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory, shuffle_partitions):
    root = tmp_path_factory.mktemp("prop") / "lakehouse"
    sets = [x for s in [f"lakehouse.root={root}", *GEN] for x in ("--set", s)]
    with shuffle_partitions(2):
        assert main(["generate", *sets]) == 0
        # Label every arrival date the logs cover: 2026-11-03 holds only late arrivals, and a
        # malformed one among them is that date's to quarantine.
        assert main(["labels", "--start", DAYS[0], "--end", "2026-11-03", "--as-of", AS_OF, *sets]) == 0
        assert main(["features", "--start", DAYS[0], "--end", DAYS[-1], *sets]) == 0
        from esmm.config.loader import load_config

        cfg = load_config(overrides=[f"lakehouse.root={root}", *GEN])
        t = {
            n: read_delta(spark, cfg.lakehouse.path(n))
            for n in ("impressions", "clicks", "conversions", "labels", "quarantine", "examples")
        }
        yield cfg, t


def test_label_properties(world):
    _, t = world
    lab = t["labels"]
    assert lab.where("conversion > click").count() == 0
    assert lab.where("conversion = 1 AND (conversion_ts < first_click_ts OR first_click_ts < ts)").count() == 0
    assert lab.groupBy("impression_id").count().where("count > 1").count() == 0
    assert lab.where(F.to_date("ts").cast("string") != F.col("dt")).count() == 0
    n, clicks, convs = lab.agg(F.count(F.lit(1)), F.sum("click"), F.sum("conversion")).first()
    assert n > 3900 and clicks > 500 and convs > 100  # the world is not trivially empty


def test_every_raw_impression_is_labelled_or_quarantined(world):
    _, t = world
    raw = t["impressions"]
    q = t["quarantine"].where("source = 'impressions'")
    with_id = raw.where("impression_id IS NOT NULL AND impression_id <> ''").select("impression_id").distinct()
    labelled = t["labels"].select("impression_id")
    quarantined = q.select(F.col("record_id").alias("impression_id"))
    assert with_id.join(labelled.union(quarantined), "impression_id", "left_anti").count() == 0
    assert labelled.join(quarantined, "impression_id").count() == 0  # never both
    # Records without an id are quarantined once each (exact re-deliveries are one record).
    no_id = raw.where("impression_id IS NULL OR impression_id = ''").drop("impression_id").distinct().count()
    assert no_id > 0
    assert q.where("reason = 'missing_impression_id'").count() == no_id
    # And the other sources' malformed records were caught with their reasons.
    reasons = {r["source"] + "/" + r["reason"] for r in t["quarantine"].select("source", "reason").distinct().collect()}
    assert {
        "clicks/orphan_click",
        "clicks/missing_click_id",
        "clicks/ts_after_arrival",
        "conversions/unknown_click",
        "impressions/arrived_too_late",
        "impressions/missing_user_id",
    } <= reasons


def test_labels_equal_an_independent_sql_query(spark, world):
    cfg, t = world
    for name in ("impressions", "clicks", "conversions"):
        t[name].createOrReplaceTempView(f"raw_{name}")
    w = Windows.from_config(cfg.labels)
    day = DAYS[1]
    query = label_sql("raw_impressions", "raw_clicks", "raw_conversions", day, parse_as_of(AS_OF), w)
    expected = spark.sql(count_sql(query)).first()
    lab = t["labels"].where(F.col("dt") == day)
    got = lab.agg(F.count(F.lit(1)), F.sum("click"), F.sum("conversion")).first()
    assert tuple(got) == tuple(expected)
    # Row by row, too.
    exp_rows = {
        tuple(r)
        for r in spark.sql(query)
        .select("impression_id", F.col("first_click_ts").cast("string"), F.col("conversion_ts").cast("string"))
        .collect()
    }
    got_rows = {
        tuple(r)
        for r in lab.select(
            "impression_id", F.col("first_click_ts").cast("string"), F.col("conversion_ts").cast("string")
        ).collect()
    }
    assert got_rows == exp_rows


def test_curated_tables_are_readable_by_delta_rs(world):
    from deltalake import DeltaTable

    cfg, t = world
    lab = DeltaTable(cfg.lakehouse.path("labels"))
    assert lab.metadata().partition_columns == ["dt"]
    schema = {f.name: str(f.type) for f in lab.schema().to_pyarrow()}
    assert {
        k: schema[k]
        for k in (
            "impression_id",
            "ts",
            "click",
            "first_click_ts",
            "conversion",
            "conversion_ts",
            "label_mature",
            "as_of",
            "click_elapsed_s",
            "conversion_delay_s",
            "dt",
        )
    } == {
        "impression_id": "string",
        "ts": "timestamp[us, tz=UTC]",
        "click": "int32",
        "first_click_ts": "timestamp[us, tz=UTC]",
        "conversion": "int32",
        "conversion_ts": "timestamp[us, tz=UTC]",
        "label_mature": "bool",
        "as_of": "timestamp[us, tz=UTC]",
        "click_elapsed_s": "double",
        "conversion_delay_s": "double",
        "dt": "string",
    }
    pdf = lab.to_pandas()
    assert len(pdf) == t["labels"].count() and (pdf["conversion"] <= pdf["click"]).all()
    assert set(pdf["as_of"].astype(str)) == {"2026-11-13 00:00:00+00:00"}  # end of 2026-11-12
    clicked, converted = pdf["click"] == 1, pdf["conversion"] == 1
    # Seconds from the first click: to the as-of on every click, to the conversion on every conversion.
    assert pdf["click_elapsed_s"].notna().eq(clicked).all() and pdf["conversion_delay_s"].notna().eq(converted).all()
    gap = (pdf["first_click_ts"] - pdf["as_of"]).dt.total_seconds() + pdf["click_elapsed_s"]
    assert gap[clicked].abs().max() < 1e-3
    delay = (pdf["conversion_ts"] - pdf["first_click_ts"]).dt.total_seconds()
    assert ((delay - pdf["conversion_delay_s"])[converted].abs() < 1e-3).all()
    assert (pdf["conversion_delay_s"][converted] >= 0).all()

    ex = DeltaTable(cfg.lakehouse.path("examples"))
    names = [f.name for f in ex.schema().to_pyarrow()]
    cat = [f.name for f in cfg.features.categorical]
    num = [f.name for f in cfg.features.numeric]
    assert names == [
        *("impression_id", "dt", "click", "conversion", "label_mature", "click_elapsed_s", "conversion_delay_s"),
        *cat,
        *num,
        "feature_mapping_id",
    ]
    epdf = ex.to_pandas()
    assert len(epdf) == len(pdf)
    for f in cfg.features.categorical:
        assert str(epdf[f.name].dtype) == "int32" and epdf[f.name].between(0, f.buckets - 1).all()
    assert all(str(epdf[n].dtype) == "float32" for n in num)
    assert set(epdf["feature_mapping_id"]) == {cfg.features.mapping_id}
    q = DeltaTable(cfg.lakehouse.path("quarantine")).to_pandas()
    assert list(q.columns) == ["source", "record_id", "reason", "record", "run_id", "quarantined_at", "dt"]
