"""Delayed-feedback losses (esmm/model/losses.py) and the delay curve (esmm/training/delay.py)
on hand-computed batches: label-mature rows give plain training for every method, immature
unconverted clicks are corrected by S(elapsed)."""

import math

import numpy as np
import pytest
import torch
from helpers.examples_data import TINY_SPEC

from esmm.config.errors import ConfigError
from esmm.config.loader import load_config
from esmm.data.examples import pending_survival, to_batch
from esmm.model.losses import Feedback, ce_delayed, compute_loss
from esmm.training.delay import MIN_CONVERSIONS, DelayCurve, fit_dates


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_dfm_and_esdfm_on_hand_computed_rows():
    # p = 0.2; rows: converted, negative with s = 0 (final), pending negatives with s = 0.5 and 1.
    logp = torch.log(torch.tensor([0.2, 0.2, 0.2, 0.2], dtype=torch.float64))
    y = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    s = torch.tensor([0.0, 0.0, 0.5, 1.0], dtype=torch.float64)
    dfm = ce_delayed(logp, y, Feedback("dfm", s))
    # -log p; -log(1 - p); -log(1 - p + p s) = -log 0.9; s = 1 (nothing observable yet): ~0
    assert dfm.tolist() == pytest.approx([-math.log(0.2), -math.log(0.8), -math.log(0.9), 0.0], abs=1e-5)
    es = ce_delayed(logp, y, Feedback("esdfm", s))
    w = 0.1 / 0.9  # p s / (1 - p + p s): the posterior that the pending click converts
    want = -(w * math.log(0.2) + (1 - w) * math.log(0.8))
    w1 = 0.2  # s = 1: the posterior is the prior p
    want1 = -(w1 * math.log(0.2) + (1 - w1) * math.log(0.8))
    assert es.tolist() == pytest.approx([-math.log(0.2), -math.log(0.8), want, want1], abs=1e-5)


@pytest.mark.parametrize("kind", ["naive", "esmm", "escm2-ips", "escm2-dr"])
@pytest.mark.parametrize("method", ["dfm", "esdfm"])
def test_every_method_equals_plain_training_where_labels_are_final(kind, method):
    cfg = load_config(overrides=[f"model.kind={kind}"]).model
    g = torch.Generator().manual_seed(0)
    out = {k: torch.randn(64, generator=g) for k in ("ctr_logit", "cvr_logit", "imp_logit")}
    out["pctr"], out["pcvr"] = torch.sigmoid(out["ctr_logit"]), torch.sigmoid(out["cvr_logit"])
    click = (torch.rand(64, generator=g) < 0.4).float()
    conv = click * (torch.rand(64, generator=g) < 0.3).float()
    plain = compute_loss(out, click, conv, cfg)
    fixed = compute_loss(out, click, conv, cfg, Feedback(method, torch.zeros(64)))
    assert fixed.total.item() == pytest.approx(plain.total.item(), rel=1e-5)
    # A pending click (s > 0) pushes its pCVR down less than a final negative: part of its
    # "negative" is a conversion still to come. Other rows get the same gradient.
    pending = (click > 0) & (conv == 0)
    s = torch.where(pending, torch.full((64,), 0.6), torch.zeros(64))

    def cvr_grad(fb):
        b = out["cvr_logit"].clone().requires_grad_(True)
        o = {**out, "cvr_logit": b, "pcvr": torch.sigmoid(b)}
        compute_loss(o, click, conv, cfg, fb).total.backward()
        return b.grad

    g_plain, g_fb = cvr_grad(None), cvr_grad(Feedback(method, s))
    assert bool((g_fb[pending] < g_plain[pending]).all())
    assert torch.allclose(g_fb[~pending], g_plain[~pending], atol=1e-7)


def test_esmm_ctcvr_term_under_dfm_by_hand():
    cfg = load_config(overrides=["model.kind=esmm", "model.ctcvr_weight=1.0"]).model
    a, b = logit(0.5), logit(0.4)  # pctcvr = 0.2
    out = {"ctr_logit": torch.tensor([a]), "cvr_logit": torch.tensor([b])}
    parts = compute_loss(out, torch.tensor([1.0]), torch.tensor([0.0]), cfg, Feedback("dfm", torch.tensor([0.25])))
    assert parts.parts["ctr"].item() == pytest.approx(-math.log(0.5), rel=1e-5)
    assert parts.parts["ctcvr"].item() == pytest.approx(-math.log(1 - 0.2 + 0.2 * 0.25), rel=1e-5)


def test_unknown_correction_is_refused():
    with pytest.raises(ValueError, match="train.delayed_feedback='vanilla'"):
        ce_delayed(torch.zeros(1), torch.zeros(1), Feedback("vanilla", torch.zeros(1)))


def test_delay_curve_survival_is_one_minus_the_empirical_cdf():
    delays = np.arange(1, 1001, dtype=float)  # 1 .. 1000 s, uniform
    c = DelayCurve.fit(delays, knots=11)
    s = c.survival(torch.tensor([0.0, 1.0, 500.5, 1000.0, 5000.0], dtype=torch.float64))
    assert s.tolist() == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0], abs=1e-3)
    e = torch.linspace(0, 1200, 50, dtype=torch.float64)
    assert bool((c.survival(e)[1:] <= c.survival(e)[:-1] + 1e-12).all())  # never rises
    q = c.summary()
    assert q["conversions"] == 1000 and q["median_s"] == pytest.approx(500.5, abs=1) and q["max_s"] == 1000


def test_delay_curve_refuses_too_few_conversions():
    with pytest.raises(ValueError, match=f"at least {MIN_CONVERSIONS} are needed.*train.delay_fit_days"):
        DelayCurve.fit(np.ones(MIN_CONVERSIONS - 1), dates=("2026-11-01..2026-11-28",))


def test_fit_dates_end_at_train_end():
    assert fit_dates("2026-11-03", 3) == ["2026-11-01", "2026-11-02", "2026-11-03"]


def _cols(click, conv, mature, elapsed):
    n = len(click)
    return {
        "a": torch.ones(n, dtype=torch.int32),
        "b": torch.ones(n, dtype=torch.int32),
        "x": torch.zeros(n),
        "click": torch.tensor(click),
        "conversion": torch.tensor(conv),
        "label_mature": torch.tensor(mature),
        "click_elapsed_s": torch.tensor(elapsed, dtype=torch.float64),
    }


def test_batches_carry_the_survival_of_pending_clicks_only():
    curve = DelayCurve.fit(np.arange(1, 1001, dtype=float), knots=11)
    nan = float("nan")
    # pending click at 500 s; a mature unconverted click; a converted click; no click
    cols = _cols([1, 1, 1, 0], [0, 0, 1, 0], [False, True, False, False], [500.0, 900.0, 10.0, nan])
    assert pending_survival(cols, curve.survival).tolist() == pytest.approx([0.5, 0.0, 0.0, 0.0], abs=1e-3)
    b = to_batch(cols, TINY_SPEC, mature_only=False, survival=curve.survival)
    assert b.survival.tolist() == pytest.approx([0.5, 0.0, 0.0, 0.0], abs=1e-3)
    assert to_batch(cols, TINY_SPEC, mature_only=False).survival is None


def test_a_pending_click_without_elapsed_time_is_an_error():
    curve = DelayCurve.fit(np.arange(1, 1001, dtype=float))
    cols = _cols([1], [0], [False], [float("nan")])
    with pytest.raises(ValueError, match="no click_elapsed_s.*re-run `esmm labels` and `esmm features`"):
        pending_survival(cols, curve.survival)


def test_config_delayed_feedback_values_and_the_removed_key():
    assert load_config().train.delayed_feedback == "wait" and load_config().train.mature_only
    assert not load_config(overrides=["train.delayed_feedback=dfm"]).train.mature_only
    with pytest.raises(ConfigError, match="train.delayed_feedback.*not one of wait, vanilla, dfm, esdfm"):
        load_config(overrides=["train.delayed_feedback=fnw"])
    with pytest.raises(ConfigError, match="train.mature_only: removed; use train.delayed_feedback"):
        load_config(overrides=["train.mature_only=false"])
