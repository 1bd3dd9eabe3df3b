"""The nightly pipeline's steps: each calls the other jobs' library functions.

Every step takes a :class:`pipelines.nightly.NightlyContext` and returns a
JSON-able dict (kept in the runs table's ``outputs``, so a re-run that skips a
step still hands its outputs to the later ones), or raises
:class:`pipelines.nightly.SkipStep` with the reason it has nothing to do.
"""
from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.nightly import NightlyContext, SkipStep

_DT_IN_PATH = re.compile(r"/dt=(\d{4}-\d{2}-\d{2})/")


def _existing_dates(spark, path: str) -> set[str]:
    """dt partitions present in a Delta table (from its file list: no data is read)."""
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, path):
        return set()
    files = spark.read.format("delta").load(path).inputFiles()
    return {m.group(1) for f in files for m in [_DT_IN_PATH.search(f)] if m}


def label_dates(ctx: NightlyContext) -> list[str]:
    """The refresh window, plus any training/evaluation day without examples yet (a backfill)."""
    p = ctx.plan
    needed = set(p.train_dates) | {d for d in (p.eval_date, p.calibration_date) if d}
    have = _existing_dates(ctx.spark, ctx.cfg.lakehouse.path("examples"))
    return sorted(set(p.refresh_dates) | (needed - have))


def labels(ctx: NightlyContext) -> dict[str, Any]:
    """Refresh curated/labels as of the end of the run date (late events included)."""
    from pipelines import labels as label_job

    dates = label_dates(ctx)
    if not dates:
        raise SkipStep(f"no impressions up to {ctx.run_date}")
    as_of = label_job.default_as_of(ctx.run_date)
    reports = label_job.run(ctx.spark, ctx.cfg, dates, as_of=as_of, run_id=ctx.run_id, log=ctx.log)
    rows = {r.day: r.label_rows for r in reports}
    return {"dates": dates, "as_of": as_of.isoformat(), "rows": rows, "plan": ctx.plan.as_dict(),
            "summary": f"{len(dates)} day(s), {sum(rows.values()):,} label rows as of {as_of:%Y-%m-%d %H:%M}Z"}


def features(ctx: NightlyContext) -> dict[str, Any]:
    """Rebuild curated/examples for the days the labels step refreshed."""
    from pipelines import features as feature_job

    dates = (ctx.outputs.get("labels") or {}).get("dates") or []
    if not dates:
        raise SkipStep("the labels step refreshed no day")
    counts = feature_job.run(ctx.spark, ctx.cfg, dates, log=ctx.log)
    return {"dates": dates, "rows": counts,
            "summary": f"{len(dates)} day(s), {sum(counts.values()):,} examples"}


def train_config(ctx: NightlyContext):
    """The run's Config with the training window, evaluation and calibration days of the plan."""
    p, cfg = ctx.plan, ctx.cfg
    t = dataclasses.replace(cfg.train, train_start=p.train_dates[0], train_end=p.train_dates[-1],
                            eval_dates=[p.eval_date], mature_only=p.eval_mature,
                            register=True, progress=False)
    cal = dataclasses.replace(cfg.calibration, dates=[p.calibration_date] if p.calibration_date else [])
    return dataclasses.replace(cfg, train=t, calibration=cal)


def _train_torchrun(ctx: NightlyContext, cfg) -> tuple[str, dict[str, float]]:
    """``torchrun --nproc_per_node N jobs/cli.py train --conf <this run's config>``; the model
    id is read back from the registry (rank 0 registers it)."""
    import yaml

    from esmm import registry

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(cfg.to_dict(), f)
    before = {r["model_id"] for r in registry.list_models(cfg.lakehouse.path("registry"))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={cfg.nightly.torchrun_nproc}",
           str(Path(__file__).resolve().parents[1] / "jobs" / "cli.py"), "train", "--conf", f.name]
    ctx.log("  train: " + " ".join(cmd))
    subprocess.run(cmd, check=True)
    new = [r for r in registry.list_models(cfg.lakehouse.path("registry")) if r["model_id"] not in before]
    if len(new) != 1:
        raise RuntimeError(f"torchrun training registered {len(new)} models, expected 1")
    meta = registry.read_meta(new[0]["artifact_dir"])
    return new[0]["model_id"], meta.get("metrics") or {}


def train(ctx: NightlyContext) -> dict[str, Any]:
    """Train the configured model on the plan's window (in-process rank, or torchrun)."""
    from esmm.train import train as train_fn

    p = ctx.plan
    if p.eval_date is None:
        raise SkipStep(f"no label-mature day up to {ctx.run_date} to evaluate on (labels mature after "
                       f"click_window + attribution_window + max_lateness); nothing to train yet")
    if not p.train_dates:
        raise SkipStep(f"no day before the evaluation day {p.eval_date} to train on")
    cfg = train_config(ctx)
    t0 = time.time()
    if cfg.nightly.train_launcher == "torchrun":
        model_id, metrics = _train_torchrun(ctx, cfg)
    else:
        r = train_fn(cfg)
        model_id, metrics = r.model_id, r.metrics
    return {"model_id": model_id, "train_dates": p.train_dates, "eval_date": p.eval_date,
            "calibration_date": p.calibration_date, "metrics": metrics, "seconds": round(time.time() - t0, 1),
            "summary": f"{model_id} on {p.train_dates[0]}..{p.train_dates[-1]}, "
                       f"CTCVR AUC {metrics.get('ctcvr_auc', float('nan')):.4f} on {p.eval_date}"}


def evaluate(ctx: NightlyContext) -> dict[str, Any]:
    """The champion on the candidate's evaluation rows (same examples version, same metrics).

    The candidate was evaluated by the trainer right after training (its
    metrics and reliability diagram are in its artifact).
    """
    from esmm import registry
    from esmm.data import resolve_snapshot
    from esmm.evaluate import evaluate as eval_fn

    tr = ctx.outputs.get("train") or {}
    if not tr.get("model_id"):
        raise SkipStep("no candidate was trained")
    cfg, reg = ctx.cfg, ctx.cfg.lakehouse.path("registry")
    cand_dir = Path(cfg.lakehouse.path("models")) / tr["model_id"]
    cand_meta = registry.read_meta(cand_dir)
    out = {"model_ids": {"candidate": tr["model_id"]}, "metrics": {"candidate": cand_meta.get("metrics") or {}},
           "eval_date": tr["eval_date"], "reliability": {"candidate": str(cand_dir / "reliability.png")}}
    champ = registry.champion(reg)
    if champ is None:
        out["summary"] = "no champion yet: the candidate stands alone"
        return out
    model, meta = registry.load_model(champ["artifact_dir"])
    if meta["feature_mapping_id"] != cand_meta["feature_mapping_id"]:
        out["champion_note"] = (f"champion {champ['model_id']} uses feature mapping {meta['feature_mapping_id']}, "
                                f"the examples {cand_meta['feature_mapping_id']}: not comparable on them")
        out["summary"] = out["champion_note"]
        return out
    snap = resolve_snapshot(cfg.lakehouse.path("examples"), [tr["eval_date"]],
                            cand_meta["examples"]["version"])
    work = Path(cfg.lakehouse.path("reports")) / "_evaluations" / ctx.run_date / champ["model_id"]
    metrics = eval_fn(model, snap, registry.spec_of(meta), truth_path=cfg.lakehouse.path("truth"),
                      mature_only=ctx.plan.eval_mature, batch_size=cfg.train.eval_batch_size,
                      out_dir=work)
    out["model_ids"]["champion"] = champ["model_id"]
    out["metrics"]["champion"] = metrics
    out["reliability"]["champion"] = str(work / "reliability.png")
    c, k = out["metrics"]["candidate"].get("ctcvr_auc", math.nan), metrics.get("ctcvr_auc", math.nan)
    out["summary"] = f"CTCVR AUC candidate {c:.4f} vs champion {champ['model_id']} {k:.4f}"
    return out


def gate_decision(cand: dict[str, float], champ: dict[str, float] | None, g) -> tuple[bool, str]:
    """(promote?, why) under ``nightly.gate`` (:class:`esmm.config.GateConfig`). Pure.

    The calibration bound judges what serving/scores will hold: the calibrated
    pCTCVR's PCOC (``ctcvr_pcoc_cal``) when the candidate has maps, else the raw one.
    """
    calibrated = "ctcvr_pcoc_cal" in cand
    cal = cand.get("ctcvr_pcoc_cal" if calibrated else "ctcvr_calibration", math.nan)
    cal_ok = g.calibration_min <= cal <= g.calibration_max  # False for NaN
    cal_txt = (f"{'calibrated' if calibrated else 'UNCALIBRATED'} CTCVR calibration {cal:.3f} "
               f"{'inside' if cal_ok else 'OUTSIDE'} [{g.calibration_min}, {g.calibration_max}]")
    if champ is None:
        return True, f"promoted: first model ({cal_txt})"
    a, b = cand.get("ctcvr_auc", math.nan), champ.get("ctcvr_auc", math.nan)
    auc_ok = (a >= b - g.max_auc_drop) if not (math.isnan(a) or math.isnan(b)) else False
    auc_txt = (f"CTCVR AUC {a:.4f} vs champion {b:.4f} (delta {a - b:+.4f}, allowed drop "
               f"{g.max_auc_drop})")
    if auc_ok and cal_ok:
        return True, f"promoted: {auc_txt}; {cal_txt}"
    return False, f"kept the champion: {auc_txt}{'' if auc_ok else ' FAILS'}; {cal_txt}"


def gate(ctx: NightlyContext) -> dict[str, Any]:
    """Promote the candidate if it passes the gate; the first model always does."""
    from esmm import registry

    ev = ctx.outputs.get("evaluate") or {}
    cand_id = (ev.get("model_ids") or {}).get("candidate")
    if not cand_id:
        raise SkipStep("no candidate was evaluated")
    champ_id = (ev.get("model_ids") or {}).get("champion")
    reg = ctx.cfg.lakehouse.path("registry")
    if champ_id is None and registry.champion(reg) is not None:
        # A champion exists but could not be compared (different feature mapping).
        ok, why = gate_decision(ev["metrics"]["candidate"], {"ctcvr_auc": math.nan}, ctx.cfg.nightly.gate)
        why += f" ({ev.get('champion_note', 'champion not comparable')})"
    else:
        ok, why = gate_decision(ev["metrics"]["candidate"], ev["metrics"].get("champion"),
                                ctx.cfg.nightly.gate)
    if ok:
        registry.promote(reg, cand_id)
    champion = registry.champion(reg)
    return {"promoted": ok, "candidate": cand_id, "decision": why,
            "champion": champion["model_id"] if champion else None, "summary": why}


def score(ctx: NightlyContext) -> dict[str, Any]:
    """Score the plan's days with the registry's champion into serving/scores."""
    from pipelines import score as score_job

    try:
        model = score_job.resolve_model(ctx.cfg)
    except score_job.ScoringInputError as e:
        raise SkipStep(str(e)) from e
    done = {}
    for day in ctx.plan.score_dates:
        rep = score_job.run(ctx.spark, ctx.cfg, day, model=model, run_id=ctx.run_id, log=ctx.log,
                            **ctx.options.get("score", {}))
        done[day] = {"scored": rep.scored, "quarantined": rep.quarantined}
    n = sum(v["scored"] for v in done.values())
    return {"model_id": model.model_id, "days": done,
            "summary": f"{n:,} rows over {len(done)} day(s) by {model.model_id}"}


def report(ctx: NightlyContext) -> dict[str, Any]:
    """Write reports/<run date>/index.html."""
    from pipelines import report as report_job
    from pipelines.runs import RunsTable

    steps = [s for s in RunsTable(ctx.cfg.lakehouse.path("runs")).rows(ctx.run_date) if s["step"] != "report"]
    data = report_job.collect(ctx.spark, ctx.cfg, ctx.run_date, outputs=ctx.outputs,
                              plan=ctx.plan.as_dict())
    data.steps = steps
    page = report_job.render(data, Path(ctx.cfg.lakehouse.path("reports")) / ctx.run_date)
    return {"path": str(page), "summary": str(page)}
