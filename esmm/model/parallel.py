"""How the replicas of one training run exchange gradients, and in which precision they compute.

Two decisions ``train()`` takes once per run, before it builds the model:

* **Embedding gradients** (``model.sparse_embedding``: auto | true | false).
  A sparse gradient holds only the rows a batch touched, so the optimizer step
  and (under DDP over gloo) the all-reduce cost O(batch rows), not O(table rows).
  NCCL has no sparse all-reduce for DDP's gradient buckets, so under DDP on CUDA
  the table gets a dense gradient: each step all-reduces the whole table
  (``rows x D`` floats; 327,570 x 18 x 4 B = 23.6 MB for the default spec) and
  the table is updated by dense Adam. ``auto`` picks sparse everywhere except
  DDP over NCCL; ``true`` under DDP over NCCL cannot be honoured and is run
  dense with a note; ``false`` is dense everywhere (the NCCL path, testable on
  CPU with gloo). Measurements and when sharding would pay: docs/model.md.
* **Mixed precision** (``train.amp``): bf16 autocast on CUDA (see :func:`amp_dtype`).
  On CPU it is not used: ``train.device=cpu`` with ``train.amp=true`` is refused
  by the config check; ``train.device=auto`` that finds no GPU runs fp32 and says
  so in one line.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import ContextManager, Optional

import torch

from esmm.config.schema import ModelConfig, TrainConfig


@dataclass(frozen=True)
class Precision:
    """The run's autocast dtype (None = fp32) and the line that says why."""

    dtype: Optional[torch.dtype]
    note: str

    def autocast(self, device: torch.device) -> ContextManager:
        """Context for the forward pass; parameters, gradients and optimizer state stay fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)

    def fp32(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The network's outputs in fp32 for the loss: log(pCTR pCVR) of a rare conversion
        needs more than bf16's 8 mantissa bits."""
        return out if self.dtype is None else {k: v.float() for k, v in out.items()}


def embedding_gradients(model_cfg: ModelConfig, world_size: int, device: torch.device) -> tuple[bool, str]:
    """(sparse?, one line saying which path and why) for ``model.sparse_embedding``."""
    nccl = world_size > 1 and device.type == "cuda"
    want = model_cfg.sparse_embedding
    if nccl and want is not False:
        how = "auto" if want == "auto" else "true cannot be honoured"
        return False, (
            f"embedding gradients dense (model.sparse_embedding={how}: DDP over NCCL, "
            f"world size {world_size}, has no sparse all-reduce; the whole table is "
            f"all-reduced each step and updated by Adam)"
        )
    if want is False:
        return False, "embedding gradients dense (model.sparse_embedding=false)"
    where = f"DDP over gloo, world size {world_size}" if world_size > 1 else "single process"
    return True, f"embedding gradients sparse (model.sparse_embedding={str(want).lower()}, {where})"


def amp_dtype() -> torch.dtype:
    """bf16: fp32's exponent range, so no loss scaling (no GradScaler, whose unscale and
    inf checks would also have to walk the sparse embedding gradient); native on Ampere
    and later. fp16 would need a GradScaler and gives nothing over bf16 on those GPUs."""
    return torch.bfloat16


def precision(train_cfg: TrainConfig, device: torch.device) -> Precision:
    """The autocast of ``train.amp`` on ``device``; raises where the GPU has no bf16."""
    if not train_cfg.amp:
        return Precision(None, "precision fp32 (train.amp=false)")
    if device.type != "cuda":
        return Precision(
            None, "precision fp32: train.amp=true applies to CUDA only and " "train.device=auto found no GPU"
        )
    if not torch.cuda.is_bf16_supported():
        raise RuntimeError(
            f"train.amp=true needs bf16 autocast, which {torch.cuda.get_device_name(device)} "
            f"does not support; set train.amp=false"
        )
    return Precision(amp_dtype(), "precision bf16 autocast (train.amp=true)")


def allreduce_bytes_per_step(
    model: torch.nn.Module, sparse: bool, batch_rows: int, lookups_per_row: int, world_size: int
) -> int:
    """Gradient bytes one step's all-reduce carries per rank (before the collective's own
    traffic factor): the dense parameters, plus the embedding gradient: the whole table
    when dense; when sparse, ``batch_rows x lookups_per_row`` (int64 index + D values)
    from *every* rank, since gloo's sparse all-reduce all-gathers indices and values."""
    if world_size <= 1:
        return 0
    table = model.embedding.table.weight
    dense = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not n.startswith("embedding."))
    if not sparse:
        return dense + table.numel() * table.element_size()
    per_lookup = 8 + table.shape[1] * table.element_size()
    return dense + batch_rows * lookups_per_row * per_lookup * world_size


def note(line: str, is_main: bool) -> None:
    """One line on rank 0's stderr (the trainer's few non-progress messages)."""
    if is_main:
        print(f"esmm train: {line}", file=sys.stderr, flush=True)
