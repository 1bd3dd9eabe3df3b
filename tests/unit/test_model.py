"""Model and losses: shapes, the shared table's offsets, and losses against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from esmm.config.schema import CategoricalField, FeatureSpec, ModelConfig, NumericField
from esmm.evaluation.metrics import auc, calibration, compute_metrics, logloss
from esmm.model.losses import ce_product, compute_loss
from esmm.model.network import build_model

SPEC = FeatureSpec(
    categorical=[CategoricalField("a", buckets=5), CategoricalField("b", buckets=3)], numeric=[NumericField("x")]
)
LN3 = math.log(3.0)


def cfg(kind, **kw):
    return ModelConfig(kind=kind, embedding_dim=2, tower=[4], dropout=0.0, **kw)


def out_of(ctr_logit, cvr_logit, imp_logit=None):
    a, b = torch.tensor(ctr_logit, requires_grad=True), torch.tensor(cvr_logit, requires_grad=True)
    out = {"ctr_logit": a, "cvr_logit": b, "pctr": torch.sigmoid(a), "pcvr": torch.sigmoid(b)}
    out["pctcvr"] = out["pctr"] * out["pcvr"]
    if imp_logit is not None:
        out["imp_logit"] = torch.tensor(imp_logit, requires_grad=True)
    return out


def test_forward_shapes_and_product():
    m = build_model(cfg("escm2-dr"), SPEC)
    out = m(torch.tensor([[0, 2], [4, 1], [1, 0]]), torch.tensor([[0.5], [1.0], [0.0]]))
    assert set(out) == {"pctr", "pcvr", "pctcvr", "ctr_logit", "cvr_logit", "imp_logit"}
    assert all(v.shape == (3,) for v in out.values())
    assert torch.allclose(out["pctcvr"], out["pctr"] * out["pcvr"])
    assert "imp_logit" not in build_model(cfg("esmm"), SPEC)(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 1))


def test_one_table_with_field_offsets_and_sparse_gradient():
    m = build_model(cfg("esmm"), SPEC)
    assert m.embedding.table.num_embeddings == 5 + 3
    out = m(torch.tensor([[1, 2]]), torch.zeros(1, 1))
    out["pctr"].sum().backward()
    g = m.embedding.table.weight.grad
    assert g.is_sparse  # no dense step over the whole table
    # field a row 1 -> table row 1; field b row 2 -> table row 5 + 2 = 7
    assert sorted(g.coalesce().indices()[0].tolist()) == [1, 7]


def test_ce_product_hand_values():
    a, b = torch.zeros(2), torch.zeros(2)  # pctr = pcvr = 0.5 -> pctcvr 0.25
    got = ce_product(a, b, torch.tensor([1.0, 0.0]))
    assert got.tolist() == pytest.approx([-math.log(0.25), -math.log(0.75)], rel=1e-6)
    # no underflow for a tiny product: log p = -60 - 60
    assert ce_product(torch.tensor([-60.0]), torch.tensor([-60.0]), torch.tensor([1.0])).item() == pytest.approx(
        120.0, rel=1e-4
    )


# Batch for the hand computations: pctr = [0.5, 0.75], pcvr = [0.5, 0.5],
# click = [1, 0], conversion = [1, 0].
CLICK, CONV = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])
L_CTR = (-math.log(0.5) - math.log(0.25)) / 2  # 1.0397208
L_CTCVR = (-math.log(0.25) - math.log(1 - 0.375)) / 2  # 0.9281492


def test_esmm_loss_has_no_direct_cvr_term():
    got = compute_loss(out_of([0.0, LN3], [0.0, 0.0]), CLICK, CONV, cfg("esmm"))
    assert got.total.item() == pytest.approx(L_CTR + L_CTCVR, rel=1e-6)
    assert got.total.item() == pytest.approx(1.9678700, rel=1e-6)


def test_naive_loss_cvr_on_clicked_only():
    got = compute_loss(out_of([0.0, LN3], [0.0, 0.0]), CLICK, CONV, cfg("naive"))
    assert got.total.item() == pytest.approx(L_CTR + math.log(2.0), rel=1e-6)  # 1.7328680
    # no clicks in the batch: CVR term is 0, not NaN
    none = compute_loss(out_of([0.0, LN3], [0.0, 0.0]), torch.zeros(2), torch.zeros(2), cfg("naive"))
    assert math.isfinite(none.total.item())


def test_escm2_ips_weights_by_detached_clipped_pctr():
    out = out_of([0.0, LN3], [0.0, 0.0])
    got = compute_loss(out, CLICK, CONV, cfg("escm2-ips", cvr_risk_weight=0.5))
    ips = (math.log(2.0) / 0.5 + 0.0) / 2  # o/p * CE over |D| = 2
    assert got.total.item() == pytest.approx(L_CTR + L_CTCVR + 0.5 * ips, rel=1e-6)
    # the risk does not push on the CTR tower (propensity is detached)
    got.total.backward()
    ref = out_of([0.0, LN3], [0.0, 0.0])
    compute_loss(ref, CLICK, CONV, cfg("esmm")).total.backward()
    assert torch.allclose(out["ctr_logit"].grad, ref["ctr_logit"].grad)
    # clip: pctr ~ 4.5e-5 is clipped to 0.02, weight 50
    tiny = compute_loss(out_of([-10.0, LN3], [0.0, 0.0]), CLICK, CONV, cfg("escm2-ips", propensity_clip=0.02))
    base = compute_loss(out_of([-10.0, LN3], [0.0, 0.0]), CLICK, CONV, cfg("esmm"))
    assert (tiny.total - base.total).item() == pytest.approx(50 * math.log(2.0) / 2, rel=1e-5)


def test_escm2_dr_hand_values_and_gradient_paths():
    # pctr = [.5, .5], pcvr = [.75, .5], imputed conversion rt = [.5, .75]; click [1, 0], conv [0, 0]
    out = out_of([0.0, 0.0], [LN3, 0.0], [0.0, LN3])
    click, conv = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    got = compute_loss(out, click, conv, cfg("escm2-dr"))
    e0 = -math.log(0.25)  # CE(0, .75)
    eh0 = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))  # CE(.5, .75)
    eh1 = math.log(2.0)  # CE(.75, .5)
    risk = ((eh0 + (e0 - eh0) / 0.5) + eh1) / 2  # 1.3143739
    imp = ((e0 - eh0) ** 2 / 0.5) / 2  # 0.3017373
    esmm = math.log(2.0) + (-math.log(1 - 0.375) - math.log(0.75)) / 2
    assert got.parts["dr"].item() == pytest.approx(risk, rel=1e-6)
    assert got.parts["imp"].item() == pytest.approx(imp, rel=1e-6)
    assert got.total.item() == pytest.approx(esmm + risk + imp, rel=1e-6)  # 2.6881013
    # the imputation tower learns only from L_imp: its gradient with lambda=0 is unchanged
    got.total.backward()
    ref = out_of([0.0, 0.0], [LN3, 0.0], [0.0, LN3])
    compute_loss(ref, click, conv, cfg("escm2-dr", cvr_risk_weight=0.0)).total.backward()
    assert torch.allclose(out["imp_logit"].grad, ref["imp_logit"].grad)
    assert out["imp_logit"].grad[1].item() == 0.0  # unclicked rows give L_imp nothing


def test_auc_hand_values():
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auc(np.array([0.5, 0.5, 0.5]), np.array([1, 0, 0])) == pytest.approx(0.5)  # all tied
    assert auc(np.array([0.2, 0.2, 0.9]), np.array([1, 0, 1])) == pytest.approx(0.75)  # one tie of two pairs
    # soft labels: pos weights [.2, .6], neg [.8, .4]: (.6*.8 + .5*.2*.8 + .5*.6*.4) / (.8 * 1.2)
    assert auc(np.array([1.0, 2.0]), np.array([0.2, 0.6])) == pytest.approx(0.68 / 0.96)
    assert math.isnan(auc(np.array([0.3, 0.4]), np.array([1, 1])))


def test_logloss_calibration_and_metric_subsets():
    assert logloss(np.array([0.5, 0.25]), np.array([1, 0])) == pytest.approx((math.log(2) - math.log(0.75)) / 2)
    assert calibration(np.array([0.2, 0.4]), np.array([0, 1])) == pytest.approx(0.6)
    pred = {
        "pctr": np.array([0.9, 0.2, 0.6, 0.1]),
        "pcvr": np.array([0.3, 0.9, 0.1, 0.8]),
        "pctcvr": np.array([0.27, 0.18, 0.06, 0.08]),
    }
    m = compute_metrics(pred, np.array([1, 0, 1, 0]), np.array([1, 0, 0, 0]), true_cvr=np.array([0.2, 0.5, 0.1, 0.6]))
    assert m["ctr_auc"] == 1.0
    assert m["cvr_auc_clicked"] == 1.0  # clicked rows only: pcvr .3 (converted) > .1
    assert m["cvr_calibration_clicked"] == pytest.approx(0.2 / 0.5)
    assert m["pcvr_bias_all"] == pytest.approx(0.525 - 0.35)
    assert m["pcvr_bias_clicked"] == pytest.approx(0.2 - 0.15)
