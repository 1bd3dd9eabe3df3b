"""A standalone Spark cluster on this machine for tests, and spark-submit against it.

:class:`StandaloneCluster` starts a master and N workers, each its own JVM from
the installed pyspark (``bin/spark-class``), each worker with 1 core so that an
application gets N executors, one per worker. :meth:`StandaloneCluster.submit`
runs ``spark-submit`` the way the README's cluster section tells a user to: the
code packaged as a zip of ``esmm pipelines jobs conf`` passed with ``--py-files``,
``jobs/cli.py`` as the application, no ``PYTHONPATH`` pointing into a checkout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.io.session import cached_delta_jars

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("esmm", "pipelines", "jobs", "conf")  # the README's `zip -r esmm.zip esmm pipelines jobs conf`


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def package_code(dest: Path) -> Path:
    """``esmm.zip`` with the packages of the README's packaging step (no caches)."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for pkg in PACKAGES:
            for p in sorted((REPO / pkg).rglob("*")):
                if p.is_file() and "__pycache__" not in p.parts:
                    z.write(p, p.relative_to(REPO))
    return dest


def _daemon_env(log_dir: Path) -> dict[str, str]:
    # A cluster node has no checkout of this repository: nothing on PYTHONPATH, so
    # the driver and the executors' Python workers import the submitted zip only.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        SPARK_HOME=str(spark_home()),
        SPARK_LOG_DIR=str(log_dir),
        SPARK_WORKER_DIR=str(log_dir / "work"),
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
    )
    return env


@dataclass
class StandaloneCluster:
    """A master and ``workers`` 1-core workers; ``with`` it, or :meth:`start` / :meth:`stop`."""

    log_dir: Path
    ports: list[int]  # master, master UI, one UI port per worker
    workers: int = 2
    worker_memory: str = "1g"
    procs: list[subprocess.Popen] = field(default_factory=list)
    package: Path | None = None

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.ports[0]}"

    @property
    def env(self) -> dict[str, str]:
        return _daemon_env(self.log_dir)

    def _daemon(self, name: str, *args: str) -> Path:
        log = self.log_dir / f"{name}.log"
        with open(log, "w") as out:
            # Own process group: stop() also reaches the executors a worker forked.
            self.procs.append(
                subprocess.Popen(
                    [str(spark_home() / "bin" / "spark-class"), *args],
                    env=self.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        return log

    def start(self) -> "StandaloneCluster":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.package = package_code(self.log_dir / "esmm.zip")
        master = self._daemon(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.ports[0]),
            "--webui-port",
            str(self.ports[1]),
        )
        wait_for(lambda: "I have been elected leader" in master.read_text(), 120, "the standalone master")
        logs = [
            self._daemon(
                f"worker{i}",
                "org.apache.spark.deploy.worker.Worker",
                self.url,
                "--host",
                "127.0.0.1",
                "--cores",
                "1",
                "--memory",
                self.worker_memory,
                "--webui-port",
                str(self.ports[2 + i]),
            )
            for i in range(self.workers)
        ]
        wait_for(
            lambda: all("Successfully registered with master" in p.read_text() for p in logs),
            120,
            f"{self.workers} standalone workers to register",
        )
        return self

    def stop(self) -> None:
        for p in reversed(self.procs):  # workers (and their executors) first, then the master
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)

    def __enter__(self) -> "StandaloneCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def submit_cmd(self, argv: list[str], conf: dict[str, str] | None = None) -> list[str]:
        """The README's spark-submit line for ``jobs/cli.py <argv>`` on this cluster.

        ``--jars`` with the cached Delta jars stands in for the README's ``--packages``
        (tests run without network access); the rest is the README's form.
        """
        jars = cached_delta_jars()
        assert jars, "Delta jars missing: run `make setup` (scripts/setup.sh) first"
        settings = {
            "spark.executor.memory": "1g",
            "spark.sql.shuffle.partitions": "4",
            "spark.ui.showConsoleProgress": "false",
            **(conf or {}),
        }
        cmd = [
            str(spark_home() / "bin" / "spark-submit"),
            "--master",
            self.url,
            "--deploy-mode",
            "client",
            "--jars",
            ",".join(jars),
            "--py-files",
            str(self.package),
        ]
        for k, v in settings.items():
            cmd += ["--conf", f"{k}={v}"]
        return cmd + [str(REPO / "jobs" / "cli.py"), *argv]

    def submit(
        self, argv: list[str], timeout: float = 600, conf: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """Run the job to its end; spark-submit merges the Python driver's stderr into stdout."""
        return subprocess.run(
            self.submit_cmd(argv, conf), env=self.env, cwd=self.log_dir, capture_output=True, text=True, timeout=timeout
        )

    def submit_background(self, argv: list[str], log: Path, conf: dict[str, str] | None = None) -> subprocess.Popen:
        with open(log, "w") as out:
            # Own process group: a test that gives up can stop the JVM and its Python driver together.
            return subprocess.Popen(
                self.submit_cmd(argv, conf),
                env=self.env,
                cwd=self.log_dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


def rest(ui_port: int, path: str):
    """GET the driver's monitoring REST API (``/api/v1/...``); None while it is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/api/v1/{path}", timeout=5) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def executor_pid(app_id: str, executor_id: str) -> int | None:
    """The pid of the ``CoarseGrainedExecutorBackend`` JVM of one executor of ``app_id``."""
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if "org.apache.spark.executor.CoarseGrainedExecutorBackend" not in cmd:
            continue
        args = dict(zip(cmd, cmd[1:]))
        if args.get("--app-id") == app_id and args.get("--executor-id") == executor_id:
            return p.info["pid"]
    return None
