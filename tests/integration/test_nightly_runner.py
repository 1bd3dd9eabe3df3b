"""The nightly runner's bookkeeping with stand-in steps: date plan, runs table, retry, lock.

The real steps are exercised end to end in tests/test_nightly_e2e.py; here each step
is a small function so that failure, retry and skip paths are exact and fast.
"""

from __future__ import annotations

import json
import os
import socket

import deltalake

from esmm.config.schema import LabelConfig, NightlyConfig
from pipelines.nightly.plan import label_horizon_days, plan_dates
from pipelines.nightly.runner import EXIT_LOCK_HELD, EXIT_OK, EXIT_STEP_FAILED, SkipStep, Step, lock_path, run_nightly
from pipelines.nightly.runs import RunsTable

DAYS = [f"2026-11-{d:02d}" for d in range(1, 15)]


def test_label_horizon_counts_click_attribution_and_lateness():
    assert label_horizon_days(LabelConfig()) == 9  # 1d + 7d + 1d
    assert label_horizon_days(LabelConfig(click_window="1h", attribution_window="1h", max_lateness="1h")) == 1
    assert label_horizon_days(LabelConfig(click_window="1d", attribution_window="1d", max_lateness="0s")) == 2


def test_plan_mature_default_windows():
    p = plan_dates("2026-11-14", DAYS, LabelConfig(), NightlyConfig(train_days=3, score_days=2))
    assert p.refresh_dates == [f"2026-11-{d:02d}" for d in range(5, 15)]
    assert (p.eval_date, p.eval_mature) == ("2026-11-05", True)
    assert p.train_dates == ["2026-11-02", "2026-11-03", "2026-11-04"]
    assert p.score_dates == ["2026-11-13", "2026-11-14"]


def test_plan_without_a_mature_day_trains_nothing():
    p = plan_dates("2026-11-05", DAYS, LabelConfig(), NightlyConfig())
    assert p.refresh_dates == DAYS[:5]
    assert (p.eval_date, p.train_dates) == (None, [])


def test_plan_latest_evaluates_on_the_run_date_and_ignores_future_days():
    p = plan_dates("2026-11-03", DAYS, LabelConfig(), NightlyConfig(eval_day="latest", train_days=7))
    assert (p.eval_date, p.eval_mature) == ("2026-11-03", False)
    assert p.train_dates == ["2026-11-01", "2026-11-02"]
    assert p.refresh_dates == ["2026-11-01", "2026-11-02", "2026-11-03"]


class Recorder:
    """Stand-in steps: record calls, fail on demand, pass outputs along."""

    def __init__(self):
        self.calls: list[str] = []
        self.fail: set[str] = set()

    def steps(self):
        def make(name):
            def run(ctx):
                self.calls.append(name)
                if name in self.fail:
                    raise RuntimeError(f"{name} broke")
                if name == "gate":
                    raise SkipStep("no champion to compare")
                if name == "score":
                    assert ctx.outputs["train"] == {"model_id": "m1", "summary": "trained m1"}
                    assert ctx.outputs["gate"] == {"skipped": "no champion to compare"}
                return {"model_id": "m1", "summary": "trained m1"} if name == "train" else {}

            return Step(name, run)

        return [make(n) for n in ("labels", "train", "gate", "score")]


def _rows(cfg):
    return [(r["run_date"], r["step"], r["attempt"], r["status"]) for r in RunsTable(cfg.lakehouse.path("runs")).rows()]


def test_fail_retry_and_idempotent_rerun(spark, make_cfg):
    cfg = make_cfg()
    rec = Recorder()
    rec.fail = {"score"}
    r1 = run_nightly(cfg, "2026-11-14", lambda: spark, rec.steps(), available=DAYS, log=lambda m: None)
    assert (r1.exit_code, r1.failed_step) == (EXIT_STEP_FAILED, "score")
    assert "RuntimeError: score broke" in r1.message
    assert rec.calls == ["labels", "train", "gate", "score"]
    assert not lock_path(cfg).exists()  # released after a failure too
    failed = RunsTable(cfg.lakehouse.path("runs")).history("2026-11-14")["score"]
    assert failed["message"] == "RuntimeError: score broke" and failed["finished_at"] is not None

    rec.fail, rec.calls = set(), []
    r2 = run_nightly(cfg, "2026-11-14", lambda: spark, rec.steps(), available=DAYS, log=lambda m: None)
    assert r2.exit_code == EXIT_OK and rec.calls == ["score"]
    assert r2.reused == ["labels", "train", "gate"] and r2.ran == ["score"]
    assert _rows(cfg) == [
        ("2026-11-14", "gate", 1, "skipped"),
        ("2026-11-14", "labels", 1, "succeeded"),
        ("2026-11-14", "score", 1, "failed"),
        ("2026-11-14", "score", 2, "succeeded"),
        ("2026-11-14", "train", 1, "succeeded"),
    ]
    train = RunsTable(cfg.lakehouse.path("runs")).history("2026-11-14")["train"]
    assert train["outputs"]["model_id"] == "m1" and train["run_id"] == r1.run_id

    version = deltalake.DeltaTable(cfg.lakehouse.path("runs")).version()
    rec.calls = []

    def no_spark():
        raise AssertionError("a complete date needs no Spark")

    r3 = run_nightly(cfg, "2026-11-14", no_spark, rec.steps(), available=DAYS, log=lambda m: None)
    assert r3.exit_code == EXIT_OK and rec.calls == [] and r3.ran == []
    assert r3.outputs["train"]["model_id"] == "m1"
    assert deltalake.DeltaTable(cfg.lakehouse.path("runs")).version() == version

    # Another date is independent.
    r4 = run_nightly(cfg, "2026-11-13", lambda: spark, rec.steps(), available=DAYS, log=lambda m: None)
    assert r4.exit_code == EXIT_OK and rec.calls == ["labels", "train", "gate", "score"]


def test_held_lock_refuses_before_starting_spark(make_cfg):
    cfg = make_cfg()
    path = lock_path(cfg)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"run_id": "other", "pid": os.getpid(), "host": socket.gethostname()}))

    def no_spark():
        raise AssertionError("Spark must not start while the lock is held")

    r = run_nightly(cfg, "2026-11-14", no_spark, [], available=DAYS, log=lambda m: None)
    assert r.exit_code == EXIT_LOCK_HELD and "held by run other" in r.message
    assert json.loads(path.read_text())["run_id"] == "other"


KILLED_CHILD = """
import time
from esmm.config.loader import load_config
from pipelines.nightly.runner import Step, run_nightly

def hang(ctx):
    open({marker!r}, "w").close()
    time.sleep(600)

cfg = load_config(overrides=["lakehouse.root={root}"])
run_nightly(cfg, "2026-11-14", lambda: None, [Step("labels", lambda ctx: {{}}), Step("train", hang)],
            run_id="dead-run", available={days!r}, log=lambda m: None)
"""


def test_a_step_left_running_by_a_killed_run_is_retried(spark, make_cfg, tmp_path):
    """A real nightly process, SIGKILLed in its train step (no finally runs): the next run
    takes over its lock, marks the step failed, and resumes from it."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    cfg = make_cfg()
    marker = tmp_path / "in-train"
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
    code = KILLED_CHILD.format(marker=str(marker), root=cfg.lakehouse.root, days=DAYS)
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=repo, env=env, stdin=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 300
    while not marker.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), f"the child nightly ended (exit {child.poll()}) before its train step"
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert json.loads(lock_path(cfg).read_text())["pid"] == child.pid  # left behind by the dead run

    rec = Recorder()
    r = run_nightly(cfg, "2026-11-14", lambda: spark, rec.steps(), available=DAYS, log=lambda m: None)
    assert r.exit_code == EXIT_OK and rec.calls == ["train", "gate", "score"]
    assert r.reused == ["labels"] and not lock_path(cfg).exists()
    rows = {
        (x.step, x.attempt): x  # Spark reads what delta-rs wrote
        for x in spark.read.format("delta").load(cfg.lakehouse.path("runs")).collect()
    }
    assert rows[("train", 1)].status == "failed" and "abandoned" in rows[("train", 1)].message
    assert rows[("train", 1)].run_id == "dead-run"
    assert rows[("train", 2)].status == "succeeded" and rows[("train", 2)].run_id == r.run_id
    assert rows[("labels", 1)].status == "succeeded" and ("labels", 2) not in rows
