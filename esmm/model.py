"""The entire-space multi-task model: a shared embedding, a CTR tower, a CVR tower.

Notation (torchrec style): ``B`` batch size, ``F`` categorical fields, ``N``
numeric fields, ``D`` embedding dimension, ``H`` = ``F*D + N`` tower input width.

Architecture (Ma et al. 2018, figure 2)::

    cat [B, F] --(one shared table, per-field offsets)--> [B, F, D] --flatten--+
    num [B, N] ----------------------------------------------------------------+--> x [B, H]
    x --> CTR tower (MLP tower..., 1) --> ctr_logit [B] --> pCTR = sigmoid
    x --> CVR tower (MLP tower..., 1) --> cvr_logit [B] --> pCVR = sigmoid
    pCTCVR = pCTR * pCVR
    escm2-dr only: x --> imputation tower --> imp_logit [B] (imputed conversion, see losses.py)

All four model kinds share this network; they differ only in the loss
(:mod:`esmm.losses`). ``naive`` shares the embedding too: the baseline isolates
the effect of the training objective (the ESMM paper's BASE model used a separate
network; see docs/model.md).

The embedding is one ``nn.Embedding`` over all fields (row offset per field), with
``sparse=True`` by default so that each step touches only the rows of the batch
(a dense Adam step over a 2.3M-row table is ~3x slower).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from esmm.config import FeatureSpec, ModelConfig


class FeatureEmbedding(nn.Module):
    """cat [B, F] (row index per field in [0, buckets)) + num [B, N] -> x [B, F*D + N]."""

    def __init__(self, buckets: list[int], n_numeric: int, dim: int, sparse: bool) -> None:
        super().__init__()
        self.table = nn.Embedding(sum(buckets), dim, sparse=sparse)
        # Small init: F fields of N(0,1) vectors would saturate the towers at the start.
        nn.init.normal_(self.table.weight, std=0.05)
        offsets = torch.tensor([0] + list(buckets[:-1]), dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.out_dim = len(buckets) * dim + n_numeric

    def forward(self, cat: Tensor, num: Tensor) -> Tensor:
        e = self.table(cat.long() + self.offsets)  # [B, F, D]
        return torch.cat([e.flatten(1), num.float()], dim=1)


class Tower(nn.Module):
    """MLP x [B, H] -> logit [B]: (Linear, ReLU, Dropout) per hidden size, then Linear(., 1)."""

    def __init__(self, in_dim: int, hidden: list[int], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(in_dim, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_dim = h
        layers.append(nn.Linear(in_dim, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x).squeeze(1)


class EntireSpaceModel(nn.Module):
    """Shared embedding + CTR and CVR towers (+ imputation tower for ``escm2-dr``).

    ``forward(cat [B, F] long, num [B, N] float)`` returns a dict of [B] tensors:
    ``pctr``, ``pcvr``, ``pctcvr`` (= pctr * pcvr), ``ctr_logit``, ``cvr_logit``,
    and ``imp_logit`` when the model has an imputation tower.
    """

    def __init__(self, cfg: ModelConfig, spec: FeatureSpec) -> None:
        super().__init__()
        self.kind = cfg.kind
        self.embedding = FeatureEmbedding([f.buckets for f in spec.categorical], len(spec.numeric),
                                          cfg.embedding_dim, cfg.sparse_embedding)
        h = self.embedding.out_dim
        self.ctr_tower = Tower(h, cfg.tower, cfg.dropout)
        self.cvr_tower = Tower(h, cfg.tower, cfg.dropout)
        self.imputation_tower = Tower(h, cfg.tower, cfg.dropout) if cfg.kind == "escm2-dr" else None

    def forward(self, cat: Tensor, num: Tensor) -> dict[str, Tensor]:
        x = self.embedding(cat, num)
        ctr_logit, cvr_logit = self.ctr_tower(x), self.cvr_tower(x)
        pctr, pcvr = torch.sigmoid(ctr_logit), torch.sigmoid(cvr_logit)
        out = {"pctr": pctr, "pcvr": pcvr, "pctcvr": pctr * pcvr,
               "ctr_logit": ctr_logit, "cvr_logit": cvr_logit}
        if self.imputation_tower is not None:
            out["imp_logit"] = self.imputation_tower(x)
        return out

    def dense_parameters(self) -> list[nn.Parameter]:
        """Everything but the embedding table (optimised by a dense optimizer)."""
        return [p for n, p in self.named_parameters() if not n.startswith("embedding.")]


def build_model(model_cfg: ModelConfig, spec: FeatureSpec) -> EntireSpaceModel:
    """The network of ``model_cfg.kind`` for the inputs of ``spec`` (column order = spec order)."""
    model_cfg.validate("model")
    spec.validate("features")
    return EntireSpaceModel(model_cfg, spec)
