"""`esmm bench quality` preparation runs the real label and feature jobs (size tiny)."""
import datetime as dt

import pytest
from pyspark.sql import functions as F

from jobs.bench_quality import backfill_as_of, bench_overrides, prepare
from pipelines.delta_io import read_delta


@pytest.mark.integration
@pytest.mark.slow  # end to end: generate + two label runs + features
def test_prepare_labels_all_days_mature_with_last_touch(spark, make_cfg):
    # Size tiny cut to 2 days x 3,000 (each label run costs tens of Spark jobs); cvr 0.3 so
    # that some of the ~70 conversions lack a click_id (generate.no_click_id_rate 0.1).
    cfg = make_cfg(*bench_overrides("tiny", cvr=0.3), "generate.days=2", "generate.impressions_per_day=3000")
    assert cfg.generate.no_click_id_rate == 0.1  # generator defaults kept
    # Last day 2026-11-02 ends 2026-11-03T00:00Z; + click_window 1d + attribution_window 7d.
    assert backfill_as_of(cfg) == dt.datetime(2026, 11, 11, tzinfo=dt.timezone.utc)
    counts = prepare(spark, cfg, log=lambda _: None)

    ex = read_delta(spark, cfg.lakehouse.path("examples"))
    imps = read_delta(spark, cfg.lakehouse.path("impressions"))
    clicks = read_delta(spark, cfg.lakehouse.path("clicks"))
    convs = read_delta(spark, cfg.lakehouse.path("conversions"))
    # One example per distinct impression of each generated day, every one mature.
    expected = {r["d"]: r["n"] for r in imps.groupBy(F.date_format("ts", "yyyy-MM-dd").alias("d"))
                .agg(F.countDistinct("impression_id").alias("n")).collect()}
    got = {r["dt"]: r["count"] for r in ex.groupBy("dt").count().collect()}
    assert got == expected and sorted(got) == ["2026-11-01", "2026-11-02"]
    assert ex.where(~F.col("label_mature")).count() == 0
    labels = read_delta(spark, cfg.lakehouse.path("labels"))
    assert [r["as_of"] for r in labels.select("as_of").distinct().collect()] == [dt.datetime(2026, 11, 11)]

    # Conversions come from click_id attribution AND last touch (NULL click_id).
    by_click_id = (convs.where(F.col("click_id").isNotNull()).select("click_id")
                   .join(clicks.select("click_id", "impression_id"), "click_id")
                   .select("impression_id").distinct().count())
    without_id = convs.where(F.col("click_id").isNull()).select("conversion_id").distinct().count()
    converted = ex.agg(F.sum("conversion")).first()[0]
    assert without_id > 0
    assert by_click_id < converted <= by_click_id + without_id
    assert counts["examples"] == sum(expected.values())
    assert counts["label_conversions"] == converted
