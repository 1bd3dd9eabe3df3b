"""The ``esmm`` command: one sub-command per job.

Every sub-command takes ``--conf FILE`` (repeatable, later files win) and
``--set key.path=value`` (repeatable, wins over files). The configuration is
built and validated once, here, before any Spark or torch work starts.

Under spark-submit run this file itself::

    spark-submit --packages io.delta:delta-spark_2.12:3.3.3 jobs/cli.py generate --set ...
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

from esmm.config import Config, ConfigError, load_config

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {}


def command(name: str, help_: str, add_args: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    def deco(fn: Callable[[Config, argparse.Namespace], int]):
        COMMANDS[name] = (help_, add_args, fn)
        return fn
    return deco


def _spark(cfg: Config):
    from pipelines.session import get_spark

    return get_spark(cfg.spark)


def _print_df(df, n: int = 50) -> None:
    pdf = df.limit(n).toPandas()
    print(pdf.to_string(index=False))


# --------------------------------------------------------------------------- generate


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--days", type=int, help="shortcut for --set generate.days=N")
    p.add_argument("--impressions-per-day", type=int, help="shortcut for generate.impressions_per_day")
    p.add_argument("--seed", type=int, help="shortcut for generate.seed")
    p.add_argument("--start-date", help="shortcut for generate.start_date")


@command("generate", "write synthetic raw logs and sim/truth", _generate_args)
def cmd_generate(cfg: Config, args: argparse.Namespace) -> int:
    from pipelines import generate

    spark = _spark(cfg)
    t0 = time.time()
    counts = generate.run(spark, cfg)
    secs = time.time() - t0
    n = cfg.generate.days * cfg.generate.impressions_per_day
    print(f"generated {n:,} impressions over {cfg.generate.days} day(s) in {secs:.1f}s "
          f"({n / secs:,.0f} impressions/s); rows written: "
          + ", ".join(f"{k}={v:,}" for k, v in counts.items()))
    return 0


@command("summary", "print per-day counts of the raw tables")
def cmd_summary(cfg: Config, args: argparse.Namespace) -> int:
    from pipelines.stats import raw_daily_counts

    _print_df(raw_daily_counts(_spark(cfg), cfg), n=1000)
    return 0


# --------------------------------------------------------------------------- serving (issue 5)


def _date_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--date", required=True, help="run date yyyy-MM-dd (UTC)")


def _score_args(p: argparse.ArgumentParser) -> None:
    _date_arg(p)
    p.add_argument("--model", help="registry model id (default: the champion)")


@command("score", "score a day's candidates into serving/scores", _score_args)
def cmd_score(cfg: Config, args: argparse.Namespace) -> int:
    from pipelines import score

    try:
        score.run(_spark(cfg), cfg, args.date, model_id=args.model)
    except score.ScoringInputError as e:
        print(f"esmm score: {e}", file=sys.stderr)
        return 2
    return 0


@command("nightly", "labels, features, train, evaluate, gate, score, report for one date "
                    "(exit 0 ok, 3 a step failed, 75 lock held)", _date_arg)
def cmd_nightly(cfg: Config, args: argparse.Namespace) -> int:
    from pipelines.nightly import EXIT_OK, run_nightly

    r = run_nightly(cfg, args.date, lambda: _spark(cfg))
    if r.exit_code != EXIT_OK:
        what = f"step {r.failed_step!r} failed" if r.failed_step else "did not run"
        print(f"esmm nightly {args.date}: {what} (exit {r.exit_code}): {r.message}", file=sys.stderr)
    else:
        page = (r.outputs.get("report") or {}).get("path")
        print(f"esmm nightly {args.date}: ok (ran {', '.join(r.ran) or 'nothing'}; "
              f"already done: {', '.join(r.reused) or 'none'})" + (f"; report {page}" if page else ""))
    return r.exit_code


@command("report", "write the run report of a date (HTML + PNG)", _date_arg)
def cmd_report(cfg: Config, args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipelines import report

    data = report.collect(_spark(cfg), cfg, args.date)
    page = report.render(data, Path(cfg.lakehouse.path("reports")) / args.date)
    print(page)
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    _generate_args(p)
    p.add_argument("--nights", type=int, default=2,
                   help="run the nightly pipeline for the last N generated dates (default 2)")


@command("demo", "generate a week of logs, run the nightly pipeline on its last dates, "
                 "print the metric table and the report path", _demo_args)
def cmd_demo(cfg: Config, args: argparse.Namespace) -> int:
    """The README's demo: conf/demo.yaml (applied first; --conf/--set still win) + the chain."""
    from pipelines.nightly import EXIT_OK, run_nightly
    from pipelines.report import text_table

    t0 = time.time()
    rc = cmd_generate(cfg, args)
    if rc:
        return rc
    spark = _spark(cfg)
    dates = cfg.generate.dates[-max(1, args.nights):]
    result = None
    for d in dates:
        print(f"--- esmm nightly --date {d}")
        result = run_nightly(cfg, d, lambda: spark)
        if result.exit_code != EXIT_OK:
            print(f"esmm demo: nightly {d} failed at step {result.failed_step!r}: {result.message}",
                  file=sys.stderr)
            return result.exit_code
    ev = result.outputs.get("evaluate") or {}
    print(f"\n=== candidate against champion on {ev.get('eval_date')} "
          f"({', '.join(f'{k} {v}' for k, v in (ev.get('model_ids') or {}).items())})")
    print(text_table(ev.get("metrics") or {}))
    print("gate:", (result.outputs.get("gate") or {}).get("decision"))
    print(f"\ndemo finished in {time.time() - t0:.0f}s; report: "
          f"{(result.outputs.get('report') or {}).get('path')}")
    return 0


# --------------------------------------------------------------------------- main


_SHORTCUTS = {
    "days": "generate.days",
    "impressions_per_day": "generate.impressions_per_day",
    "seed": "generate.seed",
    "start_date": "generate.start_date",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esmm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, add_args, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        p.add_argument("--conf", action="append", default=[], metavar="FILE",
                       help="YAML configuration file (repeatable; later files win)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                       help="override one key, e.g. --set generate.days=3 (repeatable)")
        add_args(p)
    return parser


DEMO_CONF = Path(__file__).resolve().parents[1] / "conf" / "demo.yaml"


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    if args.command == "demo":
        args.conf = [str(DEMO_CONF), *args.conf]
    for attr, key in _SHORTCUTS.items():
        v = getattr(args, attr, None)
        if v is not None:
            overrides.append(f"{key}={v}")
    return load_config(args.conf, overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as e:
        print(f"esmm {args.command}: configuration error: {e}", file=sys.stderr)
        return 2
    _, _, fn = COMMANDS[args.command]
    return fn(cfg, args)


if __name__ == "__main__":
    sys.exit(main())
