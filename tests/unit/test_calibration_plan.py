"""The nightly holds calibration days out of training (the gate then judges calibrated
scores on the evaluation day: tests/unit/test_gate.py and the nightly end-to-end test)."""

from __future__ import annotations

from esmm.config.schema import LabelConfig, NightlyConfig
from pipelines.nightly.plan import plan_dates

DAYS = [f"2026-11-{d:02d}" for d in range(1, 15)]


def test_plan_holds_out_the_mature_day_before_the_eval_day():
    # Only one day before the eval day: it stays a training day, nothing is held out.
    p = plan_dates("2026-11-14", DAYS[3:], LabelConfig(), NightlyConfig(train_days=3), calibrate=True)
    assert (p.calibration_dates, p.train_dates) == ((), ["2026-11-04"])
    p = plan_dates("2026-11-14", DAYS, LabelConfig(), NightlyConfig(train_days=3), calibrate=True)
    assert (p.eval_date, p.calibration_dates) == ("2026-11-05", ("2026-11-04",))
    assert p.train_dates == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert not set(p.calibration_dates) & set(p.train_dates)


def test_plan_holds_out_several_calibration_days_and_keeps_one_to_train():
    p = plan_dates("2026-11-14", DAYS, LabelConfig(), NightlyConfig(train_days=2), calibrate=True, calibration_days=2)
    assert (p.eval_date, p.calibration_dates) == ("2026-11-05", ("2026-11-03", "2026-11-04"))
    assert p.train_dates == ["2026-11-01", "2026-11-02"]
    # Three days before the eval day and three asked for: two calibrate, one trains.
    p = plan_dates("2026-11-13", DAYS, LabelConfig(), NightlyConfig(train_days=7), calibrate=True, calibration_days=3)
    assert (p.eval_date, p.calibration_dates, p.train_dates) == (
        "2026-11-04",
        ("2026-11-02", "2026-11-03"),
        ["2026-11-01"],
    )


def test_plan_without_calibration_or_with_latest_eval_has_no_calibration_day():
    assert plan_dates("2026-11-14", DAYS, LabelConfig(), NightlyConfig(train_days=3)).calibration_dates == ()
    p = plan_dates("2026-11-03", DAYS, LabelConfig(), NightlyConfig(eval_day="latest"), calibrate=True)
    assert p.calibration_dates == () and p.train_dates == ["2026-11-01", "2026-11-02"]
