"""``esmm train | calibrate | models | promote | bench``: the trainer, the registry and the benches."""

from __future__ import annotations

import argparse
import sys

from esmm.config.schema import Config
from jobs.commands import command, spark_for

# --------------------------------------------------------------------------- trainer
# esmm train / esmm models / esmm promote / esmm bench quality. train() itself needs no
# Spark, so `torchrun --nproc_per_node N -m jobs.cli train ...` runs it on every rank.


def _train_args(p: argparse.ArgumentParser) -> None:
    from esmm.config.schema import MODEL_KINDS

    p.add_argument("--model", choices=MODEL_KINDS, help="shortcut for --set model.kind=...")
    p.add_argument("--train-start", help="first dt of the training window (train.train_start)")
    p.add_argument("--train-end", help="last dt of the training window (train.train_end)")
    p.add_argument("--eval-date", action="append", default=None, help="evaluation dt (repeatable; train.eval_dates)")
    p.add_argument("--epochs", type=int, help="shortcut for train.epochs")
    p.add_argument(
        "--result-json",
        metavar="PATH",
        help="rank 0 writes {model_id, artifact_dir, metrics, ...} of the trained model here "
        "(how a launcher learns the id it registered)",
    )


@command(
    "train",
    "train a model on curated/examples (works under torchrun)",
    _train_args,
    {
        "model": "model.kind",
        "train_start": "train.train_start",
        "train_end": "train.train_end",
        "eval_date": "train.eval_dates",
        "epochs": "train.epochs",
    },
)
def cmd_train(cfg: Config, args: argparse.Namespace) -> int:
    from esmm.evaluation.table import format_table
    from esmm.training.trainer import train

    r = train(cfg)
    if r.rank == 0:
        print(
            f"trained {cfg.model.kind} on {cfg.lakehouse.path('examples')} v{r.examples_version} "
            f"({cfg.train.train_start}..{cfg.train.train_end}): {r.steps:,} steps, {r.total_samples:,} rows "
            f"on {r.world_size} rank(s) in {r.seconds:.1f}s (rank 0: {r.samples_per_s:,.0f} rows/s)"
        )
        print(f"model {r.model_id} -> {r.artifact_dir}")
        if r.metrics:
            print(format_table({r.model_id or cfg.model.kind: r.metrics}))
        if args.result_json:
            r.write_json(args.result_json)
        if any(k.endswith("_raw") for k in r.metrics):
            from esmm.calibration.metrics import format_report

            print(format_report(r.metrics))
    return 0


def _calibrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, dest="model_id", help="registry model id to calibrate")
    p.add_argument(
        "--date",
        action="append",
        required=True,
        dest="cal_dates",
        help="held-out label-mature dt to fit on (repeatable); not a training or evaluation day",
    )
    p.add_argument(
        "--eval-date",
        action="append",
        default=None,
        dest="cal_eval_dates",
        help="dt to report raw vs calibrated metrics on (default: the model's evaluation days)",
    )


@command("calibrate", "fit calibration maps for a trained model and save them in its artifact", _calibrate_args)
def cmd_calibrate(cfg: Config, args: argparse.Namespace) -> int:
    from esmm.calibration.fit import fit_calibration
    from esmm.calibration.maps import CalibrationError

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
        print(
            f"{r['model_id']:45s} {r['status']:9s} {r['kind']:9s} {r['train_start']}..{r['train_end']} "
            f"v{r['examples_version']} ctcvr_auc={r['ctcvr_auc']} pcvr_bias_all={r['pcvr_bias_all']}"
        )
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
    from benchmarks.sizes import add_args

    add_args(p)


@command(
    "bench",
    "benchmarks: `esmm bench quality` (models over seeds), `esmm bench sweep` (regimes), "
    "`esmm bench aliccp --data DIR` (the paper's experiment), `esmm bench perf` (performance suite)",
    _bench_args,
)
def cmd_bench(cfg: Config, args: argparse.Namespace) -> int:
    """``esmm bench perf | quality | sweep | aliccp``: dispatch to the bench (benchmarks/)."""
    if args.which == "perf":  # its scripts start their own Spark and torch processes
        from benchmarks import perf as bench_perf

        return bench_perf.main(cfg, args)
    from benchmarks.sizes import SIZES, bias_value
    from esmm.config.schema import MODEL_KINDS

    if args.size and args.size not in SIZES:
        print(f"esmm bench {args.which}: --size {args.size} is not one of {', '.join(SIZES)}", file=sys.stderr)
        return 2
    overrides = list(args.overrides)
    if not any(o.startswith("train.torch_threads=") for o in overrides):
        overrides.append("train.torch_threads=1")  # no OpenMP spinning next to Spark and readers
    if args.which == "aliccp" and not args.data:
        print("esmm bench aliccp: --data DIR is required", file=sys.stderr)
        return 2
    spark = spark_for(cfg)
    if args.which == "aliccp":
        from benchmarks import aliccp as bench_aliccp

        bench_aliccp.run(
            spark,
            args.conf,
            overrides,
            args.data,
            models=tuple((args.models or ",".join(MODEL_KINDS)).split(",")),
            seeds=args.seeds or 3,
            epochs=args.epochs,
        )
        return 0
    if args.which == "sweep":
        from benchmarks import sweep as bench_sweep

        bench_sweep.run(
            spark,
            args.conf,
            overrides,
            size=args.size or "sweep",
            seeds=args.seeds or 3,
            models=tuple((args.models or "naive,esmm").split(",")),
            cvrs=[float(c) for c in (args.cvr or "0.005,0.02,0.05,0.15").split(",")],
            biases=(args.bias or "none,default,strong").split(","),
            epochs=args.epochs,
            out_dir=args.out,
        )
        return 0
    from benchmarks import quality as bench_quality

    bench_quality.run(
        spark,
        args.conf,
        overrides,
        size=args.size or "default",
        seeds=args.seeds or 5,
        models=tuple((args.models or ",".join(MODEL_KINDS)).split(",")),
        cvr=float(args.cvr) if args.cvr else None,
        selection_bias=bias_value(args.bias) if args.bias else None,
        epochs=args.epochs,
        pipeline=args.pipeline,
        out_dir=args.out,
        calibration_days=2 if args.calibration_days is None else args.calibration_days,
    )
    return 0
