"""ESCM2 loss variants on hand-made tensors: propensity calibration, clipping,
self-normalised IPS/DR, and the detached propensity (no gradient into the CTR tower)."""

import math

import pytest
import torch

from esmm.config.errors import ConfigError
from esmm.config.schema import ModelConfig
from esmm.model.losses import compute_loss, ipw_mean, propensity


def cfg(kind, **kw):
    return ModelConfig(kind=kind, embedding_dim=2, tower=[4], dropout=0.0, **kw)


def logit(p):
    return math.log(p / (1 - p))


def out_of(pctr, pcvr, rt=None):
    a = torch.tensor([logit(p) for p in pctr], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([logit(p) for p in pcvr], dtype=torch.float64, requires_grad=True)
    out = {"ctr_logit": a, "cvr_logit": b, "pctr": torch.sigmoid(a), "pcvr": torch.sigmoid(b)}
    out["pctcvr"] = out["pctr"] * out["pcvr"]
    if rt is not None:
        out["imp_logit"] = torch.tensor([logit(p) for p in rt], dtype=torch.float64, requires_grad=True)
    return out


# Four impressions: two clicked (the first converts), two not.
PCTR, PCVR = [0.5, 0.25, 0.1, 0.2], [0.5, 0.2, 0.3, 0.4]
CLICK = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
CONV = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
E0, E1 = math.log(2.0), -math.log(0.8)  # CE(1, .5), CE(0, .2)


def risk_of(kind, **kw):
    """total(kind) - total(esmm): the weighted counterfactual risk alone."""
    c = cfg(kind, **kw)
    got = compute_loss(out_of(PCTR, PCVR), CLICK, CONV, c).total.item()
    return got - compute_loss(out_of(PCTR, PCVR), CLICK, CONV, cfg("esmm")).total.item()


def test_ips_all_is_the_papers_mean_over_the_batch():
    assert risk_of("escm2-ips") == pytest.approx((E0 / 0.5 + E1 / 0.25) / 4, rel=1e-7)  # 0.5697
    assert risk_of("escm2-ips", cvr_risk_weight=3.0) == pytest.approx(3 * (E0 / 0.5 + E1 / 0.25) / 4, rel=1e-7)


def test_ips_self_normalised_divides_by_the_sum_of_weights():
    want = (E0 / 0.5 + E1 / 0.25) / (1 / 0.5 + 1 / 0.25)  # 0.3798
    assert risk_of("escm2-ips", ips_normalization="self") == pytest.approx(want, rel=1e-7)
    # invariant to a global scale of the propensity, unlike "all"
    o, v = CLICK, torch.tensor([E0, E1, 5.0, 7.0], dtype=torch.float64)
    p = torch.tensor(PCTR, dtype=torch.float64)
    sn = cfg("escm2-ips", ips_normalization="self")
    assert ipw_mean(o, 2 * p, v, sn).item() == pytest.approx(ipw_mean(o, p, v, sn).item(), rel=1e-12)
    assert ipw_mean(o, 2 * p, v, cfg("escm2-ips")).item() == pytest.approx(
        ipw_mean(o, p, v, cfg("escm2-ips")).item() / 2
    )
    # a batch without clicks: 0, not NaN
    assert ipw_mean(torch.zeros(4, dtype=torch.float64), p, v, sn).item() == 0.0


def test_propensity_clip_and_batch_calibration():
    out = out_of(PCTR, PCVR)
    assert propensity(out, CLICK, cfg("escm2-ips", propensity_clip=0.3)).tolist() == pytest.approx([0.5, 0.3, 0.3, 0.3])
    s = 2.0 / 1.05  # clicks in the batch / sum of pCTR
    got = propensity(out, CLICK, cfg("escm2-ips", propensity_calibration="batch", propensity_clip=0.2))
    assert got.tolist() == pytest.approx([0.5 * s, 0.25 * s, 0.2, 0.2 * s], rel=1e-7)
    want = (E0 / (0.5 * s) + E1 / (0.25 * s)) / 4
    assert risk_of("escm2-ips", propensity_calibration="batch") == pytest.approx(want, rel=1e-7)
    assert risk_of("escm2-ips", propensity_clip=0.3) == pytest.approx((E0 / 0.5 + E1 / 0.3) / 4, rel=1e-7)


def test_dr_self_normalised_hand_value():
    rt = [0.5, 0.5, 0.25, 0.75]
    out = out_of(PCTR, PCVR, rt)
    got = compute_loss(out, CLICK, CONV, cfg("escm2-dr", ips_normalization="self"))

    def ce(t, p):
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))

    eh = [ce(t, p) for t, p in zip(rt, PCVR)]
    e = [E0, E1]
    w = [1 / 0.5, 1 / 0.25]
    risk = sum(eh) / 4 + (w[0] * (e[0] - eh[0]) + w[1] * (e[1] - eh[1])) / sum(w)
    imp = (w[0] * (e[0] - eh[0]) ** 2 + w[1] * (e[1] - eh[1]) ** 2) / sum(w)
    assert got.parts["dr"].item() == pytest.approx(risk, rel=1e-7)
    assert got.parts["imp"].item() == pytest.approx(imp, rel=1e-7)


@pytest.mark.parametrize("kw", [{}, {"ips_normalization": "self"}, {"propensity_calibration": "batch"}])
@pytest.mark.parametrize("kind", ["escm2-ips", "escm2-dr"])
def test_no_gradient_into_the_ctr_tower_through_the_propensity(kind, kw):
    rt = [0.5, 0.5, 0.25, 0.75] if kind == "escm2-dr" else None
    out, ref = out_of(PCTR, PCVR, rt), out_of(PCTR, PCVR, rt)
    compute_loss(out, CLICK, CONV, cfg(kind, cvr_risk_weight=5.0, **kw)).total.backward()
    compute_loss(ref, CLICK, CONV, cfg("esmm")).total.backward()
    assert torch.allclose(out["ctr_logit"].grad, ref["ctr_logit"].grad, rtol=0, atol=1e-12)
    assert not torch.allclose(out["cvr_logit"].grad, ref["cvr_logit"].grad)  # the risk does move the CVR tower


@pytest.mark.parametrize("key,value", [("ips_normalization", "snips"), ("propensity_calibration", "isotonic")])
def test_unknown_variant_names_the_key(key, value):
    with pytest.raises(ConfigError, match=f"model.{key}"):
        cfg("escm2-ips", **{key: value}).validate("model")
