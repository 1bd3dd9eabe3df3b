"""The scoring job applies exactly the artifact's calibration maps; without maps it
scores raw and says so. Real Spark, Delta and a small network in the Python workers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.scoring_data import DAY, GOOD, SCHEMA, SPEC, _candidates, _model, _scores

from esmm.calibration.maps import CalibrationError, CalibrationMaps, Map
from esmm.registry import artifacts as registry
from pipelines.features.job import encode_features, feature_names
from pipelines.scoring import job as score


def _hand_maps(model_id: str, ios: int) -> CalibrationMaps:
    """Global pCTR map: 0.5 p up to p = 0.5, then the line to (1, 1); device 'ios': 0.8 p;
    pCTCVR: 0.5 p everywhere (global only)."""
    arr = np.array
    glob = {
        "pctr": Map("isotonic", arr([0.0, 0.5, 1.0]), arr([0.0, 0.25, 1.0])),
        "pctcvr": Map("isotonic", arr([0.0, 1.0]), arr([0.0, 0.5])),
    }
    by_value = {"pctr": {str(ios): Map("isotonic", arr([0.0, 1.0]), arr([0.0, 0.8]))}, "pctcvr": {}}
    return CalibrationMaps(model_id, "isotonic", ["device"], 1, ["2026-11-02"], glob, by_value)


def _expected_pctr(p: float, is_ios: bool) -> float:
    if is_ios:
        return 0.8 * p
    return 0.5 * p if p <= 0.5 else 0.25 + (p - 0.5) * 1.5


def test_scorer_applies_the_saved_map_and_keeps_raw_columns(spark, make_cfg, tmp_path):
    cand = str(tmp_path / "candidates")
    _candidates(spark, cand, GOOD)
    cfg = make_cfg(f"score.candidates={cand}")
    net, model = _model(cfg)
    enc = encode_features(spark.createDataFrame(GOOD, SCHEMA), SPEC).toPandas().set_index("impression_id")
    ios = int(
        encode_features(spark.createDataFrame([("x", "u", "ios", "1", DAY)], SCHEMA), SPEC).select("device").first()[0]
    )
    cat_names, num_names = feature_names(SPEC)
    with torch.inference_mode():
        ref = net(
            torch.from_numpy(enc[cat_names].to_numpy(np.int64)), torch.from_numpy(enc[num_names].to_numpy(np.float32))
        )

    # Uncalibrated first: flagged, raw columns equal the served ones.
    rep = score.run(spark, cfg, DAY, model=model, log=lambda m: None)
    assert rep.calibration_id is None and "UNCALIBRATED" in rep.line()
    got = _scores(spark, cfg)
    for r in got.values():
        assert r["calibrated"] is False and r["calibration_id"] is None
        assert (r["pctr"], r["pcvr"], r["pctcvr"]) == (r["pctr_raw"], r["pcvr_raw"], r["pctcvr_raw"])

    maps = _hand_maps(model.model_id, ios)
    rep = score.run(
        spark,
        cfg,
        DAY,
        model=score.ScoringModel(model.model_id, model.meta, model.state_bytes, maps),
        log=lambda m: None,
    )
    assert rep.calibration_id == maps.calibration_id
    got = _scores(spark, cfg)
    assert sorted(got) == sorted(enc.index)
    n_ios = 0
    for i, key in enumerate(enc.index):
        r = got[key]
        p, q = float(ref["pctr"][i]), float(ref["pctcvr"][i])
        is_ios = int(enc["device"].iloc[i]) == ios
        n_ios += is_ios
        pctr = _expected_pctr(p, is_ios)
        pcvr = min(1.0, 0.5 * q / pctr)
        assert r["pctr_raw"] == pytest.approx(p, rel=1e-5) and r["pctcvr_raw"] == pytest.approx(q, rel=1e-5)
        assert r["pcvr_raw"] == pytest.approx(float(ref["pcvr"][i]), rel=1e-5)
        assert (r["pctr"], r["pcvr"], r["pctcvr"]) == pytest.approx((pctr, pcvr, pctr * pcvr), rel=1e-5)
        assert r["calibrated"] is True and r["calibration_id"] == maps.calibration_id
        assert math.isclose(r["pctcvr"], r["pctr"] * r["pcvr"], rel_tol=1e-5)
    assert 0 < n_ios < len(enc)  # both the field map and the global fallback were exercised


def test_resolve_model_loads_maps_and_refuses_another_models(make_cfg):
    cfg = make_cfg()
    net, model = _model(cfg, model_id="m-a")
    art = Path(cfg.lakehouse.path("models")) / "m-a"
    registry.save_artifact(art, net, {**model.meta, "kind": "esmm"})
    assert score.resolve_model(cfg, "m-a").calibration is None
    maps = _hand_maps("m-a", 3)
    maps.save(art)
    loaded = score.resolve_model(cfg, "m-a").calibration
    assert loaded.calibration_id == maps.calibration_id
    _hand_maps("m-b", 3).save(art)
    with pytest.raises(CalibrationError, match="fitted for model 'm-b', not 'm-a'"):
        score.resolve_model(cfg, "m-a")
