"""Training objectives of the four model kinds. All are means over the batch ``D``.

Notation, per impression i of the batch D (|D| = B):
``o_i`` click (0/1), ``r_i`` conversion (0/1; only a clicked impression can convert,
so ``y_i = o_i * r_i`` is the CTCVR label), ``pctr_i = sigmoid(a_i)``,
``pcvr_i = sigmoid(b_i)``, ``pctcvr_i = pctr_i * pcvr_i``,
``CE(t, p) = -(t log p + (1 - t) log(1 - p))`` (t may be a soft label).

* ``naive`` (the click-space baseline ESMM replaces)::

      L = 1/|D| sum_i CE(o_i, pctr_i)  +  1/|O| sum_{i: o_i=1} CE(r_i, pcvr_i)

  ``O`` = clicked impressions of the batch (the CVR term is 0 when O is empty).

* ``esmm`` (Ma et al. 2018, eq. 3; no direct CVR loss)::

      L = 1/|D| sum_i CE(o_i, pctr_i)  +  w_ctcvr * 1/|D| sum_i CE(y_i, pctr_i * pcvr_i)

  ``log(pctr * pcvr)`` is computed as ``logsigmoid(a) + logsigmoid(b)`` so the
  product never underflows.

* ``escm2-ips`` (Wang et al. 2022, ESCM2 with the IPS counterfactual risk)::

      p_i = clamp(s * stopgrad(pctr_i), propensity_clip, 1)
          s = 1, or sum_D o / sum_D pctr with ``propensity_calibration=batch``
      IPW(v) = sum_i o_i v_i / p_i / Z,   Z = |D|                 (``ips_normalization=all``)
                                           Z = sum_i o_i / p_i    (``self``, SNIPS)
      R_IPS = IPW(CE(r, pcvr))
      L = L_esmm + lambda * R_IPS

* ``escm2-dr`` (ESCM2 with the doubly robust risk). The imputation tower predicts
  an imputed conversion ``rt_i = sigmoid(c_i)`` for every impression; the imputed
  error of the CVR prediction is ``eh_i = CE(stopgrad(rt_i), pcvr_i)``, the observed
  error ``e_i = CE(r_i, pcvr_i)``::

      R_DR  = 1/|D| sum_i eh_i + IPW(e - eh)
      L_imp = IPW((stopgrad(e) - CE(rt, stopgrad(pcvr)))^2)
      L = L_esmm + lambda * R_DR + w_imp * L_imp

  The CVR tower learns from R_DR (through e and eh); the imputation tower only from
  L_imp (which fits the imputed error to the observed one on clicked impressions,
  inverse-propensity weighted), as in DR joint learning (Wang et al. 2019).

Against the ESCM2 paper and its public code (PaddleRec models/multitask/escm2;
details and the ablation in docs/model.md):
- kept from the paper: ``L = L_CTR + lambda_c R + lambda_g L_CTCVR`` (lambda_g is
  ``ctcvr_weight``, lambda_c ``cvr_risk_weight``), the propensity is the CTR tower's
  pCTR, R_IPS and R_DR normalised by |D| (``ips_normalization=all``, the default),
  the DR imputation loss ``o (e - eh)^2 / p``;
- the propensity is *detached* (the paper leaves the gradient path unstated;
  PaddleRec detaches it for IPS, not for DR): the risk must not move the CTR tower
  to shrink its own weights;
- the propensity is clipped from below at ``propensity_clip`` (PaddleRec floors
  pCTR at 1e-6 and caps the IPS weight at 15 after its own rescaling);
- the imputation tower predicts an imputed *conversion* rt and eh = CE(rt, pcvr)
  (paper and PaddleRec: the tower outputs the imputed error itself);
- ``ips_normalization=self`` and ``propensity_calibration=batch`` are not in the
  paper; they are options, measured in the ablation.

Delayed feedback (``train.delayed_feedback``; docs/model.md, "Delayed feedback")
--------------------------------------------------------------------------------
A clicked impression whose label is not yet mature and that has not converted by the
label run's as-of may still convert. ``s_i = S(e_i)`` is the probability that a
conversion of it comes later than ``e_i``, the seconds since its click at as-of
(``S`` the delay survival curve, :mod:`esmm.training.delay`); ``s_i = 0`` for every
other row (converted, unclicked, or label-mature). Every conversion term above,
``CE(t, p)`` with ``t`` the CTCVR or CVR label and ``p`` its prediction, becomes:

* ``dfm`` (Chapelle 2014, the delay model fitted beforehand, so its density term,
  which does not involve ``p``, is left out)::

      CE_dfm(t, p, s) = -(t log p + (1 - t) log(1 - p + p s))

  the likelihood of "not converted yet": a true negative, or a conversion still to come.

* ``esdfm`` (importance weights of the ES-DFM / FNW family, in batch form): an observed
  negative counts as a positive with weight ``w_i = stopgrad(p s / (1 - p + p s))``
  (the posterior that it will convert) and as a negative with ``1 - w_i``::

      CE_esdfm(t, p, s) = CE(t + (1 - t) w, p)

Both equal ``CE(t, p)`` where ``s = 0``: on label-mature rows every method is plain
training. ``wait`` (mature rows only) and ``vanilla`` (every row, observed labels) use
``CE`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from esmm.config.schema import ModelConfig

DELAY_METHODS = ("dfm", "esdfm")


@dataclass
class Feedback:
    """The delayed-feedback correction of one batch: ``method`` in :data:`DELAY_METHODS`,
    ``survival`` [B] the per-row ``s_i`` of the module docstring (0 where the label is final)."""

    method: str
    survival: Tensor


@dataclass
class LossParts:
    """The scalar objective and its named parts."""

    total: Tensor
    parts: dict[str, Tensor]  # detached, so logging syncs only when it prints


def ce_logits(logit: Tensor, target: Tensor) -> Tensor:
    """Per-row CE(target, sigmoid(logit)) [B], stable; ``target`` may be soft."""
    return F.binary_cross_entropy_with_logits(logit, target, reduction="none")


def _log1mexp(logp: Tensor) -> Tensor:
    """log(1 - exp(logp)) [B] for logp <= 0.

    Clamped off 0, where expm1(0) = 0 would give log(0): p can only reach 1 numerically."""
    return torch.log(-torch.expm1(logp.clamp(max=-1e-7)))


def ce_product(a: Tensor, b: Tensor, y: Tensor) -> Tensor:
    """Per-row CE(y, sigmoid(a) * sigmoid(b)) [B], in log space.

    log p = logsigmoid(a) + logsigmoid(b); log(1 - p) = log(-expm1(log p)).
    """
    logp = F.logsigmoid(a) + F.logsigmoid(b)
    return -(y * logp + (1.0 - y) * _log1mexp(logp))


def ce_delayed(logp: Tensor, target: Tensor, fb: Feedback) -> Tensor:
    """Per-row conversion CE [B] under delayed feedback (module docstring), from log p [B]."""
    s = fb.survival.clamp(0.0, 1.0 - 1e-6)
    if fb.method == "dfm":
        # log(1 - p + p s) = log(1 - p (1 - s)) = log1mexp(log p + log(1 - s))
        return -(target * logp + (1.0 - target) * _log1mexp(logp + torch.log1p(-s)))
    if fb.method == "esdfm":
        p = logp.detach().exp()
        w = p * s / (1.0 - p + p * s)
        t = target + (1.0 - target) * w
        return -(t * logp + (1.0 - t) * _log1mexp(logp))
    raise ValueError(f"train.delayed_feedback={fb.method!r}: a loss correction is one of {DELAY_METHODS}")


def _ce_cvr(logit: Tensor, r: Tensor, fb: Optional[Feedback]) -> Tensor:
    """CE(r, sigmoid(logit)) [B], corrected for delayed feedback when ``fb``."""
    return ce_logits(logit, r) if fb is None else ce_delayed(F.logsigmoid(logit), r, fb)


def esmm_loss(
    out: dict[str, Tensor], click: Tensor, conversion: Tensor, cfg: ModelConfig, fb: Optional[Feedback] = None
) -> LossParts:
    o, y = click.float(), (click * conversion).float()
    l_ctr = ce_logits(out["ctr_logit"], o).mean()
    if fb is None:
        l_ctcvr = ce_product(out["ctr_logit"], out["cvr_logit"], y).mean()
    else:
        l_ctcvr = ce_delayed(F.logsigmoid(out["ctr_logit"]) + F.logsigmoid(out["cvr_logit"]), y, fb).mean()
    return LossParts(l_ctr + cfg.ctcvr_weight * l_ctcvr, {"ctr": l_ctr.detach(), "ctcvr": l_ctcvr.detach()})


def naive_loss(
    out: dict[str, Tensor], click: Tensor, conversion: Tensor, cfg: ModelConfig, fb: Optional[Feedback] = None
) -> LossParts:
    o, r = click.float(), conversion.float()
    l_ctr = ce_logits(out["ctr_logit"], o).mean()
    l_cvr = (o * _ce_cvr(out["cvr_logit"], r, fb)).sum() / o.sum().clamp(min=1.0)
    return LossParts(l_ctr + l_cvr, {"ctr": l_ctr.detach(), "cvr_clicked": l_cvr.detach()})


def propensity(out: dict[str, Tensor], click: Tensor, cfg: ModelConfig) -> Tensor:
    """Detached pCTR [B], optionally rescaled to the batch click rate, clipped to [propensity_clip, 1]."""
    p = out["pctr"].detach()
    if cfg.propensity_calibration == "batch":
        # One scale per batch: a pCTR that is 20% high everywhere gives weights 20% low.
        p = p * (click.float().sum() / p.sum().clamp(min=1e-12))
    return p.clamp(min=cfg.propensity_clip, max=1.0)


def ipw_mean(o: Tensor, p: Tensor, v: Tensor, cfg: ModelConfig) -> Tensor:
    """sum_i o_i v_i / p_i divided by |D| (``ips_normalization=all``) or by
    sum_i o_i / p_i (``self``; 0 when the batch has no click)."""
    w = o / p
    den = w.sum().clamp(min=1e-12) if cfg.ips_normalization == "self" else float(len(o))
    return (w * v).sum() / den


def escm2_ips_loss(
    out: dict[str, Tensor], click: Tensor, conversion: Tensor, cfg: ModelConfig, fb: Optional[Feedback] = None
) -> LossParts:
    base = esmm_loss(out, click, conversion, cfg, fb)
    o, r = click.float(), conversion.float()
    risk = ipw_mean(o, propensity(out, click, cfg), _ce_cvr(out["cvr_logit"], r, fb), cfg)
    return LossParts(base.total + cfg.cvr_risk_weight * risk, {**base.parts, "ips": risk.detach()})


def escm2_dr_loss(
    out: dict[str, Tensor], click: Tensor, conversion: Tensor, cfg: ModelConfig, fb: Optional[Feedback] = None
) -> LossParts:
    base = esmm_loss(out, click, conversion, cfg, fb)
    o, r = click.float(), conversion.float()
    p = propensity(out, click, cfg)
    b, c = out["cvr_logit"], out["imp_logit"]
    e = _ce_cvr(b, r, fb)  # observed error (clicked rows matter), corrected for delayed feedback
    eh = ce_logits(b, torch.sigmoid(c).detach())  # imputed error, grads to the CVR tower
    risk = eh.mean() + ipw_mean(o, p, e - eh, cfg)
    eh_imp = ce_logits(b.detach(), torch.sigmoid(c))  # imputed error, grads to the imputation tower
    l_imp = ipw_mean(o, p, (e.detach() - eh_imp) ** 2, cfg)
    total = base.total + cfg.cvr_risk_weight * risk + cfg.imputation_weight * l_imp
    return LossParts(total, {**base.parts, "dr": risk.detach(), "imp": l_imp.detach()})


LOSSES = {"naive": naive_loss, "esmm": esmm_loss, "escm2-ips": escm2_ips_loss, "escm2-dr": escm2_dr_loss}


def compute_loss(
    out: dict[str, Tensor], click: Tensor, conversion: Tensor, cfg: ModelConfig, fb: Optional[Feedback] = None
) -> LossParts:
    """The objective of ``cfg.kind`` for one batch (see the module docstring); ``fb``
    corrects every conversion term for delayed feedback (None: plain CE)."""
    return LOSSES[cfg.kind](out, click, conversion, cfg, fb)
