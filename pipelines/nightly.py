"""The nightly pipeline: the one command a scheduler calls, ``esmm nightly --date D``.

Steps, in order (each a library call, none shells out to the CLI)::

    labels    refresh curated/labels for the dates whose labels can still change
    features  rebuild curated/examples for the same dates
    train     train cfg.model on the trailing cfg.nightly.train_days before the eval day
    evaluate  candidate and champion on the evaluation day (same rows, same metrics)
    gate      promote the candidate if it passes (the first model always does)
    score     score the candidates of the last cfg.nightly.score_days days with the champion
    report    write the run report (HTML + PNG charts) under reports/<D>/

Dates, for run date ``D`` (``H`` = ceil((click_window + attribution_window +
max_lateness) / 1 day), 9 days by default): a day ``d`` has final labels once
every click and conversion it can get has arrived, i.e. ``d <= D - H``. So the
label refresh covers ``[D - H, D]`` (``D - H`` just became final), the newest
mature day is ``D - H`` (``nightly.eval_day = mature``), and the candidate trains
on the ``train_days`` days before it. With ``calibration.enabled`` the mature day
before the evaluation day is the calibration day: held out of training (the
window is the ``train_days`` days before it), the maps are fitted on it, and the
gate judges the calibrated scores on the evaluation day, never on the day the
maps were fitted. ``nightly.eval_day = latest`` evaluates on
``D`` itself with whatever labels exist: only for demos on short logs, and the
report says the labels are immature.

Bookkeeping: every step's attempt is a row of the runs table
(:mod:`pipelines.runs`). A re-run of the same date skips the steps that
succeeded or were skipped, retries the failed one and continues; it changes no
table when everything already succeeded. Only one run at a time: the
:class:`esmm.lock.FileLock` is taken before Spark starts and heart-beaten
between steps.

Exit codes (:data:`EXIT_CODES`): 0 ok, 2 configuration error, 3 a step failed
(named on stderr and in the runs table), 75 the lock is held by another live
run (EX_TEMPFAIL: retry later).
"""
from __future__ import annotations

import datetime as dt
import math
import re
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from esmm.config import Config, LabelConfig, NightlyConfig, parse_date, parse_duration
from esmm.lock import FileLock, LockHeld

EXIT_OK, EXIT_CONFIG, EXIT_STEP_FAILED, EXIT_LOCK_HELD = 0, 2, 3, 75
EXIT_CODES = {
    EXIT_OK: "all steps succeeded or were skipped",
    EXIT_CONFIG: "configuration error (nothing ran)",
    EXIT_STEP_FAILED: "a step failed; the message names it; re-run the same date to retry it",
    EXIT_LOCK_HELD: "another run holds the lock; nothing ran; retry later",
}
STEPS = ("labels", "features", "train", "evaluate", "gate", "score", "report")


class SkipStep(Exception):
    """Raised by a step that has nothing to do tonight; recorded as ``skipped`` with the reason."""


# --------------------------------------------------------------------------- date plan


def _days(d: str, n: int) -> str:
    return (parse_date(d) + dt.timedelta(days=n)).isoformat()


def label_horizon_days(labels: LabelConfig) -> int:
    """Days after which an impression day's labels can no longer change (``H``)."""
    secs = sum(parse_duration(getattr(labels, k), k)
               for k in ("click_window", "attribution_window", "max_lateness"))
    return math.ceil(secs / 86400)


@dataclass(frozen=True)
class NightlyPlan:
    """Which dates each step works on, for run date ``run_date``."""

    run_date: str
    refresh_dates: list[str]  # labels + features
    eval_date: Optional[str]  # None: no usable evaluation day yet
    eval_mature: bool  # False when eval_day = latest (labels still open)
    train_dates: list[str]
    score_dates: list[str]
    calibration_date: Optional[str] = None  # None: no calibration (disabled, or no mature day)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan_dates(run_date: str, available: list[str], labels: LabelConfig,
               nightly: NightlyConfig, calibrate: bool = False) -> NightlyPlan:
    """Pure date arithmetic (see the module docstring). ``available``: days with impressions;
    ``calibrate``: hold out a calibration day (``calibration.enabled``)."""
    parse_date(run_date, "--date")
    avail = sorted(d for d in set(available) if d <= run_date)
    h = label_horizon_days(labels)
    refresh = [d for d in avail if d >= _days(run_date, -h)]
    if nightly.eval_day == "latest":
        eval_date, mature = (run_date if run_date in avail else None), False
    else:
        eligible = [d for d in avail if d <= _days(run_date, -h)]
        eval_date, mature = (eligible[-1] if eligible else None), True
    train, cal_date = [], None
    if eval_date is not None:
        before = [d for d in avail if d < eval_date]
        # Every day before a mature day is mature; keep at least one day to train on.
        if calibrate and mature and len(before) >= 2:
            cal_date = before[-1]
        end = cal_date or eval_date
        train = [d for d in avail if _days(end, -nightly.train_days) <= d < end]
    score = [_days(run_date, -i) for i in range(nightly.score_days - 1, -1, -1)]
    return NightlyPlan(run_date, refresh, eval_date, mature, train, score, cal_date)


_DT_IN_PATH = re.compile(r"/dt=(\d{4}-\d{2}-\d{2})/")


def available_dates(spark, cfg: Config) -> list[str]:
    """Arrival days present in the raw impressions (from file paths: no data is read)."""
    from pipelines.delta_io import read_raw

    df = read_raw(spark, cfg, "impressions")
    found = {m.group(1) for f in df.inputFiles() for m in [_DT_IN_PATH.search(f)] if m}
    if not found:  # not laid out by dt= folders: read the column
        found = {r[0] for r in df.select("dt").distinct().collect()}
    return sorted(found)


# --------------------------------------------------------------------------- runner


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
        from esmm.config import ConfigError

        raise ConfigError(f"nightly.lock_path: the runs table {runs} is on an object store, where an "
                          f"O_EXCL lock file cannot be created; set nightly.lock_path to a path on a "
                          f"filesystem every scheduler host shares")
    return Path(runs + ".lock")


def run_nightly(cfg: Config, run_date: str, get_spark: Callable[[], Any],
                steps: Optional[list[Step]] = None, run_id: Optional[str] = None,
                options: Optional[dict[str, dict[str, Any]]] = None,
                available: Optional[list[str]] = None,
                log: Callable[[str], None] = print) -> NightlyResult:
    """Run (or resume) the nightly pipeline for ``run_date``; never raises for a step failure.

    ``get_spark`` is called only once the lock is held. ``steps`` defaults to
    :func:`default_steps`. ``options`` passes per-step keyword hooks (the tests'
    fault injection: ``{"score": {"fail_after_batches": 1}}``). ``available``:
    the days with impressions (default: read from the raw impressions table).
    """
    from pipelines.runs import DONE, RunsTable

    parse_date(run_date, "--date")
    run_id = run_id or f"{run_date}-{uuid.uuid4().hex[:8]}"
    lock = FileLock(lock_path(cfg), run_id, parse_duration(cfg.nightly.lock_stale_after))
    try:
        lock.acquire()
    except LockHeld as e:
        log(f"nightly {run_date}: {e}")
        return NightlyResult(run_date, run_id, EXIT_LOCK_HELD, message=str(e))
    if lock.took_over:
        log(f"nightly {run_date}: took over the stale lock of run {lock.took_over.get('run_id')} "
            f"(pid {lock.took_over.get('pid')} on {lock.took_over.get('host')})")
    result = NightlyResult(run_date, run_id, EXIT_OK)
    steps = steps if steps is not None else default_steps()
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
        plan = plan_dates(run_date, available, cfg.labels, cfg.nightly, cfg.calibration.enabled)
        ctx = NightlyContext(spark, cfg, run_date, run_id, plan, options=dict(options or {}), log=log)
        log(f"nightly {run_date} (run {run_id}): plan {plan.as_dict()}")
        for step in steps:
            prev = history.get(step.name)
            if prev is not None and prev["status"] in DONE:
                ctx.outputs[step.name] = prev["outputs"]
                result.reused.append(step.name)
                log(f"  {step.name:<9} {prev['status']} earlier (attempt {prev['attempt']}, "
                    f"run {prev['run_id']}): not re-run")
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


def default_steps() -> list[Step]:
    from pipelines import nightly_steps as s

    return [Step("labels", s.labels), Step("features", s.features), Step("train", s.train),
            Step("evaluate", s.evaluate), Step("gate", s.gate), Step("score", s.score),
            Step("report", s.report)]
