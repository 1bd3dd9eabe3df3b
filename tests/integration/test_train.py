"""train(): real multi-process gloo DDP, crash and resume, one Delta version, artifact and registry."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.examples_data import TINY_OVERRIDES, TINY_SPEC, ddp_worker, examples_df, write_examples

from esmm.config.loader import load_config
from esmm.data.examples import resolve_snapshot
from esmm.registry import artifacts as registry
from esmm.training.trainer import train

pytestmark = pytest.mark.integration  # multi-process DDP and whole training runs

DATES = ["2026-11-01", "2026-11-02", "2026-11-03"]
ROWS_PER_DAY = 600
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    """3 days x 600 rows, one file (= one row group) per day: 3 row groups, odd, for 2 ranks.
    The last day has immature labels; 2026-11-04 is the evaluation day."""
    root = tmp_path_factory.mktemp("lake")
    path = str(root / "curated" / "examples")
    write_examples(examples_df(spark, DATES + ["2026-11-04"], ROWS_PER_DAY, immature_last_day=False), path)
    return root


def make(root, *extra):
    return load_config(
        overrides=[
            f"lakehouse.root={root}",
            *TINY_OVERRIDES,
            "train.train_start=2026-11-01",
            "train.train_end=2026-11-03",
            *extra,
        ]
    )


def test_snapshot_has_odd_row_groups(lake):
    import pyarrow.parquet as pq

    snap = resolve_snapshot(str(lake / "curated" / "examples"), DATES)
    groups = sum(pq.ParquetFile(f[len("file://") :]).num_row_groups for f in snap.files)
    assert groups == 3
    # Row count from the Delta log (the learning-rate schedule's step plan) = the files' rows.
    assert snap.rows == sum(pq.ParquetFile(f[len("file://") :]).metadata.num_rows for f in snap.files)
    assert resolve_snapshot(str(lake / "curated" / "examples"), DATES[:1]).rows == ROWS_PER_DAY


def test_linear_schedule_plan_and_factor(lake):
    from esmm.training.trainer import lr_factor, planned_steps

    cfg = make(
        lake, "train.lr_schedule=linear", "train.lr_final_fraction=0.2", "train.batch_size=256", "train.epochs=2"
    )
    steps = planned_steps(3 * ROWS_PER_DAY, cfg, world_size=1)
    assert steps == 2 * 8  # ceil(1800 / 256) = 8 per epoch
    assert planned_steps(3 * ROWS_PER_DAY, cfg, world_size=2) == 2 * 4
    assert planned_steps(None, cfg, 1) is None
    assert [round(lr_factor(s, steps, cfg), 6) for s in (0, steps - 1, steps + 5)] == [1.0, 0.2, 0.2]
    assert lr_factor(7, steps, cfg) == pytest.approx(1 - 0.8 * 7 / 15)
    assert lr_factor(7, steps, make(lake)) == 1.0  # constant (the default)
    capped = make(lake, "train.lr_schedule=linear", "train.max_steps=5")
    assert planned_steps(10_000, capped, 1) == 5


def test_two_gloo_processes_finish_and_checkpoint_loads(lake, tmp_path, free_port):
    cfg = make(
        lake,
        f"train.checkpoint_dir={tmp_path / 'ck'}",
        "train.eval_dates=[2026-11-04]",
        "train.epochs=2",
        "train.register=false",
    )
    torch.multiprocessing.spawn(ddp_worker, args=(2, free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    # Both ranks stepped together (same count) although their shards hold 2 and 1 row groups,
    # and no row was skipped: 2 epochs x 1,800 rows between them.
    assert r0["steps"] == r1["steps"] > 0
    assert r0["samples"] + r1["samples"] == 2 * 3 * ROWS_PER_DAY == r0["total"] == r1["total"]
    assert r0["samples"] != r1["samples"]
    assert r1["model_id"] is None and r0["model_id"]
    state = torch.load(r0["checkpoint"], weights_only=True)
    assert state["step"] == r0["steps"] and state["epoch"] == 2
    model, meta = registry.load_model(r0["artifact_dir"])
    assert torch.equal(model.state_dict()["ctr_tower.mlp.0.weight"], state["model"]["ctr_tower.mlp.0.weight"])
    assert meta["examples"]["version"] == 0 and meta["training"]["world_size"] == 2
    assert 0.0 < meta["metrics"]["ctr_auc"] <= 1.0
    assert (Path(r0["artifact_dir"]) / "reliability.png").stat().st_size > 1000


CRASH = """
import sys; sys.path.insert(0, {tests!r})
from esmm.config.loader import load_config
from esmm.training.trainer import train
from helpers.examples_data import TINY_OVERRIDES
cfg = load_config(overrides=[*TINY_OVERRIDES, *{overrides!r}])
train(cfg)
"""


def test_crash_after_checkpoint_then_resume(lake, tmp_path):
    overrides = [
        f"lakehouse.root={lake}",
        "train.train_start=2026-11-01",
        "train.train_end=2026-11-03",
        f"train.checkpoint_dir={tmp_path / 'ck'}",
        "train.checkpoint_every=4",
        "train.register=false",
        "train.epochs=2",
    ]
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            CRASH.format(tests=str(REPO / "tests"), overrides=overrides + ["train.fail_after_steps=6"]),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode != 0 and "simulated crash at step 6" in proc.stderr
    ckpts = list((tmp_path / "ck").glob("*/last.pt"))
    assert len(ckpts) == 1 and torch.load(ckpts[0], weights_only=True)["step"] == 4
    res = train(load_config(overrides=[*TINY_OVERRIDES, *overrides]))
    # 1800 rows / batch 128 = 15 batches per epoch (14 full + 1), 2 epochs.
    assert res.resumed_from_step == 4
    assert res.steps == 30 and res.samples == 2 * 1800
    assert torch.load(ckpts[0], weights_only=True)["step"] == 30


def test_registry_round_trip_and_spark_reads_it(spark, lake, tmp_path):
    cfg = make(
        lake,
        f"train.checkpoint_dir={tmp_path / 'ck'}",
        "train.max_steps=3",
        f"lakehouse.tables.registry={tmp_path / 'registry'}",
        f"lakehouse.tables.models={tmp_path / 'models'}",
    )
    a = train(cfg)
    b = train(
        make(
            lake,
            f"train.checkpoint_dir={tmp_path / 'ck2'}",
            "train.max_steps=3",
            "model.kind=escm2-ips",
            f"lakehouse.tables.registry={tmp_path / 'registry'}",
            f"lakehouse.tables.models={tmp_path / 'models'}",
        )
    )
    reg = str(tmp_path / "registry")
    assert {r["model_id"]: r["status"] for r in registry.list_models(reg)} == {
        a.model_id: "candidate",
        b.model_id: "candidate",
    }
    registry.promote(reg, a.model_id)
    registry.promote(reg, b.model_id)
    assert registry.champion(reg)["model_id"] == b.model_id
    rows = {r.model_id: (r.status, r.kind, r.examples_version) for r in spark.read.format("delta").load(reg).collect()}
    assert rows == {a.model_id: ("retired", "esmm", 0), b.model_id: ("champion", "escm2-ips", 0)}
    with pytest.raises(ValueError, match="no model 'nope'"):
        registry.promote(reg, "nope")
    model, meta = registry.load_model(b.artifact_dir)
    assert meta["kind"] == "escm2-ips" and meta["feature_mapping_id"] == TINY_SPEC.mapping_id
    out = model(torch.tensor([[1, 2]]), torch.tensor([[0.5]]))
    assert 0 < out["pcvr"].item() < 1


def test_torch_distributor_runs_train(spark, lake, tmp_path):
    """Spark's TorchDistributor launches train(cfg) on 2 local processes (gloo) and returns rank 0's result."""
    from pyspark.ml.torch.distributor import TorchDistributor

    cfg = make(
        lake,
        f"train.checkpoint_dir={tmp_path / 'ck'}",
        "train.register=false",
        "train.torch_threads=1",
        f"lakehouse.tables.models={tmp_path / 'models'}",
    )
    r = TorchDistributor(num_processes=2, local_mode=True, use_gpu=False).run(train, cfg)
    assert r.rank == 0 and r.world_size == 2 and r.steps > 0
    model, meta = registry.load_model(r.artifact_dir)
    assert meta["training"]["world_size"] == 2
