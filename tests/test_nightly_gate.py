"""The nightly gate's decision: promote the candidate or keep the champion (pure)."""
import math

import pytest

from esmm.config import GateConfig
from pipelines.nightly.steps import gate_decision

G = GateConfig(max_auc_drop=0.01, calibration_min=0.8, calibration_max=1.25)


@pytest.mark.parametrize("cand, champ, promote", [
    ({"ctcvr_auc": 0.70, "ctcvr_calibration": 1.0}, None, True),  # first model
    ({"ctcvr_auc": 0.40, "ctcvr_calibration": 9.0}, None, True),  # first model, even if poor
    ({"ctcvr_auc": 0.695, "ctcvr_calibration": 1.1}, {"ctcvr_auc": 0.70}, True),  # within the margin
    ({"ctcvr_auc": 0.689, "ctcvr_calibration": 1.1}, {"ctcvr_auc": 0.70}, False),  # worse by > margin
    ({"ctcvr_auc": 0.75, "ctcvr_calibration": 1.3}, {"ctcvr_auc": 0.70}, False),  # miscalibrated
    ({"ctcvr_auc": 0.75, "ctcvr_calibration": 0.79}, {"ctcvr_auc": 0.70}, False),
    ({"ctcvr_auc": math.nan, "ctcvr_calibration": 1.0}, {"ctcvr_auc": 0.70}, False),  # no AUC
])
def test_gate(cand, champ, promote):
    ok, why = gate_decision(cand, champ, G)
    assert ok is promote, why
    assert why.startswith("promoted" if promote else "kept the champion")
