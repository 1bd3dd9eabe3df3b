"""``esmm score | nightly | report | demo``: scoring, the nightly pipeline and its report."""

from __future__ import annotations

import argparse
import sys
import time

from esmm.config.schema import Config
from jobs.commands import command, spark_for
from jobs.data_commands import GENERATE_SHORTCUTS, _generate_args, cmd_generate

# --------------------------------------------------------------------------- serving


def _date_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--date", required=True, help="run date yyyy-MM-dd (UTC)")


def _score_args(p: argparse.ArgumentParser) -> None:
    _date_arg(p)
    p.add_argument("--model", help="registry model id (default: the champion)")


@command("score", "score a day's candidates into serving/scores", _score_args)
def cmd_score(cfg: Config, args: argparse.Namespace) -> int:
    from pipelines.scoring import job as score
    from pipelines.scoring.model import resolve_model

    try:
        # The model first: an unknown id or a missing champion fails before a JVM starts.
        model = resolve_model(cfg, args.model)
        score.run(spark_for(cfg), cfg, args.date, model=model)
    except (score.ScoringInputError, FileNotFoundError) as e:  # FileNotFoundError: an unknown --model id
        print(f"esmm score: {e}", file=sys.stderr)
        return 2
    return 0


@command(
    "nightly",
    "labels, features, train, evaluate, gate, score, report for one date " "(exit 0 ok, 3 a step failed, 75 lock held)",
    _date_arg,
)
def cmd_nightly(cfg: Config, args: argparse.Namespace) -> int:
    from pipelines import nightly
    from pipelines.nightly.runner import EXIT_OK

    r = nightly.run(cfg, args.date, lambda: spark_for(cfg))
    if r.exit_code != EXIT_OK:
        what = f"step {r.failed_step!r} failed" if r.failed_step else "did not run"
        print(f"esmm nightly {args.date}: {what} (exit {r.exit_code}): {r.message}", file=sys.stderr)
    else:
        page = (r.outputs.get("report") or {}).get("path")
        print(
            f"esmm nightly {args.date}: ok (ran {', '.join(r.ran) or 'nothing'}; "
            f"already done: {', '.join(r.reused) or 'none'})" + (f"; report {page}" if page else "")
        )
    return r.exit_code


@command("report", "write the run report of a date (HTML + PNG)", _date_arg)
def cmd_report(cfg: Config, args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipelines.report import page as report

    data = report.collect(spark_for(cfg), cfg, args.date)
    page = report.render(data, Path(cfg.lakehouse.path("reports")) / args.date)
    print(page)
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    _generate_args(p)
    p.add_argument(
        "--nights", type=int, default=2, help="run the nightly pipeline for the last N generated dates (default 2)"
    )


@command(
    "demo",
    "generate a week of logs, run the nightly pipeline on its last dates, "
    "print the metric table and the report path",
    _demo_args,
    GENERATE_SHORTCUTS,
)
def cmd_demo(cfg: Config, args: argparse.Namespace) -> int:
    """The README's demo: conf/demo.yaml (applied first; --conf/--set still win) + the chain."""
    from pipelines import nightly
    from pipelines.nightly.runner import EXIT_OK
    from pipelines.report.page import text_table

    t0 = time.time()
    rc = cmd_generate(cfg, args)
    if rc:
        return rc
    spark = spark_for(cfg)
    dates = cfg.generate.dates[-max(1, args.nights) :]
    result = None
    for d in dates:
        print(f"--- esmm nightly --date {d}")
        result = nightly.run(cfg, d, lambda: spark)
        if result.exit_code != EXIT_OK:
            print(f"esmm demo: nightly {d} failed at step {result.failed_step!r}: {result.message}", file=sys.stderr)
            return result.exit_code
    ev = result.outputs.get("evaluate") or {}
    print(
        f"\n=== candidate against champion on {ev.get('eval_date')} "
        f"({', '.join(f'{k} {v}' for k, v in (ev.get('model_ids') or {}).items())})"
    )
    print(text_table(ev.get("metrics") or {}))
    print("gate:", (result.outputs.get("gate") or {}).get("decision"))
    print(f"\ndemo finished in {time.time() - t0:.0f}s; report: " f"{(result.outputs.get('report') or {}).get('path')}")
    return 0
