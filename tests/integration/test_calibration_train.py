"""The trainer's calibration stage and ``esmm calibrate`` on a tiny examples table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.examples_data import TINY_OVERRIDES, examples_df, write_examples

from esmm.calibration import maps as calibration
from esmm.calibration.fit import fit_calibration
from esmm.calibration.maps import CalibrationError
from esmm.config.loader import load_config
from esmm.training.trainer import train

DATES = ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04", "2026-11-05"]


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    write_examples(examples_df(spark, DATES, 800), str(root / "curated" / "examples"))
    return root


def _cfg(root, tmp_path, *extra):
    return load_config(
        overrides=[
            f"lakehouse.root={root}",
            *TINY_OVERRIDES,
            "train.train_start=2026-11-01",
            "train.train_end=2026-11-03",
            "train.eval_dates=[2026-11-05]",
            "train.max_steps=20",
            f"train.checkpoint_dir={tmp_path / 'ck'}",
            f"lakehouse.tables.registry={tmp_path / 'registry'}",
            f"lakehouse.tables.models={tmp_path / 'models'}",
            "calibration.fields=[a]",
            "calibration.min_count=20",
            "calibration.report_fields=[a, b]",
            *extra,
        ]
    )


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


def test_evaluation_with_the_maps_scores_what_serving_holds(lake, tmp_path):
    """The nightly's evaluate step passes the artifact's maps: the saved per-row scores the
    gate compares are the calibrated ones, exactly esmm.calibration.maps.apply of the raw ones."""
    from esmm.data.examples import read_arrow, resolve_snapshot
    from esmm.evaluation.metrics import evaluate
    from esmm.evaluation.predictions import load_predictions
    from esmm.registry import artifacts as registry

    r = train(_cfg(lake, tmp_path, "calibration.dates=[2026-11-04]"))
    model, meta = registry.load_model(r.artifact_dir)
    maps = calibration.load(r.artifact_dir, r.model_id)
    snap = resolve_snapshot(str(lake / "curated" / "examples"), ["2026-11-05"])
    spec = registry.spec_of(meta)
    raw_m = evaluate(model, snap, spec, predictions_path=tmp_path / "raw.npz")
    cal_m = evaluate(model, snap, spec, predictions_path=tmp_path / "cal.npz", calibration=maps)
    raw, cal = load_predictions(tmp_path / "raw.npz"), load_predictions(tmp_path / "cal.npz")
    assert "calibrated" not in raw_m and cal_m["calibrated"] == 1.0
    assert np.array_equal(raw["impression_id"], cal["impression_id"])
    df = read_arrow(snap, ["impression_id", "a", "label_mature"], filter_mature=True).to_pandas()
    df = df.set_index("impression_id")
    values = {"a": df.loc[raw["impression_id"], "a"].to_numpy()}
    pctr, pcvr, pctcvr = calibration.apply(maps, raw["pctr"], raw["pctcvr"], values)
    np.testing.assert_allclose(cal["pctr"], pctr, rtol=1e-6)
    np.testing.assert_allclose(cal["pctcvr"], pctcvr, rtol=1e-6)
    np.testing.assert_allclose(cal["pcvr"], pcvr, rtol=1e-6)
    assert not np.allclose(cal["pctcvr"], raw["pctcvr"])
