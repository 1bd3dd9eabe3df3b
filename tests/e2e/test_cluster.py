"""Every Spark job under spark-submit on a real standalone cluster, against local Spark.

One cluster for the module (tests/helpers/spark_cluster.py): a master and two 1-core
workers, separate JVMs on this machine, so each application runs on two
executors. Jobs are submitted as the README's cluster section tells a user:
the code as a zip through ``--py-files``, ``jobs/cli.py <command>``. Each job's
Delta tables must equal, row for row, what the same command writes on local
Spark (the session fixture ``spark``): generate, labels, features and score on
a tiny world of two days. The label job must also survive losing an executor
JVM while its tasks run, and still write exactly the uninterrupted tables.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
from collections import Counter
from pathlib import Path

import pytest
from helpers.spark_cluster import StandaloneCluster, executor_pid, rest, wait_for

from esmm.config.loader import load_config
from jobs.cli import main
from pipelines.io.delta import read_delta

pytestmark = [pytest.mark.slow, pytest.mark.integration]

D1, D2 = "2026-11-01", "2026-11-02"
WORLD = [
    "generate.start_date=" + D1,
    "generate.n_users=500",
    "generate.n_items=300",
    "generate.cvr=0.3",
    "labels.click_window=1h",
    "labels.attribution_window=12h",
    "labels.max_lateness=1h",
    "labels.max_bad_fraction=0.05",
    "model.embedding_dim=4",
    "model.tower=[8]",
    "train.batch_size=256",
    "train.epochs=1",
    "train.reader_workers=1",
    "train.shuffle_buffer=500",
    "train.device=cpu",
    "train.torch_threads=1",
    "train.progress=false",
    "train.train_start=" + D1,
    "train.train_end=" + D1,
    "score.batch_size=300",
]
GENERATE = ["generate", "--days", "2", "--impressions-per-day", "2000"]
LABELS = ["labels", "--start", D1, "--end", D2]
FEATURES = ["features", "--start", D1, "--end", D2]
RAW = ("impressions", "clicks", "conversions", "truth")
# Columns that name the run, not the data: a run's id and its wall-clock time.
RUN_COLUMNS = {"quarantine": ("run_id", "quarantined_at"), "scores": ("scored_at",)}
SCORE_FLOATS = ("pctr", "pcvr", "pctcvr", "pctr_raw", "pcvr_raw", "pctcvr_raw")


def _sets(root: Path) -> list[str]:
    return [x for o in [f"lakehouse.root={root}", *WORLD] for x in ("--set", o)]


def _cfg(root: Path):
    return load_config(overrides=[f"lakehouse.root={root}", *WORLD])


def _local(root: Path, *argv: str) -> str:
    """Run ``esmm <argv>`` in this process, on the local session; its stdout."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main([*argv, *_sets(root)])
    assert rc == 0, f"local esmm {' '.join(argv)} exited {rc}: {buf.getvalue()[-2000:]}"
    return buf.getvalue()


def _ok(proc, what: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{what} on the cluster exited {proc.returncode}:\n{out[-6000:]}"
    return out


def _on_cluster(out: str, url: str) -> None:
    # The job kept the cluster's master, and its code came from the submitted zip
    # (Spark names each job's call site; a checkout on the path would show instead).
    assert f"esmm: spark master {url}" in out
    assert "esmm.zip/pipelines/" in out


def _copy_tables(src: Path, dst: Path, names) -> None:
    for name in names:
        rel = getattr(_cfg(src).lakehouse.tables, name)
        shutil.copytree(src / rel, dst / rel)


def assert_same_table(
    spark, got_root: Path, want_root: Path, table: str, where: str | None = None, drop: tuple[str, ...] = ()
) -> int:
    """The two lakehouses' ``table`` hold the same multiset of rows (run columns and ``drop`` aside)."""

    def rows(root):
        df = read_delta(spark, _cfg(root).lakehouse.path(table)).drop(*RUN_COLUMNS.get(table, ()), *drop)
        if where:
            df = df.where(where)
        return df

    got, want = rows(got_root), rows(want_root)
    assert got.columns == want.columns, (table, got.columns, want.columns)
    g, w = Counter(map(tuple, got.collect())), Counter(map(tuple, want.collect()))
    only_got, only_want = g - w, w - g
    assert not only_got and not only_want, (
        f"{table}: {sum(only_got.values())} row(s) only on the cluster, {sum(only_want.values())} only "
        f"locally; e.g. cluster {list(only_got)[:2]} local {list(only_want)[:2]}"
    )
    return sum(g.values())


def _score_floats(spark, root: Path) -> dict[str, tuple[float, ...]]:
    df = read_delta(spark, _cfg(root).lakehouse.path("scores"))
    return {r[0]: tuple(r[1:]) for r in df.select("impression_id", *SCORE_FLOATS).collect()}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, free_port):
    with StandaloneCluster(tmp_path_factory.mktemp("cluster"), [free_port() for _ in range(4)]) as c:
        yield c


@pytest.fixture(scope="module")
def local(spark, tmp_path_factory):
    """The tiny world and every job's tables, run locally: the reference lakehouse,
    with a tiny model trained on D1 and registered (its id under ``model_id``)."""
    from esmm.training.trainer import train

    root = tmp_path_factory.mktemp("local") / "lakehouse"
    _local(root, *GENERATE)
    _local(root, *LABELS)
    _local(root, *FEATURES)
    model_id = train(_cfg(root)).model_id
    _local(root, "score", "--date", D2, "--model", model_id)
    return root, model_id


@pytest.fixture(scope="module")
def cluster_root(local, tmp_path_factory):
    """A lakehouse holding the local run's raw logs: the cluster jobs' input."""
    root = tmp_path_factory.mktemp("on-cluster") / "lakehouse"
    _copy_tables(local[0], root, RAW)
    return root


@pytest.fixture(scope="module")
def cluster_labels(cluster, cluster_root, free_port, tmp_path_factory):
    """The label job on the cluster, with one executor JVM killed while it runs a task and holds
    cached blocks (Delta's snapshot state or the job's persisted intermediates): Spark must re-run
    the task and recompute what died with it. One run serves both label tests and the feature job:
    its tables must equal the uninterrupted local run's, so it also shows the job works on a cluster.
    Returns (the job's output, the killed executor)."""
    ui = free_port()
    log = tmp_path_factory.mktemp("labels-log") / "labels.log"
    job = cluster.submit_background([*LABELS, *_sets(cluster_root)], log, conf={"spark.ui.port": str(ui)})
    victim: dict = {}
    try:
        apps: list[dict] = []

        def driver_up() -> bool:
            apps[:] = rest(ui, "applications") or []
            return bool(apps) or job.poll() is not None

        wait_for(driver_up, 300, "the label job's driver UI")
        assert apps, f"the label job ended before its UI came up:\n{log.read_text()[-4000:]}"
        app_id = apps[0]["id"]

        def busy_executor() -> bool:
            assert job.poll() is None, f"the label job ended before an executor was killed:\n{log.read_text()[-4000:]}"
            for e in rest(ui, f"applications/{app_id}/executors") or []:
                if e["id"] != "driver" and e["activeTasks"] > 0 and e["rddBlocks"] > 0:
                    pid = executor_pid(app_id, e["id"])
                    if pid is not None:
                        os.kill(pid, signal.SIGKILL)
                        victim.update(id=e["id"], pid=pid, tasks=e["activeTasks"], blocks=e["rddBlocks"])
                        return True
            return False

        wait_for(busy_executor, 300, "an executor running a task and holding cached blocks", interval=0.05)
        rc = job.wait(600)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    out = log.read_text()
    assert rc == 0, f"the label job failed after executor {victim} was killed:\n{out[-6000:]}"
    return out, victim


@pytest.fixture(scope="module")
def cluster_features(cluster, cluster_root, cluster_labels):
    return _ok(cluster.submit([*FEATURES, *_sets(cluster_root)]), "esmm features")


def test_generate_job(cluster, local, spark, tmp_path):
    root = tmp_path / "lakehouse"
    out = _ok(cluster.submit([*GENERATE, *_sets(root)]), "esmm generate")
    _on_cluster(out, cluster.url)
    assert "generated 4,000 impressions over 2 day(s)" in out
    for table in RAW:
        assert assert_same_table(spark, root, local[0], table) > 0, table


def test_label_job(cluster, local, cluster_root, cluster_labels, spark):
    _on_cluster(cluster_labels[0], cluster.url)
    # Nothing lost or doubled: the tables equal the uninterrupted local run's.
    assert assert_same_table(spark, cluster_root, local[0], "labels") >= 3000
    assert assert_same_table(spark, cluster_root, local[0], "quarantine") > 0


def test_feature_job(cluster, local, cluster_root, cluster_features, spark):
    _on_cluster(cluster_features, cluster.url)
    assert assert_same_table(spark, cluster_root, local[0], "examples") >= 3000


def test_score_job(cluster, local, cluster_root, spark):
    local_root, model_id = local
    _copy_tables(local_root, cluster_root, ("registry",))  # the registry names the artifact's own directory
    out = _ok(cluster.submit(["score", "--date", D2, "--model", model_id, *_sets(cluster_root)]), "esmm score")
    _on_cluster(out, cluster.url)
    # The network's FLOAT outputs are compared to a few ulps: a row's float32 matmul can differ
    # in the last bit with the other rows of its Arrow batch, which follow the partitioning
    # (two executors here, two local cores there). Every other column, keys included, is exact.
    n = assert_same_table(spark, cluster_root, local_root, "scores", drop=SCORE_FLOATS)
    assert n >= 1500
    got, want = (_score_floats(spark, r) for r in (cluster_root, local_root))
    assert got.keys() == want.keys()
    assert all(got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-7) for k in want), [
        (k, got[k], want[k]) for k in want if got[k] != pytest.approx(want[k], rel=1e-6, abs=1e-7)
    ][:3]
    # The raw impressions are clean candidates: both runs quarantine nothing (compared all the same).
    assert assert_same_table(spark, cluster_root, local_root, "quarantine", where="source = 'score'") == 0


def test_label_job_survives_a_killed_executor(cluster_labels):
    out, victim = cluster_labels
    # Spark saw the executor go and re-ran what it had been doing (the tables are test_label_job's).
    assert f"Lost executor {victim['id']} " in out, out[-4000:]
    # (Spark 3.5 words it "failed because while it was being computed, its executor exited"
    # when the executor's exit is not blamed on the task, ExecutorLostFailure otherwise.)
    assert (
        "its executor exited" in out or "ExecutorLostFailure" in out
    ), f"no running task was lost with executor {victim}: the kill landed between tasks"
