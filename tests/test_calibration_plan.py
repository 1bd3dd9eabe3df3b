"""The nightly holds a calibration day out of training and gates on calibrated scores."""
from __future__ import annotations

from esmm.config import GateConfig, LabelConfig, NightlyConfig
from pipelines.nightly import plan_dates
from pipelines.nightly_steps import gate_decision

DAYS = [f"2026-11-{d:02d}" for d in range(1, 15)]


def test_plan_holds_out_the_mature_day_before_the_eval_day():
    # Only one day before the eval day: it stays a training day, nothing is held out.
    p = plan_dates("2026-11-14", DAYS[3:], LabelConfig(), NightlyConfig(train_days=3), calibrate=True)
    assert (p.calibration_date, p.train_dates) == (None, ["2026-11-04"])
    p = plan_dates("2026-11-14", DAYS, LabelConfig(), NightlyConfig(train_days=3), calibrate=True)
    assert (p.eval_date, p.calibration_date) == ("2026-11-05", "2026-11-04")
    assert p.train_dates == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert p.calibration_date not in p.train_dates


def test_plan_without_calibration_or_with_latest_eval_has_no_calibration_day():
    assert plan_dates("2026-11-14", DAYS, LabelConfig(), NightlyConfig(train_days=3)).calibration_date is None
    p = plan_dates("2026-11-03", DAYS, LabelConfig(), NightlyConfig(eval_day="latest"), calibrate=True)
    assert p.calibration_date is None and p.train_dates == ["2026-11-01", "2026-11-02"]


def test_gate_judges_the_calibrated_pcoc_when_there_is_one():
    g = GateConfig(max_auc_drop=0.01, calibration_min=0.8, calibration_max=1.25)
    raw_high = {"ctcvr_auc": 0.75, "ctcvr_calibration": 1.3}
    ok, why = gate_decision({**raw_high, "ctcvr_pcoc_cal": 1.02}, {"ctcvr_auc": 0.70}, g)
    assert ok and "calibrated CTCVR calibration 1.020 inside" in why
    ok, why = gate_decision(raw_high, {"ctcvr_auc": 0.70}, g)
    assert not ok and "UNCALIBRATED" in why
    ok, _ = gate_decision({**raw_high, "ctcvr_calibration": 1.0, "ctcvr_pcoc_cal": 1.4}, {"ctcvr_auc": 0.70}, g)
    assert not ok
