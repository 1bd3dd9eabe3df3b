"""MLflow tracking of training runs (a real file store in tmp_path), the loss records in the
artifact, the registry's run id column, and the report's training curve drawn from them."""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from helpers.examples_data import TINY_OVERRIDES, examples_df, write_examples

from benchmarks import quality as bench_quality
from esmm.config.errors import ConfigError
from esmm.config.loader import load_config
from esmm.registry import artifacts as registry
from esmm.registry import tracking
from esmm.training.trainer import train
from pipelines.report import page as report

DATES = ["2026-11-01", "2026-11-02", "2026-11-03"]
EVAL = "2026-11-04"
ROWS_PER_DAY = 600  # 1,800 training rows / batch 128 = 15 steps per epoch (14 full + 1)


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    write_examples(examples_df(spark, DATES + [EVAL], ROWS_PER_DAY), str(root / "curated" / "examples"))
    return root


def make(root, tmp_path, *extra):
    return load_config(
        overrides=[
            f"lakehouse.root={root}",
            *TINY_OVERRIDES,
            "train.train_start=2026-11-01",
            "train.train_end=2026-11-03",
            f"train.eval_dates=[{EVAL}]",
            "train.epochs=2",
            "train.log_every=4",
            "train.resume=false",
            f"train.checkpoint_dir={tmp_path / 'ck'}",
            f"lakehouse.tables.registry={tmp_path / 'registry'}",
            f"lakehouse.tables.models={tmp_path / 'models'}",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def trained(lake, tmp_path_factory):
    """One tracked training run: (config, result)."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = make(
        lake, tmp, f"tracking.uri={tmp / 'mlruns'}", "tracking.experiment=tests", "tracking.tags={team: bidding}"
    )
    return cfg, train(cfg)


# Records every 4 steps, at step 1, and at each epoch's last step (15 and 30).
EXPECTED_STEPS = [1, 4, 8, 12, 15, 16, 20, 24, 28, 30]


def test_trainer_records_per_step_losses_in_the_artifact(trained):
    cfg, r = trained
    assert [h["step"] for h in r.history] == EXPECTED_STEPS
    assert [h["epoch"] for h in r.history] == [0] * 5 + [1] * 5
    assert [h["samples"] for h in r.history] == [128, 512, 1024, 1536, 1800, 1928, 2440, 2952, 3464, 3600]
    for h in r.history:
        assert set(h) == {"step", "epoch", "samples", "time", "total", "ctr", "ctcvr"}
        # ESMM: total = L_ctr + 1.0 * L_ctcvr per step, so also for the means of a record.
        assert h["total"] == pytest.approx(h["ctr"] + h["ctcvr"], rel=1e-5)
        assert 0 < h["ctcvr"] < h["ctr"] < 1.5
    assert registry.read_losses(r.artifact_dir) == r.history


def test_mlflow_run_has_params_losses_metrics_artifacts_and_tags(trained):
    cfg, r = trained
    uri = (Path(cfg.tracking.uri)).resolve().as_uri()
    assert tracking.resolve_uri(cfg) == uri
    run = tracking.run_data(uri, r.mlflow_run_id)
    assert run["status"] == "FINISHED"
    assert run["params"]["model.kind"] == "esmm" and run["params"]["train.batch_size"] == "128"
    assert run["params"]["model.tower"] == "[16, 8]" and run["params"]["train.log_every"] == "4"
    for part in ("total", "ctr", "ctcvr"):
        hist = run["history"][f"loss/{part}"]
        assert [s for s, _ in hist] == EXPECTED_STEPS
        assert [v for _, v in hist] == pytest.approx([h[part] for h in r.history])
    assert set(run["history"]) == {"loss/total", "loss/ctr", "loss/ctcvr"}
    assert run["metrics"]["ctcvr_auc"] == pytest.approx(r.metrics["ctcvr_auc"])
    assert run["metrics"]["ctr_auc"] == pytest.approx(r.metrics["ctr_auc"])
    assert run["metrics"]["train/samples"] == 3600
    assert {"model/model.pt", "model/meta.json", "model/losses.json", "model/reliability.png"} <= set(run["artifacts"])
    tags = run["tags"]
    assert tags["mlflow.runName"] == tags["model_id"] == r.model_id
    assert (tags["model_kind"], tags["seed"], tags["examples_version"]) == ("esmm", "2018", "0")
    assert tags["train_dates"] == "2026-11-01..2026-11-03" and tags["eval_dates"] == EVAL
    assert tags["team"] == "bidding"


def test_registry_row_and_meta_carry_the_run_id(trained):
    cfg, r = trained
    assert r.mlflow_run_id
    rows = registry.list_models(cfg.lakehouse.path("registry"))
    assert [(x["model_id"], x["mlflow_run_id"]) for x in rows] == [(r.model_id, r.mlflow_run_id)]
    assert registry.read_meta(r.artifact_dir)["mlflow_run_id"] == r.mlflow_run_id


def test_old_registry_without_the_column_gains_it(trained, tmp_path, spark):
    """A registry written before mlflow_run_id existed takes new rows; old rows read null."""
    cfg, r = trained
    reg = str(tmp_path / "registry")
    old = pa.schema([f for f in registry._schema() if f.name != "mlflow_run_id"])
    then = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    row = {
        **{n: None for n in old.names},
        "model_id": "old-1",
        "kind": "esmm",
        "status": "champion",
        "created_at": then,
        "updated_at": then,
    }
    write_deltalake(reg, pa.Table.from_pylist([row], schema=old), mode="append")
    registry.register(reg, r.artifact_dir)
    got = {x["model_id"]: x.get("mlflow_run_id") for x in registry.list_models(reg)}
    assert got == {"old-1": None, r.model_id: r.mlflow_run_id}
    assert "mlflow_run_id" in DeltaTable(reg).schema().to_pyarrow().names
    by_spark = {x.model_id: x.mlflow_run_id for x in spark.read.format("delta").load(reg).collect()}
    assert by_spark == got
    registry.promote(reg, r.model_id)
    assert registry.champion(reg)["model_id"] == r.model_id


def test_report_training_curve_comes_from_the_recorded_losses(trained, spark, tmp_path):
    cfg, r = trained
    outputs = {"evaluate": {"model_ids": {"candidate": r.model_id}, "metrics": {"candidate": r.metrics}}}
    data = report.collect(spark, cfg, EVAL, outputs=outputs, plan={})
    assert data.curves == {"candidate": r.history}
    assert report.chart_curves(data, tmp_path) == "curves.png"
    # A model folder without losses.json (an older artifact): no curve, the chart says so.
    assert (
        report.collect(
            spark, load_config(overrides=[f"lakehouse.root={tmp_path}"]), EVAL, outputs=outputs, plan={}
        ).curves
        == {}
    )


def test_disabled_tracking_still_trains_and_records_losses(lake, tmp_path, capfd):
    cfg = make(lake, tmp_path, "tracking.enabled=false", "train.max_steps=5")
    r = train(cfg)
    assert r.mlflow_run_id is None and r.model_id
    assert [h["step"] for h in registry.read_losses(r.artifact_dir)] == [1, 4, 5]
    assert registry.list_models(cfg.lakehouse.path("registry"))[0]["mlflow_run_id"] is None
    assert not (lake / "mlruns").exists()
    assert "MLflow" not in capfd.readouterr().err


def test_unreachable_server_says_so_once_and_training_succeeds(lake, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = make(lake, tmp_path, f"tracking.uri=http://127.0.0.1:{port}", "train.max_steps=3")
    r = train(cfg)
    err = capfd.readouterr().err
    assert r.model_id and r.mlflow_run_id is None
    assert err.count(f"MLflow tracking at http://127.0.0.1:{port} is unavailable") == 1
    assert [h["step"] for h in registry.read_losses(r.artifact_dir)] == [1, 3]
    assert registry.list_models(cfg.lakehouse.path("registry"))[0]["mlflow_run_id"] is None


def test_default_store_is_under_the_lakehouse_root(tmp_path):
    cfg = load_config(overrides=[f"lakehouse.root={tmp_path}"])
    assert tracking.resolve_uri(cfg) == (tmp_path / "mlruns").resolve().as_uri()
    remote = load_config(overrides=["lakehouse.root=s3a://bucket/lh"])
    assert tracking.resolve_uri(remote) is None
    server = load_config(overrides=["tracking.uri=http://mlflow.internal:5000"])
    assert tracking.resolve_uri(server) == "http://mlflow.internal:5000"


@pytest.mark.parametrize(
    "override, message",
    [
        ("tracking.uri=ftp://host/x", "tracking.uri: 'ftp://host/x': scheme 'ftp' is not one of"),
        ("tracking.experiment=' '", "tracking.experiment: must be a non-empty name"),
        ("tracking.enabled=maybe", "tracking.enabled: expected true or false"),
        ("tracking.tags=[a]", "tracking.tags: expected a mapping"),
    ],
)
def test_bad_tracking_config_names_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert message in str(e.value)


def test_bench_runs_are_children_of_one_tagged_bench_run(spark, tmp_path):
    # The bench writes its own world with the default feature spec: only the model is made tiny.
    base = [
        f"lakehouse.root={tmp_path / 'lake'}",
        "model.embedding_dim=4",
        "model.tower=[16, 8]",
        "train.progress=false",
        "train.batch_size=128",
        "train.reader_workers=1",
        f"tracking.uri={tmp_path / 'mlruns'}",
        f"train.checkpoint_dir={tmp_path / 'ck'}",
        "train.max_steps=3",
        "generate.n_users=500",
        "generate.n_items=200",
    ]
    result = bench_quality.run(
        spark, [], base, size="tiny", seeds=1, models=("naive", "esmm"), epochs=1, out_dir=str(tmp_path / "out")
    )
    uri = (tmp_path / "mlruns").resolve().as_uri()
    runs = result["seeds"][0]["models"]
    children = {kind: tracking.run_data(uri, r["mlflow_run_id"]) for kind, r in runs.items()}
    assert set(children) == {"naive", "esmm"}
    parents = {c["tags"]["mlflow.parentRunId"] for c in children.values()}
    assert len(parents) == 1
    parent = tracking.run_data(uri, parents.pop())
    assert parent["status"] == "FINISHED"
    bench_id = parent["tags"]["bench_run_id"]
    assert parent["tags"]["mlflow.runName"] == bench_id
    for kind, c in children.items():
        assert c["tags"]["bench_run_id"] == bench_id and c["tags"]["model_kind"] == kind
        assert c["tags"]["seed"] == str(bench_quality.TRAIN_SEED) and c["tags"]["examples_version"] == "0"
        assert c["tags"]["run_date"] == parent["tags"]["run_date"]
        assert [s for s, _ in c["history"]["loss/total"]] == [1, 3]
        assert parent["metrics"][f"{kind}/ctcvr_auc_mean"] == pytest.approx(c["metrics"]["ctcvr_auc"])
    assert "naive/ctcvr_auc_std" not in parent["metrics"]  # one seed: no spread, nothing logged
    assert parent["artifacts"] == ["bench_quality.md"]
