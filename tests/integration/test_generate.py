"""The synthetic logs: contract, determinism, rates, mess, and the selection bias."""

from __future__ import annotations

import math

import pytest
from pyspark.sql import functions as F

from esmm.config.loader import load_config
from pipelines.io.contract import RAW_REQUIRED, ContractError, check_raw
from pipelines.io.delta import read_delta
from pipelines.sim import generator as generate

pytestmark = pytest.mark.integration  # whole jobs on real tables

N_PER_DAY, DAYS = 15_000, 2


def _cfg(root, *extra):
    return load_config(
        overrides=[
            f"lakehouse.root={root}",
            f"generate.days={DAYS}",
            f"generate.impressions_per_day={N_PER_DAY}",
            "generate.n_users=5000",
            "generate.n_items=2000",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    """One generated lakehouse shared by the read-only tests of this module."""
    root = tmp_path_factory.mktemp("gen")
    cfg = _cfg(root)
    counts = generate.run(spark, cfg)
    tables = {n: read_delta(spark, cfg.lakehouse.path(n)) for n in ("impressions", "clicks", "conversions", "truth")}
    return cfg, counts, tables


def test_tables_follow_the_contract(world):
    cfg, counts, t = world
    for source, required in RAW_REQUIRED.items():
        fields = {f.name: f.dataType.simpleString() for f in t[source].schema.fields}
        for name, tp in required:
            assert fields[name] == tp.simpleString(), (source, name)
        check_raw(t[source], source, cfg.features, source)
    feat = {f.name: f.dataType.simpleString() for f in t["impressions"].schema.fields}
    assert feat["price"] == "double" and feat["user_city"] == "string" and feat["position"] == "bigint"
    assert set(t["truth"].columns) == {"impression_id", "true_ctr", "true_cvr", "potential_conversion", "dt"}
    # Ground truth never leaks into the raw tables.
    for source in RAW_REQUIRED:
        assert not {"true_ctr", "true_cvr"} & set(t[source].columns)
    assert counts["impressions"] == t["impressions"].count()
    # The Delta log says the tables are partitioned by dt.
    from delta.tables import DeltaTable

    detail = DeltaTable.forPath(t["impressions"].sparkSession, cfg.lakehouse.path("impressions")).detail()
    assert detail.select("partitionColumns").first()[0] == ["dt"]


def test_rates_match_the_configuration(world):
    _, _, t = world
    truth = t["truth"]
    n = truth.count()
    assert n == N_PER_DAY * DAYS
    imp_ids = t["impressions"].select("impression_id").distinct()
    clicked = t["clicks"].select("impression_id").distinct()
    n_clicked = clicked.count()
    # Calibration: the true rates hit the configured ones (solved on a sample).
    m = truth.agg(F.avg("true_ctr")).first()[0]
    assert m == pytest.approx(0.04, rel=0.03)
    tc = truth.agg((F.sum(F.col("true_ctr") * F.col("true_cvr")) / F.sum("true_ctr"))).first()[0]
    assert tc == pytest.approx(0.05, rel=0.03)
    # Realised clicks: within 4 binomial standard deviations of n * ctr.
    expected = n * m
    assert abs(n_clicked - expected) < 4 * math.sqrt(expected)
    n_conv = t["conversions"].select("conversion_id").distinct().count()
    exp_conv = n_clicked * tc
    assert abs(n_conv - exp_conv) < 4 * math.sqrt(exp_conv) + 5
    assert imp_ids.count() == n


def test_duplicates_late_events_and_attribution_mess(world):
    _, _, t = world
    imp = t["impressions"]
    rows, distinct = imp.count(), imp.select("impression_id").distinct().count()
    assert (rows - distinct) / distinct == pytest.approx(0.01, abs=0.003)
    late = imp.dropDuplicates(["impression_id"]).where(F.col("dt") != F.to_date("ts").cast("string")).count()
    assert late / distinct == pytest.approx(0.01, abs=0.003)
    conv = t["conversions"].dropDuplicates(["conversion_id"])
    n_conv = conv.count()
    no_click = conv.where(F.col("click_id").isNull()).count()
    assert 0.03 < no_click / n_conv < 0.2  # configured 10%
    # Conversion delays: minutes to days, a few beyond the 7-day window.
    clicks = t["clicks"].dropDuplicates(["click_id"])
    j = conv.join(clicks.select("click_id", F.col("ts").alias("cts")), "click_id")
    d = j.select((F.col("ts").cast("long") - F.col("cts").cast("long")).alias("d"))
    stats = d.agg(F.min("d"), F.expr("percentile_approx(d, 0.5)"), F.max("d")).first()
    assert stats[0] >= 1 and 1800 < stats[1] < 6 * 3600 and stats[2] > 2 * 86400
    # Click delays of seconds to minutes.
    cj = clicks.join(
        imp.dropDuplicates(["impression_id"]).select("impression_id", F.col("ts").alias("its")), "impression_id"
    )
    cd = cj.select((F.col("ts").cast("long") - F.col("its").cast("long")).alias("d"))
    cstats = cd.agg(F.min("d"), F.expr("percentile_approx(d, 0.5)")).first()
    assert cstats[0] >= 1 and 5 < cstats[1] < 120
    # Some impressions are clicked twice.
    per_imp = clicks.groupBy("impression_id").count()
    assert per_imp.where("count = 2").count() > 0


def test_clicked_impressions_are_a_biased_sample(world):
    """Shared latent factors make P(convert | clicked) differ from the entire space."""
    _, _, t = world
    truth = t["truth"]
    clicked = t["clicks"].select("impression_id").distinct()
    all_mean = truth.agg(F.avg("true_cvr")).first()[0]
    clicked_mean = truth.join(clicked, "impression_id").agg(F.avg("true_cvr")).first()[0]
    assert clicked_mean > 1.3 * all_mean, (clicked_mean, all_mean)


def test_same_seed_same_rows_other_seed_other_rows(spark, tmp_path):
    small = ["generate.days=1", "generate.impressions_per_day=3000"]
    a = generate.generate_logs(spark, _cfg(tmp_path, *small).generate)
    b = generate.generate_logs(spark, _cfg(tmp_path, *small).generate)
    c = generate.generate_logs(spark, _cfg(tmp_path, *small, "generate.seed=7").generate)
    for name in ("impressions", "clicks", "conversions"):
        ra = sorted(getattr(a, name).collect())
        assert ra == sorted(getattr(b, name).collect())
        assert ra != sorted(getattr(c, name).collect())
    # Row identity does not depend on partitioning: another partition count, same rows.
    d = generate.generate_logs(spark, _cfg(tmp_path, *small, "generate.partitions_per_day=5").generate)
    assert sorted(a.clicks.collect()) == sorted(d.clicks.collect())


def test_malformed_records_when_asked(spark, tmp_path):
    cfg = _cfg(
        tmp_path,
        "generate.days=1",
        "generate.impressions_per_day=4000",
        "generate.malformed_rate=0.05",
        "generate.ctr=0.2",
        "generate.cvr=0.3",
    )
    logs = generate.generate_logs(spark, cfg.generate)
    imp = logs.impressions
    assert imp.where(F.col("impression_id").isNull()).count() > 0
    assert imp.where(F.col("user_id") == "").count() > 0
    assert imp.where(F.year("ts") < 2025).count() > 0
    assert logs.clicks.where(F.col("impression_id").startswith("imp-unknown")).count() > 0
    assert logs.conversions.where(F.col("click_id").startswith("clk-unknown")).count() > 0
    assert logs.conversions.where(F.col("conversion_id") == "").count() > 0
    clean = generate.generate_logs(
        spark, _cfg(tmp_path, "generate.days=1", "generate.impressions_per_day=4000").generate
    )
    assert clean.impressions.where(F.col("impression_id").isNull() | (F.col("user_id") == "")).count() == 0


def test_missing_column_is_named(world):
    cfg, _, t = world
    with pytest.raises(ContractError, match=r"raw impressions table X: missing required column 'user_id'"):
        check_raw(t["impressions"].drop("user_id"), "impressions", cfg.features, "X")
    with pytest.raises(ContractError, match="missing feature column 'price'"):
        check_raw(t["impressions"].drop("price"), "impressions", cfg.features, "X")
    with pytest.raises(ContractError, match="column 'ts' is string, expected timestamp"):
        check_raw(t["clicks"].withColumn("ts", F.col("ts").cast("string")), "clicks", cfg.features, "X")


def test_raw_tables_readable_by_another_delta_reader(world):
    """delta-rs (the ``deltalake`` package) reads what Spark wrote, with the contract's schema."""
    from deltalake import DeltaTable

    cfg, counts, _ = world
    for source, required in RAW_REQUIRED.items():
        table = DeltaTable(cfg.lakehouse.path(source))
        names = set(table.schema().to_pyarrow().names)
        assert {n for n, _ in required} <= names
        pdf = table.to_pandas()
        assert len(pdf) == counts[source]
    imp = DeltaTable(cfg.lakehouse.path("impressions")).to_pandas(columns=["ts", "price", "dt"])
    assert str(imp["ts"].dtype).startswith("datetime64") and imp["price"].dtype == "float64"
