"""`esmm bench quality` preparation runs the real label and feature jobs (size tiny)."""

import datetime as dt

import pytest
from pyspark.sql import functions as F

from benchmarks.quality import backfill_as_of, bench_overrides, prepare
from pipelines.io.delta import read_delta


@pytest.mark.integration
@pytest.mark.slow  # end to end: generate + two label runs + features
def test_prepare_labels_all_days_mature_with_last_touch(spark, make_cfg):
    # Size tiny cut to 2 days x 3,000 (each label run costs tens of Spark jobs); cvr 0.3 so
    # that some of the ~70 conversions lack a click_id (generate.no_click_id_rate 0.1).
    cfg = make_cfg(*bench_overrides("tiny", cvr=0.3), "generate.days=2", "generate.impressions_per_day=3000")
    assert cfg.generate.no_click_id_rate == 0.1  # generator defaults kept
    # Last day 2026-11-02 ends 2026-11-03T00:00Z; + click_window 1d + attribution_window 7d.
    assert backfill_as_of(cfg) == dt.datetime(2026, 11, 12, tzinfo=dt.timezone.utc)  # day end + W + T + L
    counts = prepare(spark, cfg, log=lambda _: None)

    ex = read_delta(spark, cfg.lakehouse.path("examples"))
    imps = read_delta(spark, cfg.lakehouse.path("impressions"))
    clicks = read_delta(spark, cfg.lakehouse.path("clicks"))
    convs = read_delta(spark, cfg.lakehouse.path("conversions"))
    # One example per distinct impression of each generated day, every one mature.
    expected = {
        r["d"]: r["n"]
        for r in imps.groupBy(F.date_format("ts", "yyyy-MM-dd").alias("d"))
        .agg(F.countDistinct("impression_id").alias("n"))
        .collect()
    }
    got = {r["dt"]: r["count"] for r in ex.groupBy("dt").count().collect()}
    assert got == expected and sorted(got) == ["2026-11-01", "2026-11-02"]
    assert ex.where(~F.col("label_mature")).count() == 0
    labels = read_delta(spark, cfg.lakehouse.path("labels"))
    assert [r["as_of"] for r in labels.select("as_of").distinct().collect()] == [dt.datetime(2026, 11, 12)]

    # Conversions come from click_id attribution AND last touch (NULL click_id).
    by_click_id = (
        convs.where(F.col("click_id").isNotNull())
        .select("click_id")
        .join(clicks.select("click_id", "impression_id"), "click_id")
        .select("impression_id")
        .distinct()
        .count()
    )
    without_id = convs.where(F.col("click_id").isNull()).select("conversion_id").distinct().count()
    converted = ex.agg(F.sum("conversion")).first()[0]
    assert without_id > 0
    assert by_click_id < converted <= by_click_id + without_id
    assert counts["examples"] == sum(expected.values())
    assert counts["label_conversions"] == converted


def test_paired_differences_and_t_on_hand_made_numbers():
    from benchmarks.quality import lift_share, mean_std, paired, verdict

    a, b = [0.70, 0.72, 0.71, 0.69], [0.65, 0.66, 0.67, 0.66]
    d = paired(a, b)  # differences 0.05, 0.06, 0.04, 0.03
    assert d["n"] == 4 and d["mean"] == pytest.approx(0.045)
    sd = (sum((x - 0.045) ** 2 for x in (0.05, 0.06, 0.04, 0.03)) / 3) ** 0.5
    assert d["std"] == pytest.approx(sd)
    assert d["t"] == pytest.approx(0.045 / (sd / 2))
    assert verdict(d).startswith("shown")
    noisy = paired([0.70, 0.60, 0.72], [0.66, 0.69, 0.66])  # +0.04, -0.09, +0.06
    assert abs(noisy["t"]) < 2 and verdict(noisy).startswith("NOT shown")
    assert paired([0.7], [0.6])["t"] != paired([0.7], [0.6])["t"]  # one pair: t is NaN
    assert mean_std([1.0, float("nan"), 3.0]) == {"mean": 2.0, "std": pytest.approx(2**0.5), "n": 2}
    assert lift_share(0.7, 0.9) == pytest.approx(0.5)


def test_summary_and_markdown_from_hand_made_seed_records():
    from benchmarks.quality import markdown, summarize

    def rec(k, esmm, naive):
        oracle = {"ctr_auc": 0.8, "cvr_auc_clicked": 0.75, "cvr_auc_all": 0.8, "ctcvr_auc": 0.9}
        m = lambda v: {  # noqa: E731
            "cvr_auc_all_potential": v,
            "ctcvr_auc": v + 0.1,
            "ctr_auc": 0.7,  # noqa: E731
            "pcvr_over_all": 1.5,
            "seconds": 10.0 + k,
        }
        return {"seed": k, "oracle": oracle, "models": {"esmm": m(esmm), "naive": m(naive)}}

    recs = [rec(0, 0.65, 0.60), rec(1, 0.66, 0.62), rec(2, 0.64, 0.61)]
    s = summarize(recs, ("naive", "esmm"))
    assert s["models"]["esmm"]["cvr_auc_all_potential"]["mean"] == pytest.approx(0.65)
    assert s["models"]["esmm"]["lift_ctr_auc"]["mean"] == pytest.approx(0.2 / 0.3)
    assert s["models"]["naive"]["lift_ctcvr_auc"]["mean"] == pytest.approx((0.71 - 0.5) / 0.4)
    assert list(s["paired"]) == ["esmm - naive"]
    d = s["paired"]["esmm - naive"]["cvr_auc_all_potential"]
    assert d["mean"] == pytest.approx(0.04) and d["t"] > 2
    md = markdown(s, "head")
    assert "| cvr_auc_all_potential | 0.6100 ± 0.0100 | 0.6500 ± 0.0100 |" in md
    assert "ESMM - naive on cvr_auc_all_potential: +0.0400" in md and "shown (positive, paired t > 2)" in md


@pytest.mark.slow  # two tiny worlds, two models each, then the sweep's outputs of one cell
def test_bench_quality_and_sweep_end_to_end(spark, tmp_path):
    import json

    from benchmarks import quality as bench_quality
    from benchmarks import sweep as bench_sweep

    small = [
        f"lakehouse.root={tmp_path / 'lh'}",
        "generate.n_users=2000",
        "generate.n_items=1000",
        "generate.cvr=0.2",
        "model.embedding_dim=4",
        "model.tower=[16]",
        "train.batch_size=512",
        "train.reader_workers=1",
        "train.shuffle_buffer=2000",
        "train.torch_threads=1",
    ]
    res = bench_quality.run(
        spark, [], small, size="tiny", seeds=2, models=("naive", "esmm"), out_dir=str(tmp_path / "q")
    )
    saved = json.loads((tmp_path / "q" / "bench_quality.json").read_text())
    assert [s["seed"] for s in saved["seeds"]] == [0, 1]
    # The world changes with the seed: different oracle rows.
    assert saved["seeds"][0]["oracle"]["clicks"] != saved["seeds"][1]["oracle"]["clicks"]
    esmm = res["summary"]["models"]["esmm"]
    assert esmm["cvr_auc_all_potential"]["n"] == 2 and 0.0 < esmm["cvr_auc_all_potential"]["mean"] < 1.0
    assert esmm["pcvr_over_all"]["mean"] > 0 and "lift_ctcvr_auc" in esmm
    assert res["summary"]["paired"]["esmm - naive"]["ctcvr_auc"]["n"] == 2
    md = (tmp_path / "q" / "bench_quality.md").read_text()
    assert "Oracle of the evaluation day" in md and "ESMM - naive on ctcvr_auc" in md

    out = bench_sweep.run(
        spark, [], small, size="tiny", seeds=2, cvrs=[0.2], biases=["none"], out_dir=str(tmp_path / "s")
    )
    assert (tmp_path / "s" / "sweep.png").stat().st_size > 1000
    assert "<img src='data:image/png;base64," in (tmp_path / "s" / "sweep.html").read_text()
    cell = out["cells"][0]["summary"]
    assert cell["n"] == 2 and cell["esmm_minus_naive_ctcvr_auc"]["n"] == 2


def test_sweep_outputs_from_hand_made_runs_with_missing_cells(tmp_path):
    import json

    from benchmarks.sweep import write_outputs

    def run(k, esmm, naive):
        m = lambda v, o: {  # noqa: E731
            "cvr_auc_all_potential": v,
            "ctcvr_auc": v + 0.1,
            "cvr_auc_all_truth": v,  # noqa: E731
            "pcvr_over_all": o,
        }
        return {
            "seed": k,
            "oracle": {"cvr_auc_all": 0.8, "conversions": 40},
            "models": {"naive": m(naive, 1.4), "esmm": m(esmm, 0.9)},
        }

    records = {
        (0.02, "none"): [run(0, 0.66, 0.62), run(1, 0.65, 0.63), run(2, 0.67, 0.62)],
        (0.15, "none"): [run(0, 0.70, 0.71)],
    }  # a sweep stopped after one run of this cell
    res = write_outputs(records, [0.02, 0.15], ["none", "strong"], ("naive", "esmm"), "head", tmp_path)
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    page = (tmp_path / "sweep.html").read_text()
    # differences 0.04, 0.02, 0.05: mean 0.0367, sample std 0.0153, t = 0.0367 / (0.0153 / sqrt 3) = 4.2
    assert "+0.0367 ± 0.0153, t +4.2" in page
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert [(c["cvr"], c["bias"], c["summary"]["n"]) for c in saved["cells"]] == [(0.02, "none", 3), (0.15, "none", 1)]
    assert res["cells"][0]["summary"]["esmm_pcvr_over_all"]["mean"] == pytest.approx(0.9)


def test_calibration_verdict_counts_runs_inside_the_target_and_halved_rce():
    from benchmarks.quality import CALIBRATION, markdown, summarize

    def run(cal_pcoc, rce_raw, rce_cal, conv):
        m = {name: 1.0 for name in CALIBRATION}
        m.update(
            pctcvr_pcoc_truth_cal=cal_pcoc,
            pctcvr_frce_truth_position_raw=rce_raw,
            pctcvr_frce_truth_position_cal=rce_cal,
            calibration_conversions=conv,
            seconds=1.0,
        )
        return m

    seeds = [
        {
            "oracle": {"ctr_auc": 0.8, "cvr_auc_clicked": 0.8, "cvr_auc_all": 0.8, "ctcvr_auc": 0.9},
            "models": {"esmm": run(p, 0.4, c, 400.0)},
        }
        for p, c in ((1.00, 0.1), (1.04, 0.3), (1.08, 0.15))
    ]
    md = markdown(summarize(seeds, ("esmm",)), "header", seeds)
    assert "inside [0.95, 1.05] in 2/3 runs" in md
    assert "halved in 2/3" in md  # 0.1 and 0.15 are <= 0.2; 0.3 is not
    assert "±5.0%" in md  # 1 / sqrt(400)
    # Without calibration metrics the section is absent.
    plain = [{"oracle": s["oracle"], "models": {"esmm": {"seconds": 1.0}}} for s in seeds]
    assert "Calibration on the evaluation day" not in markdown(summarize(plain, ("esmm",)), "h", plain)
