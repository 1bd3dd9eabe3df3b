"""End to end: generate -> nightly on consecutive dates -> serving/scores, runs, report.

One small generated world (4 days x ~3,000 impressions, a tiny model) is shared by the
stages of one scenario; each stage is a module fixture that builds on the previous one,
and the tests check them, in order:

1. nightly 2026-11-03 with a fault injected inside the scoring tasks: exit 3, the
   score step named, serving/scores not written;
2. the same date re-run: only score and report run; the result equals a clean
   re-scoring of the day with the same model (what an uninterrupted run writes);
3. nightly 2026-11-04: every step once;
4. nightly 2026-11-04 again: nothing runs, no table gets a new Delta version;
5. serving/scores read by delta-rs (no Spark) equals what Spark reads;
6. the report's images are PNGs (and it loads cleanly in Chromium when present).

Label windows are shortened (click 1h, attribution 12h, lateness 1h: labels are final
after one day) so that four days give a training day, a mature evaluation day and two
nightly dates.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path

import pytest
from helpers.report_pages import CHROMIUM
from pyspark.sql import functions as F

from esmm.registry import artifacts as registry
from pipelines import nightly
from pipelines.nightly.runner import EXIT_OK, EXIT_STEP_FAILED
from pipelines.nightly.runs import RunsTable
from pipelines.nightly.steps import STEPS
from pipelines.scoring import job as score
from pipelines.sim import generator as generate

pytestmark = [pytest.mark.slow, pytest.mark.integration]
D3, D4 = "2026-11-03", "2026-11-04"


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    from esmm.config.loader import load_config

    root = tmp_path_factory.mktemp("e2e")
    cfg = load_config(
        overrides=[
            f"lakehouse.root={root}",
            "generate.start_date=2026-11-01",
            "generate.days=4",
            "generate.impressions_per_day=3000",
            "generate.n_users=2000",
            "generate.n_items=500",
            "labels.click_window=1h",
            "labels.attribution_window=12h",
            "labels.max_lateness=1h",
            "labels.max_bad_fraction=0.05",
            "nightly.train_days=2",
            "model.embedding_dim=4",
            "model.tower=[16]",
            "train.batch_size=256",
            "train.reader_workers=1",
            "train.shuffle_buffer=1000",
            "train.device=cpu",
            "score.batch_size=500",
        ]
    )
    generate.run(spark, cfg)
    return cfg


def _quiet(msg: str) -> None:
    pass


def _scores(spark, cfg, day):
    return {
        r["impression_id"]: (r["pctr"], r["pcvr"], r["pctcvr"], r["model_id"])
        for r in spark.read.format("delta").load(cfg.lakehouse.path("scores")).where(F.col("dt") == day).collect()
    }


def _versions(cfg) -> dict[str, int]:
    from deltalake import DeltaTable

    return {
        t: DeltaTable(cfg.lakehouse.path(t)).version()
        for t in ("labels", "examples", "quarantine", "registry", "scores", "runs")
    }


@pytest.fixture(scope="module")
def faulted(spark, world):
    """Stage 1: nightly D3 with a fault injected inside the scoring tasks."""
    from delta.tables import DeltaTable

    r = nightly.run(world, D3, lambda: spark, options={"score": {"fail_after_batches": 0}}, log=_quiet)
    return {
        "result": r,
        "scores_written": DeltaTable.isDeltaTable(spark, world.lakehouse.path("scores")),
        "champion": (registry.champion(world.lakehouse.path("registry")) or {}).get("model_id"),
    }


@pytest.fixture(scope="module")
def retried(spark, world, faulted):
    """Stage 2: D3 again; then the same day re-scored cleanly by the same model."""
    r = nightly.run(world, D3, lambda: spark, log=_quiet)
    recovered = _scores(spark, world, D3)
    score.run(spark, world, D3, model_id=faulted["champion"], log=_quiet)
    return {"result": r, "recovered": recovered, "clean": _scores(spark, world, D3)}


@pytest.fixture(scope="module")
def next_night(spark, world, retried):
    """Stage 3: nightly D4."""
    return nightly.run(world, D4, lambda: spark, log=_quiet)


@pytest.fixture(scope="module")
def same_night_again(spark, world, next_night):
    """Stage 4: nightly D4 a second time, with every table's Delta version around it."""
    before = _versions(world)
    r = nightly.run(world, D4, lambda: spark, log=_quiet)
    return {"result": r, "before": before, "after": _versions(world)}


def test_1_a_scoring_fault_fails_the_score_step_and_writes_no_scores(faulted):
    r1 = faulted["result"]
    assert (r1.exit_code, r1.failed_step) == (EXIT_STEP_FAILED, "score"), r1.message
    assert "injected scoring fault" in r1.message
    assert r1.ran == ["labels", "features", "train", "evaluate", "gate", "score"]
    assert not faulted["scores_written"]
    assert faulted["champion"] is not None  # the first model is promoted


def test_2_rerun_retries_only_the_failed_step_and_equals_a_clean_run(retried):
    r2 = retried["result"]
    assert r2.exit_code == EXIT_OK and r2.ran == ["score", "report"], r2.message
    assert r2.reused == ["labels", "features", "train", "evaluate", "gate"]
    assert retried["recovered"] and retried["clean"] == retried["recovered"]


def test_3_next_date_runs_every_step_and_scores_each_key_once(spark, world, next_night):
    cfg = world
    assert next_night.exit_code == EXIT_OK and next_night.ran == list(STEPS), next_night.message
    imps = spark.read.format("delta").load(cfg.lakehouse.path("impressions"))
    for day in (D3, D4):
        keys = {r[0] for r in imps.where(F.col("dt") == day).select("impression_id").distinct().collect()}
        rows = spark.read.format("delta").load(cfg.lakehouse.path("scores")).where(F.col("dt") == day)
        assert rows.count() == len(keys) == rows.select("impression_id").distinct().count()
        got = _scores(spark, cfg, day)
        assert set(got) == keys
        for pctr, pcvr, pctcvr, _ in got.values():
            assert 0.0 < pctr < 1.0 and 0.0 < pcvr < 1.0
            assert math.isclose(pctcvr, pctr * pcvr, rel_tol=1e-5, abs_tol=1e-8)
    assert {v[3] for v in _scores(spark, cfg, D4).values()} == {
        registry.champion(cfg.lakehouse.path("registry"))["model_id"]
    }


def test_3_runs_table_has_each_step_once_but_the_retried_score(world, next_night):
    runs = RunsTable(world.lakehouse.path("runs")).rows()
    d4 = [(r["step"], r["attempt"], r["status"]) for r in runs if r["run_date"] == D4]
    assert sorted(d4) == sorted((s, 1, "succeeded") for s in STEPS)
    d3 = sorted((r["step"], r["attempt"], r["status"]) for r in runs if r["run_date"] == D3)
    assert d3 == sorted(
        [(s, 1, "succeeded") for s in STEPS if s != "score"] + [("score", 1, "failed"), ("score", 2, "succeeded")]
    )


def test_4_the_same_date_twice_changes_nothing(same_night_again):
    r4 = same_night_again["result"]
    assert r4.exit_code == EXIT_OK and r4.ran == [] and r4.reused == list(STEPS)
    assert same_night_again["after"] == same_night_again["before"]


def test_5_a_reader_without_spark_reads_the_same_scores(spark, world, next_night):
    from deltalake import DeltaTable as RsTable

    cfg = world
    pdf = RsTable(cfg.lakehouse.path("scores")).to_pandas()
    assert list(pdf.columns) == [
        "impression_id",
        "pctr",
        "pcvr",
        "pctcvr",
        "pctr_raw",
        "pcvr_raw",
        "pctcvr_raw",
        "calibrated",
        "calibration_id",
        "model_id",
        "scored_at",
        "dt",
    ]
    assert len(pdf) == spark.read.format("delta").load(cfg.lakehouse.path("scores")).count()
    rs = {(r.dt, r.impression_id): (r.pctr, r.pctcvr) for r in pdf.itertuples()}
    for day in (D3, D4):
        for k, v in _scores(spark, cfg, day).items():
            assert rs[(day, k)] == pytest.approx((v[0], v[2]))


def test_6_the_report_of_the_night(next_night):
    from helpers.report_pages import check_page_images

    from esmm.evaluation.predictions import ctcvr_label, load_predictions

    page = Path(next_night.outputs["report"]["path"])
    srcs = check_page_images(page)
    assert {"volumes.png", "maturity.png", "scores.png", "curves.png", "reliability.png"} <= set(srcs)
    # The gate's decision and its numbers are in the step outputs and on the page.
    gate = next_night.outputs["gate"]
    assert set(next_night.outputs["evaluate"]["predictions"]) == {"candidate", "champion"}
    cand = load_predictions(next_night.outputs["evaluate"]["predictions"]["candidate"])
    assert (gate["n_rows"], gate["n_conversions"]) == (len(cand["pctcvr"]), int(ctcvr_label(cand).sum()))
    assert gate["n_rows"] > 0 and "calibration" in gate["tests"]
    assert html.escape(gate["decision"]) in page.read_text()


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("ESMM_REQUIRE_BROWSER"),
    reason="no chromium on PATH (apt-get install -y chromium); CI requires it (ESMM_REQUIRE_BROWSER)",
)
def test_6b_the_report_loads_in_a_browser(next_night):
    from helpers.report_pages import browser_probe, check_page_images

    assert CHROMIUM, "ESMM_REQUIRE_BROWSER is set but no chromium is on PATH"
    page = Path(next_night.outputs["report"]["path"])
    found = browser_probe(page)
    assert found["errors"] == [] and found["broken"] == [] and found["images"] == len(check_page_images(page))
