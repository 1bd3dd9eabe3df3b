"""Shared fixtures: one session-scoped SparkSession (local[2], UI off, few shuffle
partitions, Delta configured, like delta-io's test base); tests never stop it."""

from __future__ import annotations

import contextlib
import os
import socket

import pytest

from esmm.config.loader import load_config
from esmm.config.schema import SparkConfig

# Tests talk to this machine only: bind Spark (and the standalone cluster) to loopback.
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
# Under `make test` two test processes share the cores (pytest-xdist): torch's OpenMP pool, sized
# to every core and spinning between ops, would fight the other process's JVM. A test that wants
# more threads says so (train.torch_threads).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def spark():
    from pipelines.io.session import get_spark

    cfg = SparkConfig(
        app_name="esmm-tests",
        master="local[2]",
        local_conf={
            "spark.sql.shuffle.partitions": "4",
            "spark.default.parallelism": "2",
            "spark.driver.memory": "3g",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.session.timeZone": "UTC",
            "spark.databricks.delta.snapshotPartitions": "2",
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            # Small tables: skip the broadcast threshold checks' extra jobs.
            "spark.sql.adaptive.enabled": "false",
        },
    )
    session = get_spark(cfg)
    session.sparkContext.setLogLevel("ERROR")
    yield session


@pytest.fixture
def make_cfg(tmp_path):
    """Build a Config whose lakehouse lives in this test's tmp folder."""

    def _make(*overrides: str):
        return load_config(overrides=[f"lakehouse.root={tmp_path / 'lakehouse'}", *overrides])

    return _make


@pytest.fixture(autouse=True)
def _no_cuda(monkeypatch):
    # Tests are CPU-only by design; keep torch from probing for a GPU.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("ESMM_TEST_CUDA", ""))


@pytest.fixture(scope="session")
def free_port():
    """``free_port()`` -> a TCP port on 127.0.0.1 that nothing listens on right now."""

    def _port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return _port


@pytest.fixture(scope="session")
def shuffle_partitions(spark):
    """``with shuffle_partitions(n): ...`` runs a block with n shuffle partitions, then
    restores the session's value (tiny tables: fewer empty tasks per query)."""

    @contextlib.contextmanager
    def _set(n: int):
        old = spark.conf.get("spark.sql.shuffle.partitions")
        spark.conf.set("spark.sql.shuffle.partitions", str(n))
        try:
            yield
        finally:
            spark.conf.set("spark.sql.shuffle.partitions", old)

    return _set
