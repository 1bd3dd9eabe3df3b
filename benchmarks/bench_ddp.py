"""DDP step throughput with sparse or dense embedding gradients, and the bytes each step all-reduces.

One process per rank, started alone (world size 1) or under torchrun::

    python benchmarks/bench_ddp.py --grads sparse --steps 30 --out /tmp/ddp.jsonl
    torchrun --nproc_per_node 2 benchmarks/bench_ddp.py --grads dense --steps 30 --out /tmp/ddp.jsonl

The model is the paper-size network of ``conf/default.yaml`` (11 categorical fields,
327,570 table rows x 18, towers 360-200-80), trained by train()'s own optimizers
(esmm.training.trainer._optimizers), precision (esmm.model.parallel) and loss, on batches generated
in memory (no reader: this measures the step and its all-reduce). Backend: NCCL on
CUDA, gloo on CPU. ``--grads auto`` lets esmm.model.parallel choose (what train() does).

Rank 0 appends one JSON record to ``--out``: world size, device, grads, amp, batch,
steps, seconds, samples/s over all ranks, and ``allreduce_bytes``: the gradient bytes
one step hands to the all-reduce per rank, counted by a DDP communication hook on the
buckets it actually sends (dense) or from the sparse gradient's indices and values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]

from esmm.config.loader import load_config  # noqa: E402
from esmm.model.losses import compute_loss  # noqa: E402
from esmm.model.network import build_model  # noqa: E402
from esmm.model.parallel import allreduce_bytes_per_step, embedding_gradients, precision  # noqa: E402
from esmm.training.trainer import _optimizers  # noqa: E402


def batches(spec, b: int, n: int, device: torch.device, seed: int) -> list[tuple[torch.Tensor, ...]]:
    """``n`` batches: cat [B, F] uniform over each field's buckets, num [B, N], click ~4%, conversion ~5% of clicks."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        cat = torch.stack([torch.randint(0, f.buckets, (b,), generator=g) for f in spec.categorical], 1)
        num = torch.rand(b, len(spec.numeric), generator=g)
        click = (torch.rand(b, generator=g) < 0.04).float()
        conv = click * (torch.rand(b, generator=g) < 0.05).float()
        out.append(tuple(t.to(device) for t in (cat, num, click, conv)))
    return out


def _count_hook(counter: list[int]):
    """DDP comm hook: count the bytes of every dense bucket, then all-reduce it as DDP would."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def hook(state, bucket):
        buf = bucket.buffer()
        counter[0] += buf.numel() * buf.element_size()
        return allreduce_hook(state, bucket)

    return hook


def run(grads: str, amp: bool, batch: int, steps: int, warmup: int, threads: int) -> dict:
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if threads:
        torch.set_num_threads(threads)
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    want = {"auto": "auto", "sparse": "true", "dense": "false"}[grads]
    cfg = load_config(
        overrides=[
            f"model.sparse_embedding={want}",
            f"train.batch_size={batch}",
            f"train.amp={'true' if amp else 'false'}",
        ]
    )
    sparse, why = embedding_gradients(cfg.model, world, device)
    prec = precision(cfg.train, device)
    torch.manual_seed(cfg.train.seed)
    model = build_model(dataclasses.replace(cfg.model, sparse_embedding=sparse), cfg.features)
    model.to(device)
    dense_opt, emb_opt = _optimizers(model, cfg)
    net, counted = model, [0]
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[local] if cuda else None)
        if not sparse:  # the hook sees dense buckets; sparse gradients are counted below
            net.register_comm_hook(None, _count_hook(counted))
    data = batches(cfg.features, batch, 8, device, seed=rank)
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            if cuda:
                torch.cuda.synchronize()
            counted[0] = 0
            t0 = time.perf_counter()
        cat, num, click, conv = data[i % len(data)]
        with prec.autocast(device):
            out = net(cat, num)
        loss = compute_loss(prec.fp32(out), click, conv, cfg.model)
        dense_opt.zero_grad(set_to_none=True)
        emb_opt.zero_grad(set_to_none=True)
        loss.total.backward()
        dense_opt.step()
        emb_opt.step()
    if cuda:
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    lookups = len(cfg.features.categorical)
    if world > 1 and not sparse:
        per_step = counted[0] // steps
    else:
        per_step = allreduce_bytes_per_step(model, sparse, batch, lookups, world)
    rec = {
        "world_size": world,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "backend": (dist.get_backend() if world > 1 else None),
        "grads": "sparse" if sparse else "dense",
        "why": why,
        "amp": prec.dtype is not None,
        "batch": batch,
        "steps": steps,
        "seconds": secs,
        "samples_per_s": world * batch * steps / secs,
        "allreduce_bytes": per_step,
        "allreduce_bytes_how": "counted (DDP comm hook)" if (world > 1 and not sparse) else "computed",
        "table_rows": model.embedding.table.weight.shape[0],
        "dim": model.embedding.table.weight.shape[1],
        "torch": torch.__version__,
    }
    if world > 1:
        dist.destroy_process_group()
    return rec if rank == 0 else {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grads", choices=["auto", "sparse", "dense"], default="auto")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per rank (0 = default)")
    ap.add_argument("--out", default="", help="append rank 0's JSON record to this file")
    a = ap.parse_args(argv)
    rec = run(a.grads, a.amp, a.batch, a.steps, a.warmup, a.threads)
    if rec:
        print(json.dumps(rec), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
