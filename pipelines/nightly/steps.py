"""The nightly pipeline's steps: each calls the other jobs' library functions.

Steps, in order (:func:`default_steps`; each a library call, none shells out to
the CLI except a torchrun training)::

    labels    refresh curated/labels for the dates whose labels can still change
    features  rebuild curated/examples for the same dates
    train     train cfg.model on the trailing cfg.nightly.train_days before the eval day
    evaluate  candidate and champion on the evaluation day (same rows, same metrics)
    gate      promote the candidate if it passes (the first model always does)
    score     score the candidates of the last cfg.nightly.score_days days with the champion
    report    write the run report (HTML + PNG charts) under reports/<D>/

Every step takes a :class:`pipelines.nightly.runner.NightlyContext` and returns a
JSON-able dict (kept in the runs table's ``outputs``, so a re-run that skips a
step still hands its outputs to the later ones), or raises
:class:`pipelines.nightly.runner.SkipStep` with the reason it has nothing to do.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from esmm.util.timeutil import default_as_of
from pipelines.nightly.plan import dates_in_paths
from pipelines.nightly.runner import NightlyContext, SkipStep, Step


def _existing_dates(spark, path: str) -> set[str]:
    """dt partitions present in a Delta table (from its file list: no data is read)."""
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, path):
        return set()
    files = spark.read.format("delta").load(path).inputFiles()
    return dates_in_paths(files)


def label_dates(ctx: NightlyContext) -> list[str]:
    """The refresh window, plus any training/evaluation day without examples yet (a backfill)."""
    p = ctx.plan
    needed = set(p.train_dates) | {d for d in (p.eval_date, *p.calibration_dates) if d}
    have = _existing_dates(ctx.spark, ctx.cfg.lakehouse.path("examples"))
    return sorted(set(p.refresh_dates) | (needed - have))


def labels(ctx: NightlyContext) -> dict[str, Any]:
    """Refresh curated/labels as of the end of the run date (late events included)."""
    from pipelines.labels import job as label_job

    dates = label_dates(ctx)
    if not dates:
        raise SkipStep(f"no impressions up to {ctx.run_date}")
    as_of = default_as_of(ctx.run_date)
    reports = label_job.run(ctx.spark, ctx.cfg, dates, as_of=as_of, run_id=ctx.run_id, log=ctx.log)
    rows = {r.day: r.label_rows for r in reports}
    return {
        "dates": dates,
        "as_of": as_of.isoformat(),
        "rows": rows,
        "plan": ctx.plan.as_dict(),
        "summary": f"{len(dates)} day(s), {sum(rows.values()):,} label rows as of {as_of:%Y-%m-%d %H:%M}Z",
    }


def features(ctx: NightlyContext) -> dict[str, Any]:
    """Rebuild curated/examples for the days the labels step refreshed."""
    from pipelines.features import job as feature_job

    dates = (ctx.outputs.get("labels") or {}).get("dates") or []
    if not dates:
        raise SkipStep("the labels step refreshed no day")
    counts = feature_job.run(ctx.spark, ctx.cfg, dates, log=ctx.log)
    return {"dates": dates, "rows": counts, "summary": f"{len(dates)} day(s), {sum(counts.values()):,} examples"}


def train_config(ctx: NightlyContext):
    """The run's Config with the training window, evaluation and calibration days of the
    plan, and the run date and run id as tracking tags."""
    p, cfg = ctx.plan, ctx.cfg
    method = cfg.train.delayed_feedback
    if not p.eval_mature and method == "wait":
        # eval_day = latest: the window holds open labels, which `wait` would drop; train on
        # them as observed (what `train.mature_only: false` did before delayed_feedback).
        method = "vanilla"
    t = dataclasses.replace(
        cfg.train,
        train_start=p.train_dates[0],
        train_end=p.train_dates[-1],
        eval_dates=[p.eval_date],
        delayed_feedback=method,
        register=True,
        progress=False,
    )
    cal = dataclasses.replace(cfg.calibration, dates=list(p.calibration_dates))
    # The MLflow run of the training is tagged with the nightly run it belongs to.
    tags = {**cfg.tracking.tags, "pipeline": "nightly", "run_date": ctx.run_date, "run_id": ctx.run_id}
    return dataclasses.replace(cfg, train=t, calibration=cal, tracking=dataclasses.replace(cfg.tracking, tags=tags))


def _train_torchrun(ctx: NightlyContext, cfg) -> tuple[str, dict[str, float]]:
    """``torchrun --nproc_per_node N -m esmm.training --conf <this run's config>
    --result-json <file>``; rank 0 writes the id of the model it registered and
    its metrics to that file."""
    import yaml

    work = Path(tempfile.mkdtemp(prefix=f"esmm-train-{ctx.run_date}-"))
    conf, result = work / "config.yaml", work / "result.json"
    conf.write_text(yaml.safe_dump(cfg.to_dict()))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={cfg.nightly.torchrun_nproc}",
        "-m",
        "esmm.training",
        "--conf",
        str(conf),
        "--result-json",
        str(result),
    ]
    ctx.log("  train: " + " ".join(cmd))
    subprocess.run(cmd, check=True)
    from esmm.training.result import TrainResult

    try:
        out = TrainResult.read_json(result)
    except FileNotFoundError:
        raise RuntimeError(f"torchrun training exited 0 but wrote no result file {result}") from None
    if not out.model_id:
        raise RuntimeError(f"torchrun training registered no model (result file {result}: {out})")
    return out.model_id, out.metrics


def train(ctx: NightlyContext) -> dict[str, Any]:
    """Train the configured model on the plan's window (in-process rank, or torchrun)."""
    from esmm.training.trainer import train as train_fn

    p = ctx.plan
    if p.eval_date is None:
        raise SkipStep(
            f"no label-mature day up to {ctx.run_date} to evaluate on (labels mature after "
            f"click_window + attribution_window + max_lateness); nothing to train yet"
        )
    if not p.train_dates:
        raise SkipStep(f"no day before the evaluation day {p.eval_date} to train on")
    cfg = train_config(ctx)
    t0 = time.time()
    if cfg.nightly.train_launcher == "torchrun":
        model_id, metrics = _train_torchrun(ctx, cfg)
    else:
        r = train_fn(cfg)
        model_id, metrics = r.model_id, r.metrics
    return {
        "model_id": model_id,
        "train_dates": p.train_dates,
        "eval_date": p.eval_date,
        "calibration_dates": list(p.calibration_dates),
        "metrics": metrics,
        "seconds": round(time.time() - t0, 1),
        "summary": f"{model_id} on {p.train_dates[0]}..{p.train_dates[-1]}, "
        f"CTCVR AUC {metrics.get('ctcvr_auc', float('nan')):.4f} on {p.eval_date}",
    }


def evaluate(ctx: NightlyContext) -> dict[str, Any]:
    """Candidate and champion on the same evaluation rows (same examples version, same metrics).

    Each model's per-row scores go to ``reports/_evaluations/<run date>/<model
    id>/predictions.npz`` (paths in ``predictions``), for the gate's paired tests
    and the report's intervals. The candidate's reliability diagram is the one
    the trainer wrote into its artifact.
    """
    from esmm.calibration import maps as calibration
    from esmm.data.examples import resolve_snapshot
    from esmm.evaluation.metrics import evaluate as eval_fn
    from esmm.registry import artifacts as registry

    tr = ctx.outputs.get("train") or {}
    if not tr.get("model_id"):
        raise SkipStep("no candidate was trained")
    cfg, reg = ctx.cfg, ctx.cfg.lakehouse.path("registry")
    cand_dir = Path(cfg.lakehouse.path("models")) / tr["model_id"]
    cand_meta = registry.read_meta(cand_dir)
    snap = resolve_snapshot(cfg.lakehouse.path("examples"), [tr["eval_date"]], cand_meta["examples"]["version"])
    work = Path(cfg.lakehouse.path("reports")) / "_evaluations" / ctx.run_date

    def scored(artifact_dir, model_id: str, out_dir=None) -> tuple[dict[str, float], str]:
        # The scores serving/scores would hold: calibrated when the artifact has maps, so the
        # gate judges calibration on this evaluation day, never on the day the maps were fitted.
        model, meta = registry.load_model(artifact_dir)
        preds = work / model_id / "predictions.npz"
        metrics = eval_fn(
            model,
            snap,
            registry.spec_of(meta),
            truth_path=cfg.lakehouse.path("truth"),
            mature_only=ctx.plan.eval_mature,
            batch_size=cfg.train.eval_batch_size,
            out_dir=out_dir,
            predictions_path=preds,
            calibration=calibration.load(artifact_dir, model_id),
        )
        return metrics, str(preds)

    cand_metrics, cand_preds = scored(cand_dir, tr["model_id"])
    out = {
        "model_ids": {"candidate": tr["model_id"]},
        "metrics": {"candidate": cand_metrics},
        "eval_date": tr["eval_date"],
        "reliability": {"candidate": str(cand_dir / "reliability.png")},
        "predictions": {"candidate": cand_preds},
    }
    champ = registry.champion(reg)
    if champ is None:
        out["summary"] = "no champion yet: the candidate stands alone"
        return out
    meta = registry.read_meta(champ["artifact_dir"])
    if meta["feature_mapping_id"] != cand_meta["feature_mapping_id"]:
        out["champion_note"] = (
            f"champion {champ['model_id']} uses feature mapping {meta['feature_mapping_id']}, "
            f"the examples {cand_meta['feature_mapping_id']}: not comparable on them"
        )
        out["summary"] = out["champion_note"]
        return out
    metrics, out["predictions"]["champion"] = scored(
        champ["artifact_dir"], champ["model_id"], out_dir=work / champ["model_id"]
    )
    out["model_ids"]["champion"] = champ["model_id"]
    out["metrics"]["champion"] = metrics
    out["reliability"]["champion"] = str(work / champ["model_id"] / "reliability.png")
    c, k = cand_metrics.get("ctcvr_auc", math.nan), metrics.get("ctcvr_auc", math.nan)
    out["summary"] = f"CTCVR AUC candidate {c:.4f} vs champion {champ['model_id']} {k:.4f}"
    return out


def gate(ctx: NightlyContext) -> dict[str, Any]:
    """Promote the candidate unless :func:`pipelines.nightly.gate.promotion` keeps the champion.

    Outputs the decision (``promoted``, ``decision``: the reason) and its numbers
    (``tests``, ``n_rows``, ``n_conversions``), which the runs table and the
    report show.
    """
    from esmm.registry import artifacts as registry
    from pipelines.nightly.gate import promotion

    ev = ctx.outputs.get("evaluate") or {}
    cand_id = (ev.get("model_ids") or {}).get("candidate")
    if not cand_id:
        raise SkipStep("no candidate was evaluated")
    preds = dict(ev.get("predictions") or {})
    if not (ev.get("model_ids") or {}).get("champion"):
        preds.pop("champion", None)
    reg = ctx.cfg.lakehouse.path("registry")
    d = promotion(preds, registry.champion(reg) is not None, ev.get("champion_note"), ctx.cfg.nightly.gate)
    if d.promote:
        registry.promote(reg, cand_id)
    champion = registry.champion(reg)
    return {
        "promoted": d.promote,
        "candidate": cand_id,
        "decision": d.reason,
        "tests": d.tests,
        "n_rows": d.n_rows,
        "n_conversions": d.n_conversions,
        "champion": champion["model_id"] if champion else None,
        "summary": d.reason,
    }


def score(ctx: NightlyContext) -> dict[str, Any]:
    """Score the plan's days with the registry's champion into serving/scores."""
    from pipelines.scoring import job as score_job

    try:
        model = score_job.resolve_model(ctx.cfg)
    except score_job.ScoringInputError as e:
        raise SkipStep(str(e)) from e
    done = {}
    for day in ctx.plan.score_dates:
        rep = score_job.run(
            ctx.spark, ctx.cfg, day, model=model, run_id=ctx.run_id, log=ctx.log, **ctx.options.get("score", {})
        )
        done[day] = {"scored": rep.scored, "quarantined": rep.quarantined}
    n = sum(v["scored"] for v in done.values())
    return {
        "model_id": model.model_id,
        "days": done,
        "summary": f"{n:,} rows over {len(done)} day(s) by {model.model_id}",
    }


def report(ctx: NightlyContext) -> dict[str, Any]:
    """Write reports/<run date>/index.html."""
    from pipelines.nightly.runs import RunsTable
    from pipelines.report import page as report_job

    steps = [s for s in RunsTable(ctx.cfg.lakehouse.path("runs")).rows(ctx.run_date) if s["step"] != "report"]
    data = report_job.collect(ctx.spark, ctx.cfg, ctx.run_date, outputs=ctx.outputs, plan=ctx.plan.as_dict())
    data.steps = steps
    page = report_job.render(data, Path(ctx.cfg.lakehouse.path("reports")) / ctx.run_date)
    return {"path": str(page), "summary": str(page)}


def default_steps() -> list[Step]:
    """The nightly's steps, in the order they run."""
    return [
        Step("labels", labels),
        Step("features", features),
        Step("train", train),
        Step("evaluate", evaluate),
        Step("gate", gate),
        Step("score", score),
        Step("report", report),
    ]


STEPS = tuple(s.name for s in default_steps())
