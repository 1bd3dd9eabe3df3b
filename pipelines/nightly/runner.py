"""The nightly runner: the lock, the runs table and the run loop over the steps it is given.

``esmm nightly --date D`` runs :func:`pipelines.nightly.run`, which passes the
default steps (:mod:`pipelines.nightly.steps`) to :func:`run_nightly`; this module
imports no step. The dates each step works on come from
:func:`pipelines.nightly.plan.plan_dates`.

Bookkeeping: every step's attempt is a row of the runs table
(:mod:`pipelines.nightly.runs`). A re-run of the same date skips the steps that
succeeded or were skipped, retries the failed one and continues; it changes no
table when everything already succeeded. Only one run at a time: the
:class:`pipelines.nightly.lock.FileLock` is taken before Spark starts and heart-beaten
between steps.

Exit codes (:data:`EXIT_CODES`): 0 ok, 2 configuration error, 3 a step failed
(named on stderr and in the runs table), 75 the lock is held by another live
run (EX_TEMPFAIL: retry later).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from esmm.config.schema import Config
from esmm.util.timeutil import new_run_id, parse_date, parse_duration
from pipelines.nightly.lock import FileLock, LockHeld
from pipelines.nightly.plan import NightlyPlan, available_dates, plan_dates

EXIT_OK, EXIT_CONFIG, EXIT_STEP_FAILED, EXIT_LOCK_HELD = 0, 2, 3, 75
EXIT_CODES = {
    EXIT_OK: "all steps succeeded or were skipped",
    EXIT_CONFIG: "configuration error (nothing ran)",
    EXIT_STEP_FAILED: "a step failed; the message names it; re-run the same date to retry it",
    EXIT_LOCK_HELD: "another run holds the lock; nothing ran; retry later",
}


class SkipStep(Exception):
    """Raised by a step that has nothing to do tonight; recorded as ``skipped`` with the reason."""


@dataclass
class NightlyContext:
    """What a step gets: the session, the config, the plan and the earlier steps' outputs."""

    spark: Any
    cfg: Config
    run_date: str
    run_id: str
    plan: NightlyPlan
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-step test hooks
    log: Callable[[str], None] = print


@dataclass
class Step:
    name: str
    run: Callable[[NightlyContext], dict[str, Any]]  # returns JSON-able outputs


@dataclass
class NightlyResult:
    run_date: str
    run_id: str
    exit_code: int
    failed_step: Optional[str] = None
    message: str = ""
    ran: list[str] = field(default_factory=list)  # steps executed by this invocation
    reused: list[str] = field(default_factory=list)  # steps already done by an earlier run
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)


def lock_path(cfg: Config) -> Path:
    """``nightly.lock_path``, else ``<runs table>.lock`` when the lakehouse is a local path."""
    if cfg.nightly.lock_path:
        return Path(cfg.nightly.lock_path).expanduser()
    runs = cfg.lakehouse.path("runs")
    if "://" in runs:
        from esmm.config.errors import ConfigError

        raise ConfigError(
            f"nightly.lock_path: the runs table {runs} is on an object store, where an "
            f"O_EXCL lock file cannot be created; set nightly.lock_path to a path on a "
            f"filesystem every scheduler host shares"
        )
    return Path(runs + ".lock")


def run_nightly(
    cfg: Config,
    run_date: str,
    get_spark: Callable[[], Any],
    steps: list[Step],
    run_id: Optional[str] = None,
    options: Optional[dict[str, dict[str, Any]]] = None,
    available: Optional[list[str]] = None,
    log: Callable[[str], None] = print,
) -> NightlyResult:
    """Run (or resume) the nightly pipeline for ``run_date``; never raises for a step failure.

    ``get_spark`` is called only once the lock is held. ``steps``: the steps in
    order (:func:`pipelines.nightly.steps.default_steps` for the real night). ``options`` passes per-step keyword hooks (the tests'
    fault injection: ``{"score": {"fail_after_batches": 1}}``). ``available``:
    the days with impressions (default: read from the raw impressions table).
    """
    from pipelines.nightly.runs import DONE, RunsTable

    parse_date(run_date, "--date")
    run_id = run_id or new_run_id(f"nightly-{run_date}")
    lock = FileLock(lock_path(cfg), run_id, parse_duration(cfg.nightly.lock_stale_after))
    try:
        lock.acquire()
    except LockHeld as e:
        log(f"nightly {run_date}: {e}")
        return NightlyResult(run_date, run_id, EXIT_LOCK_HELD, message=str(e))
    if lock.took_over:
        log(
            f"nightly {run_date}: took over the stale lock of run {lock.took_over.get('run_id')} "
            f"(pid {lock.took_over.get('pid')} on {lock.took_over.get('host')})"
        )
    result = NightlyResult(run_date, run_id, EXIT_OK)
    try:
        runs = RunsTable(cfg.lakehouse.path("runs"))
        runs.ensure()
        abandoned = runs.abandon_running(run_date, run_id)
        if abandoned:
            log(f"nightly {run_date}: marked {abandoned} step(s) left running by a dead run as failed")
        history = runs.history(run_date)
        if all(history.get(s.name, {}).get("status") in DONE for s in steps):
            # A complete date: answer from the runs table alone, without starting Spark.
            result.reused = [s.name for s in steps]
            result.outputs = {s.name: history[s.name]["outputs"] for s in steps}
            log(f"nightly {run_date}: every step already done; nothing to do")
            return result
        spark = get_spark()
        if available is None:
            available = available_dates(spark, cfg)
        plan = plan_dates(run_date, available, cfg.labels, cfg.nightly, cfg.calibration.enabled, cfg.calibration.days)
        ctx = NightlyContext(spark, cfg, run_date, run_id, plan, options=dict(options or {}), log=log)
        log(f"nightly {run_date} (run {run_id}): plan {plan.as_dict()}")
        for step in steps:
            prev = history.get(step.name)
            if prev is not None and prev["status"] in DONE:
                ctx.outputs[step.name] = prev["outputs"]
                result.reused.append(step.name)
                log(
                    f"  {step.name:<9} {prev['status']} earlier (attempt {prev['attempt']}, "
                    f"run {prev['run_id']}): not re-run"
                )
                continue
            lock.heartbeat()
            attempt = (prev["attempt"] + 1) if prev is not None else 1
            started = runs.start(run_date, step.name, attempt, run_id)
            t0 = time.time()
            try:
                out = step.run(ctx) or {}
            except SkipStep as s:
                ctx.outputs[step.name] = {"skipped": str(s)}
                runs.finish(started, "skipped", message=str(s), outputs=ctx.outputs[step.name])
                result.ran.append(step.name)
                log(f"  {step.name:<9} skipped: {s}")
                continue
            except Exception as e:  # noqa: BLE001 - any failure is recorded, then reported
                msg = f"{type(e).__name__}: {e}"
                log(f"  {step.name:<9} FAILED after {time.time() - t0:.1f}s (attempt {attempt}): {msg}")
                log(traceback.format_exc())
                runs.finish(started, "failed", message=msg[:2000])
                result.exit_code, result.failed_step, result.message = EXIT_STEP_FAILED, step.name, msg
                result.ran.append(step.name)
                break
            ctx.outputs[step.name] = out
            summary = out.get("summary", "")
            runs.finish(started, "succeeded", message=summary or None, outputs=out)
            result.ran.append(step.name)
            log(f"  {step.name:<9} succeeded in {time.time() - t0:.1f}s {summary}")
        result.outputs = ctx.outputs
    finally:
        lock.release()
    return result
