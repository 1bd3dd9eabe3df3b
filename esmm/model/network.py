"""The entire-space multi-task model: a shared embedding, a CTR tower, a CVR tower.

Notation (torchrec style): ``B`` batch size, ``F`` categorical fields, ``N``
numeric fields, ``D`` embedding dimension, ``H`` = ``F*D + N`` tower input width,
``W`` = columns of ``cat``: one per single-valued field, ``max_len`` per multi-valued
field (its ids padded with -1, see esmm/data/examples.py), so ``W = F`` without multi fields.

Architecture (Ma et al. 2018, figure 2)::

    cat [B, W] --(one shared table, per-field offsets)--> [B, F, D] --flatten--+
               (a multi-valued field: sum or mean of its ids' rows, EmbeddingBag)
    num [B, N] ----------------------------------------------------------------+--> x [B, H]
    x --> CTR tower (MLP tower..., 1) --> ctr_logit [B] --> pCTR = sigmoid
    x --> CVR tower (MLP tower..., 1) --> cvr_logit [B] --> pCVR = sigmoid
    pCTCVR = pCTR * pCVR
    escm2-dr only: x --> imputation tower --> imp_logit [B] (imputed conversion, see losses.py)

All four model kinds share this network; they differ only in the loss
(:mod:`esmm.model.losses`). ``naive`` shares the embedding too: the baseline isolates
the effect of the training objective (the ESMM paper's BASE model used a separate
network; see docs/model.md).

The embedding is one ``nn.Embedding`` over all fields (row offset per field), with
``sparse=True`` by default so that each step touches only the rows of the batch
(a dense Adam step over a 2.3M-row table is ~3x slower); dense under DDP over NCCL
(``model.sparse_embedding``, esmm/model/parallel.py).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from esmm.config.schema import FeatureSpec, ModelConfig


class FeatureEmbedding(nn.Module):
    """cat [B, W] (row index per field in [0, buckets); -1 = padding) + num [B, N] -> x [B, F*D + N].

    ``bags``: per field, None (single-valued: one column of ``cat``) or
    ``(max_len, pooling)`` (multi-valued: ``max_len`` columns, ids padded with -1,
    pooled by ``pooling`` = sum | mean over the non-padding ids; a row without any
    id pools to zeros). Output order: the single-valued fields' vectors in spec
    order, then each multi-valued field's pooled vector in spec order, then ``num``.
    Without multi-valued fields this is one lookup over ``cat`` (the fast path).
    """

    def __init__(
        self,
        buckets: list[int],
        n_numeric: int,
        dim: int,
        sparse: bool,
        bags: Optional[list[Optional[tuple[int, str]]]] = None,
    ) -> None:
        super().__init__()
        self.table = nn.Embedding(sum(buckets), dim, sparse=sparse)
        # Small init: F fields of N(0,1) vectors would saturate the towers at the start.
        nn.init.normal_(self.table.weight, std=0.05)
        offsets = torch.tensor([0] + list(buckets[:-1]), dtype=torch.long).cumsum(0)
        self.out_dim = len(buckets) * dim + n_numeric
        bags = bags or [None] * len(buckets)
        self.multi = any(b is not None for b in bags)
        if not self.multi:
            self.register_buffer("offsets", offsets, persistent=False)
            return
        # Column of each single-valued field in cat, and (start column, width, row offset,
        # mode) of each multi-valued one.
        starts = torch.tensor([0] + [1 if b is None else b[0] for b in bags[:-1]]).cumsum(0).tolist()
        single = [i for i, b in enumerate(bags) if b is None]
        self.register_buffer(
            "single_cols", torch.tensor([starts[i] for i in single], dtype=torch.long), persistent=False
        )
        self.register_buffer("offsets", offsets[single], persistent=False)
        self.bags = [(starts[i], b[0], int(offsets[i]), b[1]) for i, b in enumerate(bags) if b is not None]

    def pool(self, ids: Tensor, row_offset: int, mode: str) -> Tensor:
        """ids [B, L] (-1 = padding) -> [B, D]: nn.EmbeddingBag's ``mode`` over the shared table.

        The functional form of nn.EmbeddingBag, so that single- and multi-valued fields
        share one table and its one sparse optimizer (esmm/training/trainer.py).
        """
        mask = ids >= 0
        lengths = mask.sum(1)
        flat = (ids + row_offset)[mask]  # row-major: each row's ids stay together, in order
        starts = torch.cumsum(lengths, 0) - lengths
        return F.embedding_bag(flat, self.table.weight, starts, mode=mode, sparse=self.table.sparse)

    def forward(self, cat: Tensor, num: Tensor) -> Tensor:
        cat = cat.long()
        if not self.multi:
            e = self.table(cat + self.offsets)  # [B, F, D]
            return torch.cat([e.flatten(1), num.float()], dim=1)
        parts = [self.table(cat[:, self.single_cols] + self.offsets).flatten(1)] if len(self.offsets) else []
        parts += [self.pool(cat[:, s : s + w], off, mode) for s, w, off, mode in self.bags]
        return torch.cat([*parts, num.float()], dim=1)


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

    ``forward(cat [B, W] long, num [B, N] float)`` returns a dict of [B] tensors:
    ``pctr``, ``pcvr``, ``pctcvr`` (= pctr * pcvr), ``ctr_logit``, ``cvr_logit``,
    and ``imp_logit`` when the model has an imputation tower.
    """

    def __init__(self, cfg: ModelConfig, spec: FeatureSpec) -> None:
        super().__init__()
        self.kind = cfg.kind
        self.embedding = FeatureEmbedding(
            [f.buckets for f in spec.categorical],
            len(spec.numeric),
            cfg.embedding_dim,
            cfg.sparse_embedding is not False,  # auto: sparse unless train() resolved it (esmm/model/parallel.py)
            [(f.max_len, f.pooling) if f.multi else None for f in spec.categorical],
        )
        h = self.embedding.out_dim
        self.ctr_tower = Tower(h, cfg.tower, cfg.dropout)
        self.cvr_tower = Tower(h, cfg.tower, cfg.dropout)
        self.imputation_tower = Tower(h, cfg.tower, cfg.dropout) if cfg.kind == "escm2-dr" else None

    def forward(self, cat: Tensor, num: Tensor) -> dict[str, Tensor]:
        x = self.embedding(cat, num)
        ctr_logit, cvr_logit = self.ctr_tower(x), self.cvr_tower(x)
        pctr, pcvr = torch.sigmoid(ctr_logit), torch.sigmoid(cvr_logit)
        out = {"pctr": pctr, "pcvr": pcvr, "pctcvr": pctr * pcvr, "ctr_logit": ctr_logit, "cvr_logit": cvr_logit}
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
