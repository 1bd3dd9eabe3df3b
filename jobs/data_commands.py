"""``esmm generate | summary | labels | features | ingest``: the data jobs."""

from __future__ import annotations

import argparse
import sys
import time

from esmm.config.errors import ConfigError
from esmm.config.schema import Config
from jobs.commands import command, print_df, spark_for

# --------------------------------------------------------------------------- generate


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--days", type=int, help="shortcut for --set generate.days=N")
    p.add_argument("--impressions-per-day", type=int, help="shortcut for generate.impressions_per_day")
    p.add_argument("--seed", type=int, help="shortcut for generate.seed")
    p.add_argument("--start-date", help="shortcut for generate.start_date")


GENERATE_SHORTCUTS = {
    "days": "generate.days",
    "impressions_per_day": "generate.impressions_per_day",
    "seed": "generate.seed",
    "start_date": "generate.start_date",
}


@command("generate", "write synthetic raw logs and sim/truth", _generate_args, GENERATE_SHORTCUTS)
def cmd_generate(cfg: Config, args: argparse.Namespace) -> int:
    from pipelines.sim import generator as generate

    spark = spark_for(cfg)
    t0 = time.time()
    counts = generate.run(spark, cfg)
    secs = time.time() - t0
    n = cfg.generate.days * cfg.generate.impressions_per_day
    print(
        f"generated {n:,} impressions over {cfg.generate.days} day(s) in {secs:.1f}s "
        f"({n / secs:,.0f} impressions/s); rows written: " + ", ".join(f"{k}={v:,}" for k, v in counts.items())
    )
    return 0


@command("summary", "print per-day counts of the raw tables")
def cmd_summary(cfg: Config, args: argparse.Namespace) -> int:
    from pipelines.report.stats import raw_daily_counts

    print_df(raw_daily_counts(spark_for(cfg), cfg), n=1000)
    return 0


# --------------------------------------------------------------------------- labels and features


def _dates_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--date", help="one UTC date yyyy-MM-dd")
    g.add_argument("--start", help="first date of an inclusive range (with --end)")
    p.add_argument("--end", help="last date of the range")


def _labels_args(p: argparse.ArgumentParser) -> None:
    _dates_args(p)
    p.add_argument(
        "--as-of",
        dest="as_of",
        help="count only events with ts <= this time: an ISO time (UTC) or a date "
        "(= its end); default: the end of each labelled date",
    )


def _dates(args: argparse.Namespace) -> list[str]:
    from esmm.util.timeutil import date_range, parse_date

    if args.date:
        if args.end:
            raise ConfigError("--end goes with --start, not with --date")
        return [parse_date(args.date, "--date").isoformat()]
    if not args.end:
        raise ConfigError("--start needs --end")
    return date_range(args.start, args.end)


@command("labels", "build curated/labels (and curated/quarantine) for dates", _labels_args)
def cmd_labels(cfg: Config, args: argparse.Namespace) -> int:
    from esmm.util.timeutil import parse_as_of
    from pipelines.labels import job as labels

    try:
        dates = _dates(args)
        as_of = parse_as_of(args.as_of) if args.as_of else None
    except ConfigError as e:
        print(f"esmm labels: {e}", file=sys.stderr)
        return 2
    try:
        labels.run(spark_for(cfg), cfg, dates, as_of)
    except labels.LabelGateError as e:
        print(f"esmm labels: {e}", file=sys.stderr)
        return 1
    return 0


@command("features", "build curated/examples from curated/labels for dates", _dates_args)
def cmd_features(cfg: Config, args: argparse.Namespace) -> int:
    from pipelines.features import job as features

    try:
        dates = _dates(args)
    except ConfigError as e:
        print(f"esmm features: {e}", file=sys.stderr)
        return 2
    try:
        features.run(spark_for(cfg), cfg, dates)
    except FileNotFoundError as e:
        print(f"esmm features: {e}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- Ali-CCP


def _ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "layout",
        choices=["aliccp", "aliccp-csv", "aliccp-paddle"],
        help="aliccp: the raw release (--skeleton, --common, --split); aliccp-csv: processed "
        "CSV files (torch-rechub layout); aliccp-paddle: PaddleRec text files (--split)",
    )
    p.add_argument("paths", nargs="*", help="aliccp-csv / aliccp-paddle: the files (csv: split from each name)")
    p.add_argument("--skeleton", help="sample_skeleton_{train,test}.csv")
    p.add_argument("--common", help="common_features_{train,test}.csv")
    p.add_argument("--split", choices=["train", "val", "test"], help="which split (dt: aliccp.<split>_date)")
    p.add_argument("--date", help="dt instead of aliccp.<split>_date (a slice; not another split's date)")


@command("ingest", "ingest Ali-CCP into curated/labels (use --conf conf/aliccp.yaml)", _ingest_args)
def cmd_ingest(cfg: Config, args: argparse.Namespace) -> int:
    from pipelines.ingest import aliccp

    if (
        args.layout == "aliccp"
        and not (args.skeleton and args.common and args.split)
        or args.layout == "aliccp-csv"
        and not args.paths
        or args.layout == "aliccp-paddle"
        and not (args.paths and args.split)
    ):
        print(
            "esmm ingest: aliccp needs --skeleton, --common and --split; aliccp-csv needs PATH...; "
            "aliccp-paddle needs PATH... and --split",
            file=sys.stderr,
        )
        return 2
    spark = spark_for(cfg)
    try:
        if args.layout == "aliccp":
            aliccp.run(spark, cfg, args.skeleton, args.common, args.split, day=args.date)
        elif args.layout == "aliccp-paddle":
            aliccp.run_paddle(spark, cfg, args.paths, args.split, day=args.date)
        else:
            aliccp.run_csv(spark, cfg, args.paths, split=args.split, day=args.date)
    except aliccp.IngestGateError as e:
        print(f"esmm ingest: {e}", file=sys.stderr)
        return 1
    return 0
