"""The trainer's calibration stage and ``esmm calibrate`` on a tiny examples table."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from esmm import calibration
from esmm.calibration import CalibrationError
from esmm.calibration_fit import fit_calibration
from esmm.config_loader import load_config
from esmm.train import train
from examples_data import TINY_OVERRIDES, examples_df, write_examples

DATES = ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04", "2026-11-05"]


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    write_examples(examples_df(spark, DATES, 800), str(root / "curated" / "examples"))
    return root


def _cfg(root, tmp_path, *extra):
    return load_config(overrides=[
        f"lakehouse.root={root}", *TINY_OVERRIDES, "train.train_start=2026-11-01",
        "train.train_end=2026-11-03", "train.eval_dates=[2026-11-05]", "train.max_steps=20",
        f"train.checkpoint_dir={tmp_path / 'ck'}", f"lakehouse.tables.registry={tmp_path / 'registry'}",
        f"lakehouse.tables.models={tmp_path / 'models'}", "calibration.fields=[a]",
        "calibration.min_count=20", "calibration.report_fields=[a, b]", *extra])


def test_trainer_fits_saves_and_reports_calibration(lake, tmp_path):
    r = train(_cfg(lake, tmp_path, "calibration.dates=[2026-11-04]"))
    state = torch.load(f"{r.artifact_dir}/calibration.pt", weights_only=True)
    assert state["model_id"] == r.model_id and state["dates"] == ["2026-11-04"]
    maps = calibration.load(r.artifact_dir, r.model_id)
    assert maps.by_value["pctr"], "field a has values with >= 20 clicks: own maps"
    meta = json.loads(open(f"{r.artifact_dir}/meta.json").read())
    assert meta["calibration"]["calibrated"] is True
    assert meta["calibration"]["calibration_id"] == maps.calibration_id
    assert set(meta["calibration"]["per_value"]) == {"a", "b"}
    for k in ("ctcvr_pcoc_raw", "ctcvr_pcoc_cal", "ctr_field_rce_a_cal", "ctcvr_ece_cal", "ctr_logloss_cal"):
        assert np.isfinite(r.metrics[k]) and k in meta["metrics"], k
    assert r.metrics["ctcvr_pcoc_raw"] == pytest.approx(r.metrics["ctcvr_calibration"])


def test_uncalibrated_artifact_then_esmm_calibrate(lake, tmp_path):
    cfg = _cfg(lake, tmp_path)
    r = train(cfg)
    assert calibration.load(r.artifact_dir, r.model_id) is None
    assert "ctcvr_pcoc_raw" in r.metrics and "ctcvr_pcoc_cal" not in r.metrics
    with pytest.raises(CalibrationError, match="also training days"):
        fit_calibration(cfg, r.model_id, ["2026-11-03"], log=lambda m: None)
    with pytest.raises(CalibrationError, match="also evaluation days"):
        fit_calibration(cfg, r.model_id, ["2026-11-05"], log=lambda m: None)
    maps = fit_calibration(cfg, r.model_id, ["2026-11-04"], log=lambda m: None)
    meta = json.loads(open(f"{r.artifact_dir}/meta.json").read())
    assert meta["calibration"]["calibration_id"] == maps.calibration_id
    assert "ctcvr_pcoc_cal" in meta["calibration"]["metrics"]
    assert calibration.load(r.artifact_dir, r.model_id).calibration_id == maps.calibration_id
