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


@command("demo", "run the whole chain on generated logs")
def cmd_demo(cfg: Config, args: argparse.Namespace) -> int:
    rc = cmd_generate(cfg, args)
    if rc:
        return rc
    return cmd_summary(cfg, args)


# --------------------------------------------------------------------------- labels and features (issue 3)


def _dates_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--date", help="one UTC date yyyy-MM-dd")
    g.add_argument("--start", help="first date of an inclusive range (with --end)")
    p.add_argument("--end", help="last date of the range")


def _labels_args(p: argparse.ArgumentParser) -> None:
    _dates_args(p)
    p.add_argument("--as-of", dest="as_of",
                   help="count only events with ts <= this time: an ISO time (UTC) or a date "
                        "(= its end); default: the end of each labelled date")


def _dates(args: argparse.Namespace) -> list[str]:
    from esmm.config import date_range, parse_date

    if args.date:
        if args.end:
            raise ConfigError("--end goes with --start, not with --date")
        return [parse_date(args.date, "--date").isoformat()]
    if not args.end:
        raise ConfigError("--start needs --end")
    return date_range(args.start, args.end)


@command("labels", "build curated/labels (and curated/quarantine) for dates", _labels_args)
def cmd_labels(cfg: Config, args: argparse.Namespace) -> int:
    from pipelines import labels

    try:
        dates = _dates(args)
        as_of = labels.parse_as_of(args.as_of) if args.as_of else None
    except ConfigError as e:
        print(f"esmm labels: {e}", file=sys.stderr)
        return 2
    try:
        labels.run(_spark(cfg), cfg, dates, as_of)
    except labels.LabelGateError as e:
        print(f"esmm labels: {e}", file=sys.stderr)
        return 1
    return 0


@command("features", "build curated/examples from curated/labels for dates", _dates_args)
def cmd_features(cfg: Config, args: argparse.Namespace) -> int:
    from pipelines import features

    try:
        dates = _dates(args)
    except ConfigError as e:
        print(f"esmm features: {e}", file=sys.stderr)
        return 2
    try:
        features.run(_spark(cfg), cfg, dates)
    except FileNotFoundError as e:
        print(f"esmm features: {e}", file=sys.stderr)
        return 1
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


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
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
