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


# --------------------------------------------------------------------------- trainer (issue 4)
# esmm train / esmm models / esmm promote / esmm bench quality. train() itself needs no
# Spark, so `torchrun --nproc_per_node N jobs/cli.py train ...` runs it on every rank.


def _train_args(p: argparse.ArgumentParser) -> None:
    from esmm.config import MODEL_KINDS

    p.add_argument("--model", choices=MODEL_KINDS, help="shortcut for --set model.kind=...")
    p.add_argument("--train-start", help="first dt of the training window (train.train_start)")
    p.add_argument("--train-end", help="last dt of the training window (train.train_end)")
    p.add_argument("--eval-date", action="append", default=None,
                   help="evaluation dt (repeatable; train.eval_dates)")
    p.add_argument("--epochs", type=int, help="shortcut for train.epochs")


@command("train", "train a model on curated/examples (works under torchrun)", _train_args)
def cmd_train(cfg: Config, args: argparse.Namespace) -> int:
    from esmm.evaluate import format_table
    from esmm.train import train

    r = train(cfg)
    if r.rank == 0:
        print(f"trained {cfg.model.kind} on {cfg.lakehouse.path('examples')} v{r.examples_version} "
              f"({cfg.train.train_start}..{cfg.train.train_end}): {r.steps:,} steps, {r.total_samples:,} rows "
              f"on {r.world_size} rank(s) in {r.seconds:.1f}s (rank 0: {r.samples_per_s:,.0f} rows/s)")
        print(f"model {r.model_id} -> {r.artifact_dir}")
        if r.metrics:
            print(format_table({r.model_id or cfg.model.kind: r.metrics}))
    return 0


@command("models", "list the model registry")
def cmd_models(cfg: Config, args: argparse.Namespace) -> int:
    from esmm import registry

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
    from esmm import registry

    registry.promote(cfg.lakehouse.path("registry"), args.model_id)
    print(f"{args.model_id} is the champion")
    return 0


def _bench_args(p: argparse.ArgumentParser) -> None:
    from jobs.bench_quality import SIZES

    p.add_argument("which", choices=["quality"], help="quality: naive vs ESMM vs ESCM2 on generated logs")
    p.add_argument("--size", choices=list(SIZES), default="default", help="data size (default: 7 days x 60k)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per model")
    p.add_argument("--cvr", type=float, help="conversion rate of the generated logs (generate.cvr)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--models", default="naive,esmm,escm2-ips,escm2-dr", help="comma-separated kinds")
    p.add_argument("--skip-prepare", action="store_true", help="reuse the examples already generated")


@command("bench", "benchmarks: `esmm bench quality`", _bench_args)
def cmd_bench(cfg: Config, args: argparse.Namespace) -> int:
    from jobs import bench_quality

    overrides = list(args.overrides)
    if not any(o.startswith("train.torch_threads=") for o in overrides):
        overrides.append("train.torch_threads=1")  # no OpenMP spinning next to Spark and readers
    spark = None if args.skip_prepare else _spark(cfg)
    bench_quality.run(spark, args.conf, overrides, size=args.size, seeds=args.seeds,
                      models=tuple(args.models.split(",")), cvr=args.cvr, epochs=args.epochs,
                      skip_prepare=args.skip_prepare)
    return 0


# --------------------------------------------------------------------------- main


_SHORTCUTS = {
    "days": "generate.days",
    "impressions_per_day": "generate.impressions_per_day",
    "seed": "generate.seed",
    "start_date": "generate.start_date",
    "model": "model.kind",
    "train_start": "train.train_start",
    "train_end": "train.train_end",
    "eval_date": "train.eval_dates",
    "epochs": "train.epochs",
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
