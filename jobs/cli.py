"""The ``esmm`` command: one sub-command per job.

Every sub-command takes ``--conf FILE`` (repeatable, later files win) and
``--set key.path=value`` (repeatable, wins over files); a sub-command's own
shortcuts (``train --model KIND`` = ``--set model.kind=KIND``) are declared with
it and win over both. The configuration is built and validated once, here,
before any Spark or torch work starts. Building the parser imports neither
Spark nor torch: each command imports its job when it runs.

Under spark-submit run this file itself::

    spark-submit --packages io.delta:delta-spark_2.12:3.3.3 jobs/cli.py generate --set ...

under torchrun run the module: ``torchrun --nproc_per_node N -m jobs.cli train ...``.

Exit codes of every command (``nightly`` adds its own: 3 a step failed, 75 lock held):
0 done; 2 configuration or usage error (nothing ran); 65 an input table, one of its
files or its Delta log cannot be read (the message names the file; nothing written);
74 an output table cannot be written (read-only path, disk full; nothing committed,
the table stays at its previous version); 1 anything else (``labels``: the
bad-record gate), with the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from esmm.config.schema import Config
from esmm.config.loader import load_config
from esmm.config.errors import ConfigError
from pipelines.io.errors import TableReadError, TableWriteError

EXIT_INPUT_UNREADABLE = 65  # EX_DATAERR: fix or restore the named file, then re-run
EXIT_WRITE_FAILED = 74  # EX_IOERR: make the path writable or free space, then re-run


@dataclass(frozen=True)
class Command:
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Config, argparse.Namespace], int]
    shortcuts: dict[str, str] = field(default_factory=dict)  # argparse dest -> config key


COMMANDS: dict[str, Command] = {}


def command(name: str, help_: str, add_args: Callable[[argparse.ArgumentParser], None] = lambda p: None,
            shortcuts: dict[str, str] | None = None):
    """Register ``esmm <name>``. ``shortcuts``: this command's options that are
    ``--set`` in disguise (``{"days": "generate.days"}``); an option not listed there
    is the command's own argument (``score --model`` is a registry id)."""
    def deco(fn: Callable[[Config, argparse.Namespace], int]):
        COMMANDS[name] = Command(help_, add_args, fn, dict(shortcuts or {}))
        return fn
    return deco


def _spark(cfg: Config):
    from pipelines.io.session import get_spark

    spark = get_spark(cfg.spark)
    print(f"esmm: spark master {spark.sparkContext.master}, lakehouse {cfg.lakehouse.root}", file=sys.stderr)
    return spark


def _print_df(df, n: int = 50) -> None:
    pdf = df.limit(n).toPandas()
    print(pdf.to_string(index=False))


# --------------------------------------------------------------------------- generate


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--days", type=int, help="shortcut for --set generate.days=N")
    p.add_argument("--impressions-per-day", type=int, help="shortcut for generate.impressions_per_day")
    p.add_argument("--seed", type=int, help="shortcut for generate.seed")
    p.add_argument("--start-date", help="shortcut for generate.start_date")


GENERATE_SHORTCUTS = {"days": "generate.days", "impressions_per_day": "generate.impressions_per_day",
                      "seed": "generate.seed", "start_date": "generate.start_date"}


@command("generate", "write synthetic raw logs and sim/truth", _generate_args, GENERATE_SHORTCUTS)
def cmd_generate(cfg: Config, args: argparse.Namespace) -> int:
    from pipelines.sim import generator as generate

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
    from pipelines.report.stats import raw_daily_counts

    _print_df(raw_daily_counts(_spark(cfg), cfg), n=1000)
    return 0


# --------------------------------------------------------------------------- serving


def _date_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--date", required=True, help="run date yyyy-MM-dd (UTC)")


def _score_args(p: argparse.ArgumentParser) -> None:
    _date_arg(p)
    p.add_argument("--model", help="registry model id (default: the champion)")


@command("score", "score a day's candidates into serving/scores", _score_args)
def cmd_score(cfg: Config, args: argparse.Namespace) -> int:
    from pipelines.scoring import job as score

    try:
        score.run(_spark(cfg), cfg, args.date, model_id=args.model)
    except (score.ScoringInputError, FileNotFoundError) as e:  # FileNotFoundError: an unknown --model id
        print(f"esmm score: {e}", file=sys.stderr)
        return 2
    return 0


@command("nightly", "labels, features, train, evaluate, gate, score, report for one date "
                    "(exit 0 ok, 3 a step failed, 75 lock held)", _date_arg)
def cmd_nightly(cfg: Config, args: argparse.Namespace) -> int:
    from pipelines import nightly
    from pipelines.nightly.runner import EXIT_OK

    r = nightly.run(cfg, args.date, lambda: _spark(cfg))
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

    from pipelines.report import page as report

    data = report.collect(_spark(cfg), cfg, args.date)
    page = report.render(data, Path(cfg.lakehouse.path("reports")) / args.date)
    print(page)
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    _generate_args(p)
    p.add_argument("--nights", type=int, default=2,
                   help="run the nightly pipeline for the last N generated dates (default 2)")


@command("demo", "generate a week of logs, run the nightly pipeline on its last dates, "
                 "print the metric table and the report path", _demo_args, GENERATE_SHORTCUTS)
def cmd_demo(cfg: Config, args: argparse.Namespace) -> int:
    """The README's demo: conf/demo.yaml (applied first; --conf/--set still win) + the chain."""
    from pipelines import nightly
    from pipelines.nightly.runner import EXIT_OK
    from pipelines.report.page import text_table

    t0 = time.time()
    rc = cmd_generate(cfg, args)
    if rc:
        return rc
    spark = _spark(cfg)
    dates = cfg.generate.dates[-max(1, args.nights):]
    result = None
    for d in dates:
        print(f"--- esmm nightly --date {d}")
        result = nightly.run(cfg, d, lambda: spark)
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


# --------------------------------------------------------------------------- trainer
# esmm train / esmm models / esmm promote / esmm bench quality. train() itself needs no
# Spark, so `torchrun --nproc_per_node N -m jobs.cli train ...` runs it on every rank.


def _train_args(p: argparse.ArgumentParser) -> None:
    from esmm.config.schema import MODEL_KINDS

    p.add_argument("--model", choices=MODEL_KINDS, help="shortcut for --set model.kind=...")
    p.add_argument("--train-start", help="first dt of the training window (train.train_start)")
    p.add_argument("--train-end", help="last dt of the training window (train.train_end)")
    p.add_argument("--eval-date", action="append", default=None,
                   help="evaluation dt (repeatable; train.eval_dates)")
    p.add_argument("--epochs", type=int, help="shortcut for train.epochs")
    p.add_argument("--result-json", metavar="PATH",
                   help="rank 0 writes {model_id, artifact_dir, metrics, ...} of the trained model here "
                        "(how a launcher learns the id it registered)")


def write_result_json(path: str, r) -> None:
    """Rank 0's :class:`esmm.training.trainer.TrainResult` as JSON, written whole or not at all."""
    body = {"model_id": r.model_id, "artifact_dir": r.artifact_dir, "metrics": r.metrics,
            "examples_version": r.examples_version, "steps": r.steps,
            "total_samples": r.total_samples, "world_size": r.world_size, "seconds": r.seconds,
            "resumed_from_step": r.resumed_from_step}
    tmp = f"{path}.tmp{os.getpid()}"
    Path(tmp).write_text(json.dumps(body, default=float))
    os.replace(tmp, path)


@command("train", "train a model on curated/examples (works under torchrun)", _train_args,
         {"model": "model.kind", "train_start": "train.train_start", "train_end": "train.train_end",
          "eval_date": "train.eval_dates", "epochs": "train.epochs"})
def cmd_train(cfg: Config, args: argparse.Namespace) -> int:
    from esmm.evaluation.table import format_table
    from esmm.training.trainer import train

    r = train(cfg)
    if r.rank == 0:
        print(f"trained {cfg.model.kind} on {cfg.lakehouse.path('examples')} v{r.examples_version} "
              f"({cfg.train.train_start}..{cfg.train.train_end}): {r.steps:,} steps, {r.total_samples:,} rows "
              f"on {r.world_size} rank(s) in {r.seconds:.1f}s (rank 0: {r.samples_per_s:,.0f} rows/s)")
        print(f"model {r.model_id} -> {r.artifact_dir}")
        if r.metrics:
            print(format_table({r.model_id or cfg.model.kind: r.metrics}))
        if args.result_json:
            write_result_json(args.result_json, r)
        if any(k.endswith("_raw") for k in r.metrics):
            from esmm.calibration.metrics import format_report

            print(format_report(r.metrics))
    return 0


def _calibrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, dest="model_id", help="registry model id to calibrate")
    p.add_argument("--date", action="append", required=True, dest="cal_dates",
                   help="held-out label-mature dt to fit on (repeatable); not a training or evaluation day")
    p.add_argument("--eval-date", action="append", default=None, dest="cal_eval_dates",
                   help="dt to report raw vs calibrated metrics on (default: the model's evaluation days)")


@command("calibrate", "fit calibration maps for a trained model and save them in its artifact",
         _calibrate_args)
def cmd_calibrate(cfg: Config, args: argparse.Namespace) -> int:
    from esmm.calibration.maps import CalibrationError
    from esmm.calibration.fit import fit_calibration

    try:
        fit_calibration(cfg, args.model_id, args.cal_dates, eval_dates=args.cal_eval_dates)
    except CalibrationError as e:
        print(f"esmm calibrate: {e}", file=sys.stderr)
        return 2
    return 0


@command("models", "list the model registry")
def cmd_models(cfg: Config, args: argparse.Namespace) -> int:
    from esmm.registry import artifacts as registry

    rows = registry.list_models(cfg.lakehouse.path("registry"))
    if not rows:
        print(f"no models registered in {cfg.lakehouse.path('registry')}")
    for r in rows:
        print(f"{r['model_id']:45s} {r['status']:9s} {r['kind']:9s} {r['train_start']}..{r['train_end']} "
              f"v{r['examples_version']} ctcvr_auc={r['ctcvr_auc']} pcvr_bias_all={r['pcvr_bias_all']}")
    return 0


def _promote_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_id", help="model id from `esmm models`")


@command("promote", "make a registered model the champion", _promote_args)
def cmd_promote(cfg: Config, args: argparse.Namespace) -> int:
    from esmm.registry import artifacts as registry

    try:
        registry.promote(cfg.lakehouse.path("registry"), args.model_id)
    except ValueError as e:  # no such model id
        print(f"esmm promote: {e}", file=sys.stderr)
        return 2
    print(f"{args.model_id} is the champion")
    return 0


def _bench_args(p: argparse.ArgumentParser) -> None:
    from jobs.bench_sizes import add_args

    add_args(p)


@command("bench", "benchmarks: `esmm bench quality` (models over seeds), `esmm bench sweep` (regimes), "
                  "`esmm bench aliccp --data DIR` (the paper's experiment), `esmm bench perf` (performance suite)",
         _bench_args)
def cmd_bench(cfg: Config, args: argparse.Namespace) -> int:
    if args.which == "perf":  # its scripts start their own Spark and torch processes
        from jobs import bench_perf

        return bench_perf.main(cfg, args)
    from jobs import bench_quality

    return bench_quality.main(cfg, args, lambda: _spark(cfg))


# --------------------------------------------------------------------------- labels and features


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
        labels.run(_spark(cfg), cfg, dates, as_of)
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
        features.run(_spark(cfg), cfg, dates)
    except FileNotFoundError as e:
        print(f"esmm features: {e}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- Ali-CCP


def _ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("layout", choices=["aliccp", "aliccp-csv", "aliccp-paddle"],
                   help="aliccp: the raw release (--skeleton, --common, --split); aliccp-csv: processed "
                        "CSV files (torch-rechub layout); aliccp-paddle: PaddleRec text files (--split)")
    p.add_argument("paths", nargs="*", help="aliccp-csv / aliccp-paddle: the files (csv: split from each name)")
    p.add_argument("--skeleton", help="sample_skeleton_{train,test}.csv")
    p.add_argument("--common", help="common_features_{train,test}.csv")
    p.add_argument("--split", choices=["train", "val", "test"], help="which split (dt: aliccp.<split>_date)")
    p.add_argument("--date", help="dt instead of aliccp.<split>_date (a slice; not another split's date)")


@command("ingest", "ingest Ali-CCP into curated/labels (use --conf conf/aliccp.yaml)", _ingest_args)
def cmd_ingest(cfg: Config, args: argparse.Namespace) -> int:
    from pipelines.ingest import aliccp

    if args.layout == "aliccp" and not (args.skeleton and args.common and args.split) or \
            args.layout == "aliccp-csv" and not args.paths or \
            args.layout == "aliccp-paddle" and not (args.paths and args.split):
        print("esmm ingest: aliccp needs --skeleton, --common and --split; aliccp-csv needs PATH...; "
              "aliccp-paddle needs PATH... and --split", file=sys.stderr)
        return 2
    spark = _spark(cfg)
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


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esmm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, c in COMMANDS.items():
        p = sub.add_parser(name, help=c.help)
        p.add_argument("--conf", action="append", default=[], metavar="FILE",
                       help="YAML configuration file (repeatable; later files win)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                       help="override one key, e.g. --set generate.days=3 (repeatable)")
        c.add_args(p)
    return parser


DEMO_CONF = Path(__file__).resolve().parents[1] / "conf" / "demo.yaml"


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    if args.command == "demo":
        args.conf = [str(DEMO_CONF), *args.conf]
    for attr, key in COMMANDS[args.command].shortcuts.items():
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
    try:
        return COMMANDS[args.command].run(cfg, args)
    except TableReadError as e:
        print(f"esmm {args.command}: {e}", file=sys.stderr)
        return EXIT_INPUT_UNREADABLE
    except TableWriteError as e:
        print(f"esmm {args.command}: {e}", file=sys.stderr)
        return EXIT_WRITE_FAILED


def entry() -> None:
    """The process entry (the ``esmm`` script, ``python -m jobs.cli``, spark-submit, torchrun):
    :func:`main`, then the process ends with its exit code, skipping interpreter finalisation.

    Why: native thread pools of libraries a command loads (pyarrow and delta-rs for the
    registry, torch) can still be alive when CPython finalises. Run without a terminal, as a
    scheduler does, ``esmm promote`` finished, printed its result, and then aborted with
    "terminate called without an active exception" (exit 134) in about 3 of 8 calls; CI
    reproduced it. Every table a command writes is committed before :func:`main` returns,
    so ending the process right after flushing its output loses nothing.
    """
    try:
        rc = main()
    except SystemExit as e:  # argparse (--help, usage errors) and explicit exits
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - documented: 1 for anything else, with the traceback
        import traceback

        traceback.print_exc()
        rc = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    entry()
