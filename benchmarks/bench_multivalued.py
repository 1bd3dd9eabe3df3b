"""Forward + backward time of the model with and without a multi-valued field.

    nice -n 10 python benchmarks/bench_multivalued.py [--batch 1024] [--steps 50] [--reps 5]

Three specs on the same rows: 11 single-valued fields (today's one-lookup path);
the same plus one multi-valued field (EmbeddingBag, mean, max_len 32, 1..32 ids per
row); and the same plus four such fields (like Ali-CCP's behaviour fields). Prints
the median and spread (min..max over ``--reps``) of milliseconds per step (model
forward, loss, backward, both optimizer steps), one torch thread.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from esmm.config.schema import CategoricalField, FeatureSpec, ModelConfig, NumericField
from esmm.data.examples import PAD, cat_width
from esmm.model.losses import compute_loss
from esmm.model.network import build_model

SINGLE = [
    CategoricalField(f"s{i}", buckets=b)
    for i, b in enumerate([200_000, 100_000, 4, 10, 2_000, 500, 5_000, 20_000, 16, 8, 32])
]


def _spec(n_multi: int, max_len: int) -> FeatureSpec:
    multi = [
        CategoricalField(f"m{i}", buckets=100_000, multi=True, pooling="mean", max_len=max_len) for i in range(n_multi)
    ]
    return FeatureSpec(categorical=SINGLE + multi, numeric=[NumericField("x")])


def _cat(spec: FeatureSpec, batch: int, g: torch.Generator) -> torch.Tensor:
    blocks = []
    for f in spec.categorical:
        if not f.multi:
            blocks.append(torch.randint(0, f.buckets, (batch, 1), generator=g))
            continue
        ids = torch.randint(0, f.buckets, (batch, f.max_len), generator=g)
        n = torch.randint(1, f.max_len + 1, (batch, 1), generator=g)
        blocks.append(torch.where(torch.arange(f.max_len)[None] < n, ids, torch.full_like(ids, PAD)))
    cat = torch.cat(blocks, 1)
    assert cat.shape[1] == cat_width(spec)
    return cat


def time_steps(spec: FeatureSpec, batch: int, steps: int) -> float:
    """Milliseconds per training step (median over ``steps`` after 5 warm-up steps)."""
    torch.manual_seed(0)
    cfg = ModelConfig(kind="esmm")
    model = build_model(cfg, spec)
    dense = torch.optim.Adam(model.dense_parameters(), lr=1e-3)
    sparse = torch.optim.SparseAdam([model.embedding.table.weight], lr=1e-2)
    g = torch.Generator().manual_seed(1)
    cat, num = _cat(spec, batch, g), torch.rand(batch, 1, generator=g)
    click = (torch.rand(batch, generator=g) < 0.1).float()
    conv = click * (torch.rand(batch, generator=g) < 0.2).float()
    times = []
    for i in range(steps + 5):
        t0 = time.perf_counter()
        loss = compute_loss(model(cat, num), click, conv, cfg)
        dense.zero_grad(set_to_none=True)
        sparse.zero_grad(set_to_none=True)
        loss.total.backward()
        dense.step()
        sparse.step()
        if i >= 5:
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--max-len", type=int, default=32)
    a = p.parse_args()
    torch.set_num_threads(1)
    cases = {
        "11 single fields": _spec(0, a.max_len),
        "+ 1 multi field": _spec(1, a.max_len),
        "+ 4 multi fields": _spec(4, a.max_len),
    }
    res = {k: [] for k in cases}
    for _ in range(a.reps):  # interleaved, so a busy machine slows every case alike
        for name, spec in cases.items():
            res[name].append(time_steps(spec, a.batch, a.steps))
    base = statistics.median(res["11 single fields"])
    print(
        f"forward+backward+optimizer step, batch {a.batch}, 1 thread, median of {a.reps} reps "
        f"(each the median of {a.steps} steps):"
    )
    for name, ms in res.items():
        m = statistics.median(ms)
        print(f"  {name:18s} {m:7.2f} ms/step  (min {min(ms):.2f} .. max {max(ms):.2f})  x{m / base:.2f}")


if __name__ == "__main__":
    main()
