"""spark-submit against a real standalone Spark cluster (a master and a worker on
this machine): the job keeps the cluster's master and settings, and writes Delta."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.session import cached_delta_jars

REPO = Path(__file__).resolve().parents[1]


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def _wait_for(predicate, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory, free_port):
    """Start a standalone master and one 1-core worker; yield the master URL."""
    home = _spark_home()
    log_dir = tmp_path_factory.mktemp("cluster")
    env = dict(os.environ, SPARK_HOME=str(home), SPARK_LOG_DIR=str(log_dir),
               SPARK_WORKER_DIR=str(log_dir / "work"), PYSPARK_PYTHON=sys.executable)
    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    cls = str(home / "bin" / "spark-class")
    master_log = open(log_dir / "master.log", "w")
    worker_log = open(log_dir / "worker.log", "w")
    master = subprocess.Popen([cls, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(port), "--webui-port", str(free_port())],
                              env=env, stdout=master_log, stderr=subprocess.STDOUT)
    worker = None
    try:
        _wait_for(lambda: "I have been elected leader" in (log_dir / "master.log").read_text(), 60,
                  "the standalone master")
        worker = subprocess.Popen([cls, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
                                   "--cores", "1", "--memory", "1g", "--webui-port", str(free_port())],
                                  env=env, stdout=worker_log, stderr=subprocess.STDOUT)
        _wait_for(lambda: "Successfully registered with master" in (log_dir / "worker.log").read_text(), 60,
                  "the standalone worker")
        yield url, env
    finally:
        for p in (worker, master):
            if p is not None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        master_log.close()
        worker_log.close()


@pytest.mark.integration
@pytest.mark.slow
def test_generate_job_under_spark_submit_on_a_standalone_cluster(standalone_cluster, tmp_path, spark):
    url, env = standalone_cluster
    jars = cached_delta_jars()
    assert jars, "Delta jars missing: run `make setup` (scripts/setup.sh) first"
    root = tmp_path / "lakehouse"
    submit = str(_spark_home() / "bin" / "spark-submit")
    cmd = [submit, "--master", url, "--jars", ",".join(jars),
           "--conf", "spark.executor.memory=1g", "--conf", "spark.sql.shuffle.partitions=2",
           "--conf", "spark.app.name=esmm-cluster-test",
           str(REPO / "jobs" / "cli.py"), "generate",
           "--set", f"lakehouse.root={root}", "--days", "1", "--impressions-per-day", "2000",
           "--set", "generate.n_users=500", "--set", "generate.n_items=300"]
    env = dict(env, PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
               PYSPARK_DRIVER_PYTHON=sys.executable)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "generated 2,000 impressions" in proc.stdout
    # The job ran on the cluster, not on a local master it made up.
    # (spark-submit merges the Python driver's stderr into its stdout)
    assert f"esmm: spark master {url}" in proc.stdout + proc.stderr
    n = spark.read.format("delta").load(str(root / "raw" / "impressions")).select("impression_id").distinct().count()
    assert n == 2000
