"""The report's intervals, gate numbers and reliability diagrams, from per-row scores on disk."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.report_pages import check_page_images, sample_data

from esmm.config.schema import GateConfig
from esmm.evaluation.intervals import reliability_bins
from esmm.evaluation.metrics import compute_metrics
from esmm.evaluation.predictions import save_predictions
from pipelines.nightly.gate import decide
from pipelines.report import uncertainty as report_uncertainty
from pipelines.report.page import render


def _day(seed: int, n: int = 30_000):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    pctr = 1 / (1 + np.exp(-(-3.0 + 0.8 * x[:, 0])))
    pcvr = 1 / (1 + np.exp(-(-2.0 + 0.8 * x[:, 1])))
    click = (rng.random(n) < pctr).astype(float)
    conv = click * (rng.random(n) < pcvr)
    return [f"i{k}" for k in range(n)], click, conv, {"pctr": pctr, "pcvr": pcvr, "pctcvr": pctr * pcvr}


def test_intervals_gate_numbers_and_reliability_bins_reach_the_page(tmp_path):
    ids, click, conv, champ = _day(0)
    rng = np.random.default_rng(1)
    cand = {k: np.clip(v * np.exp(rng.normal(0, 0.3, len(v))), 0, 1) for k, v in champ.items()}
    cand["pctcvr"] = cand["pctr"] * cand["pcvr"]
    order = rng.permutation(len(ids))  # the champion's file lists the rows in another order
    paths = {
        "candidate": save_predictions(tmp_path / "c.npz", ids, click, conv, cand),
        "champion": save_predictions(
            tmp_path / "h.npz", np.array(ids)[order], click[order], conv[order], {k: v[order] for k, v in champ.items()}
        ),
    }
    unc = report_uncertainty.collect({r: str(p) for r, p in paths.items()})
    metrics = {"candidate": compute_metrics(cand, click, conv), "champion": compute_metrics(champ, click, conv)}
    for role in ("candidate", "champion"):
        for m, (lo, hi) in unc["intervals"][role].items():
            assert lo < metrics[role][m] < hi, (role, m, lo, hi)
        bins = unc["bins"][role]["ctcvr"]
        assert sum(bins["n"]) == len(ids) and sum(bins["positives"]) == conv.sum()
        assert all(lo <= r <= hi for lo, r, hi in zip(bins["lo"], bins["rate"], bins["hi"]))
    d_auc = metrics["candidate"]["ctcvr_auc"] - metrics["champion"]["ctcvr_auc"]
    lo, hi = unc["paired"]["ctcvr_auc"]
    assert lo < d_auc < hi and hi - lo < 0.05  # paired: much narrower than either AUC's own interval
    own = unc["intervals"]["champion"]["ctcvr_auc"]
    assert hi - lo < own[1] - own[0]

    gate = decide(cand["pctcvr"], champ["pctcvr"], click * conv, GateConfig())
    data = sample_data(
        tmp_path,
        metrics=metrics,
        uncertainty=unc,
        gate={"promoted": gate.promote, "decision": gate.reason, **gate.as_dict()},
    )
    page = render(data, tmp_path / "r")
    assert "reliability.png" in check_page_images(page)
    text = page.read_text()
    c_auc = metrics["candidate"]["ctcvr_auc"]
    ci = unc["intervals"]["candidate"]["ctcvr_auc"]
    assert f"{c_auc:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]" in text
    assert f"<th>ctcvr_auc (paired)</th><td>{gate.tests['ctcvr_auc']['candidate']:.4f}</td>" in text
    assert f"{int(conv.sum()):,} conversions on {len(ids):,} evaluation rows" in text


def test_without_predictions_the_report_keeps_the_artifact_diagrams(tmp_path):
    assert report_uncertainty.collect({"candidate": str(tmp_path / "missing.npz")}) == {
        "intervals": {},
        "paired": {},
        "bins": {},
    }
    page = render(sample_data(tmp_path), tmp_path / "r")
    assert "reliability_candidate.png" in check_page_images(page)


@pytest.mark.parametrize("n_conv", [0, 3])
def test_tiny_days_do_not_break_the_bins(n_conv):
    p = np.linspace(0.01, 0.2, 50)
    y = np.r_[np.ones(n_conv), np.zeros(50 - n_conv)]
    b = reliability_bins(p, y)
    assert b["n"].sum() == 50 and b["positives"].sum() == n_conv and (b["lo"] >= 0).all() and (b["hi"] <= 1).all()
