"""The world's oracle metrics, its potential outcomes and its selection-bias knob."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F

from esmm.config.loader import load_config
from esmm.evaluation.metrics import auc
from pipelines.io.delta import read_delta
from pipelines.sim import generator as generate
from pipelines.sim.oracle import ORACLE_METRICS, binned_auc, oracle_metrics


def _cfg(root, *extra):
    return load_config(
        overrides=[
            f"lakehouse.root={root}",
            "generate.days=2",
            "generate.impressions_per_day=6000",
            "generate.n_users=3000",
            "generate.n_items=1500",
            "generate.cvr=0.2",
            *extra,
        ]
    )


def test_binned_auc_matches_exact_auc_on_hand_made_rows(spark):
    # Two groups; scores far apart on the logit scale (distinct bins) plus one tie.
    rows = [
        ("a", "m", 0.9, 1),
        ("a", "m", 0.8, 0),
        ("a", "m", 0.3, 1),
        ("a", "m", 0.1, 0),
        ("a", "m", 0.1, 1),
        ("b", "m", 0.2, 1),
        ("b", "m", 0.7, 0),
        ("b", "m", 0.5, 0),
    ]
    df = spark.createDataFrame(rows, "g string, m string, s double, y int")
    got = {r["g"]: r["auc"] for r in binned_auc(df, "g", "m", "s", "y").collect()}
    for g in ("a", "b"):
        s = np.array([r[2] for r in rows if r[0] == g])
        y = np.array([r[3] for r in rows if r[0] == g])
        assert got[g] == pytest.approx(auc(s, y), abs=1e-12)
    assert got["a"] == pytest.approx((1 + 1 + 0.5 + 1 + 0 + 0) / 6)  # pairs counted by hand
    assert got["b"] == 0.0
    one_class = spark.createDataFrame([("c", "m", 0.4, 1)], "g string, m string, s double, y int")
    assert binned_auc(one_class, "g", "m", "s", "y").first()["auc"] is None


@pytest.mark.slow  # generates and writes a small world (about a minute)
def test_generate_writes_potential_outcomes_and_oracle(spark, tmp_path):
    cfg = _cfg(tmp_path)
    generate.run(spark, cfg, log=lambda _: None)
    truth = read_delta(spark, cfg.lakehouse.path("truth"))
    clicks = read_delta(spark, cfg.lakehouse.path("clicks")).select("impression_id", "click_id").distinct()
    convs = read_delta(spark, cfg.lakehouse.path("conversions"))
    converted = (
        convs.where(F.col("click_id").isNotNull())
        .select("click_id")
        .distinct()
        .join(clicks, "click_id")
        .select("impression_id")
        .distinct()
        .withColumn("observed", F.lit(1))
    )
    clicked = truth.join(clicks.select("impression_id").distinct(), "impression_id")
    j = clicked.join(converted, "impression_id", "left").fillna(0, ["observed"])
    # Conversions with a click_id: potential outcome 1 for each; clicked rows with
    # potential outcome 1 are the observed conversions (10% arrive without click_id).
    assert j.where((F.col("observed") == 1) & (F.col("potential_conversion") == 0)).count() == 0
    n_pot = j.where(F.col("potential_conversion") == 1).count()
    n_obs = convs.select("conversion_id").distinct().count()
    assert n_pot == n_obs and n_pot > 50
    # Unclicked impressions have potential outcomes too, at about their true CVR.
    m = truth.agg(F.avg("potential_conversion"), F.avg("true_cvr")).first()
    assert m[0] == pytest.approx(m[1], rel=0.15)

    oracle = {r["dt"]: r.asDict() for r in read_delta(spark, cfg.lakehouse.path("oracle")).collect()}
    assert sorted(oracle) == [*cfg.generate.dates, "all"]
    total = oracle["all"]
    assert total["impressions"] == truth.count() == sum(oracle[d]["impressions"] for d in cfg.generate.dates)
    assert total["conversions"] == n_pot
    for name in ORACLE_METRICS:
        assert 0.5 < total[name] < 1.0, name
    # The oracle's CTR AUC agrees with an exact AUC of the written truth.
    pdf = (
        truth.join(
            read_delta(spark, cfg.lakehouse.path("clicks"))
            .select("impression_id")
            .distinct()
            .withColumn("click", F.lit(1)),
            "impression_id",
            "left",
        )
        .fillna(0, ["click"])
        .toPandas()
    )
    assert total["ctr_auc"] == pytest.approx(auc(pdf["true_ctr"].to_numpy(), pdf["click"].to_numpy()), abs=2e-3)


def _clicked_vs_all_true_cvr(spark, root, bias: float) -> float:
    """E[true_cvr | clicked] / E[true_cvr] from the true probabilities (no click noise)."""
    logs = generate.generate_logs(spark, _cfg(root, f"generate.selection_bias={bias}").generate)
    r = logs.outcomes.agg(
        (F.sum(F.col("true_ctr") * F.col("true_cvr")) / F.sum("true_ctr")).alias("c"), F.avg("true_cvr").alias("a")
    ).first()
    return r["c"] / r["a"]


def test_selection_bias_knob_sets_the_direction_of_the_bias(spark, tmp_path):
    ratio = {b: _clicked_vs_all_true_cvr(spark, tmp_path, b) for b in (-0.5, 0.0, 0.5, 0.9)}
    # none: clicked impressions convert like all, in expectation over worlds; one small
    # world is off by the chance correlation of its few dominant categories' effects.
    assert 0.85 < ratio[0.0] < 1.2, ratio
    assert ratio[-0.5] < 0.8, ratio  # negative: clicked ones convert less
    assert 1.3 < ratio[0.5] < ratio[0.9], ratio  # default, and strong is stronger


def test_oracle_metrics_of_a_pure_frame(spark):
    rows = [("d", 0.9, 0.8, 1, 1), ("d", 0.1, 0.1, 0, 0), ("d", 0.5, 0.7, 1, 0), ("d", 0.2, 0.3, 0, 1)]
    df = spark.createDataFrame(
        rows, "dt string, true_ctr double, true_cvr double, click int, " "potential_conversion int"
    )
    r = oracle_metrics(df).first().asDict()
    assert (r["impressions"], r["clicks"], r["conversions"], r["potential_conversions"]) == (4, 2, 1, 2)
    assert r["ctr_auc"] == 1.0 and r["cvr_auc_clicked"] == 1.0
    assert r["cvr_auc_all"] == pytest.approx(auc(np.array([0.8, 0.1, 0.7, 0.3]), np.array([1, 0, 0, 1])))
    assert r["ctcvr_auc"] == 1.0
    assert r["mean_true_cvr_clicked"] == pytest.approx(0.75)
