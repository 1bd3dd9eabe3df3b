"""Embedding gradients under DDP: the dense path (what NCCL runs) on gloo, world size 2, against the sparse one."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.examples_data import TINY_OVERRIDES, TINY_SPEC, ddp_worker, examples_df, write_examples

from esmm.config.errors import ConfigError
from esmm.config.loader import load_config
from esmm.config.schema import ModelConfig, TrainConfig
from esmm.model.network import build_model
from esmm.model.parallel import allreduce_bytes_per_step, embedding_gradients, precision
from esmm.registry import artifacts as registry
from esmm.training.trainer import _optimizers, train

REPO = Path(__file__).resolve().parents[2]
DATES = ["2026-11-01", "2026-11-02"]
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    "want,world,device,sparse",
    [
        ("auto", 1, CPU, True),
        ("auto", 2, CPU, True),
        ("auto", 1, CUDA, True),
        ("auto", 2, CUDA, False),
        (True, 2, CPU, True),
        (True, 2, CUDA, False),
        (False, 1, CPU, False),
        (False, 2, CPU, False),
    ],
)
def test_which_embedding_gradients(want, world, device, sparse):
    got, line = embedding_gradients(ModelConfig(sparse_embedding=want), world, device)
    assert got is sparse
    assert line.startswith("embedding gradients " + ("sparse" if sparse else "dense"))
    assert ("NCCL" in line) == (world > 1 and device.type == "cuda" and want is not False)


def test_amp_refused_on_cpu_and_fp32_when_auto_finds_no_gpu():
    with pytest.raises(ConfigError, match=r"^train\.amp: .*train\.device=cpu"):
        load_config(overrides=["train.amp=true", "train.device=cpu"])
    p = precision(TrainConfig(amp=True), CPU)
    assert p.dtype is None and "CUDA only" in p.note
    assert precision(TrainConfig(amp=False), CPU).dtype is None


def test_dense_table_gets_adam_and_bytes_per_step():
    cfg = load_config(overrides=[*TINY_OVERRIDES, "model.sparse_embedding=false"])
    model = build_model(cfg.model, cfg.features)  # 70 rows x 4, towers (9->16->8->1) x 2
    _, emb = _optimizers(model, cfg)
    assert type(emb) is torch.optim.Adam and not model.embedding.table.sparse
    towers = 2 * ((9 * 16 + 16) + (16 * 8 + 8) + (8 + 1)) * 4
    assert allreduce_bytes_per_step(model, False, 128, 2, 2) == towers + 70 * 4 * 4
    assert allreduce_bytes_per_step(model, True, 128, 2, 2) == towers + 128 * 2 * (8 + 16) * 2
    assert allreduce_bytes_per_step(model, True, 128, 2, 1) == 0


def _grad_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One backward through DDP with a sparse and with a dense table from the same init,
    on this rank's own batch; saves both all-reduced embedding gradients (dense layout)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from esmm.model.losses import compute_loss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(100 + rank)  # different rows on each rank
        cat = torch.stack([torch.randint(0, 50, (64,), generator=g), torch.randint(0, 20, (64,), generator=g)], 1)
        num, click = torch.rand(64, 1, generator=g), (torch.rand(64, generator=g) < 0.5).float()
        conv = click * (torch.rand(64, generator=g) < 0.5).float()
        grads = {"rows": (cat + torch.tensor([0, 50])).unique()}  # table rows this rank's batch touches
        for sparse in (True, False):
            torch.manual_seed(7)
            mc = ModelConfig(embedding_dim=4, tower=[16, 8], dropout=0.0, sparse_embedding=sparse)
            net = DDP(build_model(mc, TINY_SPEC))
            compute_loss(net(cat, num), click, conv, mc).total.backward()
            w = net.module.embedding.table.weight.grad
            grads["sparse" if sparse else "dense"] = (w.to_dense() if w.is_sparse else w).clone()
        torch.save(grads, os.path.join(out_dir, f"grads{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sparse_and_dense_all_reduce_give_the_same_gradient(tmp_path, free_port):
    torch.multiprocessing.spawn(_grad_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    g0, g1 = (torch.load(tmp_path / f"grads{r}.pt", weights_only=True) for r in (0, 1))
    for g in (g0, g1):
        torch.testing.assert_close(g["sparse"], g["dense"], atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(g0["dense"], g1["dense"], atol=0, rtol=0)
    # The all-reduce combined both ranks: the rows with a gradient are those of either batch.
    touched = set(torch.nonzero((g0["dense"] != 0).any(1)).flatten().tolist())
    assert touched == set(g0["rows"].tolist()) | set(g1["rows"].tolist()) != set(g0["rows"].tolist())


@pytest.mark.integration
class TestTwoRanksTrain:
    """train() on 2 gloo ranks with the table's gradient sparse and dense, Adagrad on the
    table (sparse and dense Adagrad take the same step; SparseAdam and Adam do not)."""

    @pytest.fixture(scope="class")
    def runs(self, spark, tmp_path_factory, free_port):
        root = tmp_path_factory.mktemp("ddp_lake")
        write_examples(examples_df(spark, DATES, 500, immature_last_day=False), str(root / "curated" / "examples"))
        out = {}
        for mode in ("true", "false"):
            d = tmp_path_factory.mktemp(f"run_{mode}")
            cfg = load_config(
                overrides=[
                    f"lakehouse.root={root}",
                    *TINY_OVERRIDES,
                    "train.train_start=2026-11-01",
                    "train.train_end=2026-11-02",
                    f"model.sparse_embedding={mode}",
                    "train.embedding_optimizer=adagrad",
                    "train.embedding_lr=0.05",
                    "train.shuffle_buffer=0",
                    f"train.checkpoint_dir={d / 'ck'}",
                    "train.register=false",
                    f"lakehouse.tables.models={d / 'models'}",
                ]
            )
            torch.multiprocessing.spawn(ddp_worker, args=(2, free_port(), cfg, str(d)), nprocs=2, join=True)
            out[mode] = [json.loads((d / f"rank{r}.json").read_text()) for r in (0, 1)]
        return out

    def test_dense_path_keeps_ranks_identical_and_loss_finite(self, runs):
        r0, r1 = runs["false"]
        assert r0["steps"] == r1["steps"] > 0 and r0["total"] == 1000
        assert r0["digest"] == r1["digest"]  # every parameter, the embedding table included
        assert r0["history"] and all(math.isfinite(v) for rec in r0["history"] for v in rec.values())
        _, meta = registry.load_model(r0["artifact_dir"])
        assert meta["training"]["embedding_gradients"] == "dense"

    def test_sparse_and_dense_train_to_the_same_parameters(self, runs):
        (s0, s1), (d0, _) = runs["true"], runs["false"]
        assert s0["digest"] == s1["digest"] and s0["steps"] == d0["steps"]
        sparse = torch.load(s0["checkpoint"], weights_only=True)["model"]
        dense = torch.load(d0["checkpoint"], weights_only=True)["model"]
        torch.manual_seed(2018)  # train()'s rank-0 init (train.seed + rank): how far training moved the table
        init = build_model(ModelConfig(embedding_dim=4, tower=[16, 8], dropout=0.0), TINY_SPEC).embedding.table.weight
        moved = (sparse["embedding.table.weight"] - init).abs().max().item()
        assert moved > 0.01
        for name in sparse:
            torch.testing.assert_close(sparse[name], dense[name], atol=2e-4, rtol=1e-3, msg=name)
        _, meta = registry.load_model(s0["artifact_dir"])
        assert meta["training"]["embedding_gradients"] == "sparse"


def test_single_process_auto_is_sparse_and_says_so(spark, tmp_path, capfd):
    write_examples(examples_df(spark, DATES[:1], 300, immature_last_day=False), str(tmp_path / "curated" / "examples"))
    r = train(
        load_config(
            overrides=[
                f"lakehouse.root={tmp_path}",
                *TINY_OVERRIDES,
                "train.max_steps=2",
                "train.train_start=2026-11-01",
                "train.train_end=2026-11-01",
                "train.register=false",
            ]
        )
    )
    err = capfd.readouterr().err
    assert "esmm train: embedding gradients sparse (model.sparse_embedding=auto, single process)" in err
    assert "precision fp32 (train.amp=false)" in err
    assert registry.load_model(r.artifact_dir)[1]["training"]["embedding_gradients"] == "sparse"


def test_gpu_check_without_cuda_says_so_and_exits_0(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the script would run the benchmark")
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device" in proc.stdout
    assert json.loads(out.read_text()) == {"cuda": False, "runs": []}
