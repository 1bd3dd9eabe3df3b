"""``esmm bench quality``: naive vs ESMM vs ESCM2-IPS/DR over several generated worlds.

Per seed k (default 5 seeds) the WORLD varies (``generate.seed`` = 42 + k) and so
does the training (``train.seed`` = 2018 + k); every model of seed k trains on the
same world, so model differences are paired by seed.

1. A world of ``--size`` (days x impressions per day; the last day is the
   evaluation day). ``--pipeline direct`` (default) writes ``curated/examples``,
   ``sim/truth`` and ``sim/oracle`` straight from the simulator
   (:mod:`pipelines.sim.examples`: perfect logging, mature labels), so the bench
   measures the models, not the label job. ``--pipeline full`` runs the production
   chain instead: ``esmm generate`` with its logging mess, ``esmm labels`` for
   every day as of :func:`backfill_as_of`, ``esmm features``.
2. ``esmm.training.trainer.train`` per model kind: train on days 1..n-1, evaluate on day n
   against ``sim/truth``.
3. Per model, mean ± sample std over seeds of :data:`HEADLINE` metrics and of the
   share of the oracle's lift reached, ``(auc - 0.5) / (oracle_auc - 0.5)``, with
   the oracle of the evaluation day (``sim/oracle``); paired differences over seeds
   (:data:`PAIRS`) with their std and t = mean / (std / sqrt(n)).
4. JSON (every seed's numbers) and a Markdown table, written to ``--out`` and printed.

MLflow (:mod:`esmm.registry.tracking`, when ``tracking.enabled``): one parent run per bench,
named and tagged with its ``bench_run_id`` and the run date, holding
``bench_quality.md`` and ``<kind>/<metric>_mean`` / ``_std``; each training is a
child run with the same tags plus its model kind, seed and the examples table's
Delta version.

The verdict on ESMM - naive is printed plainly: "shown" only for a positive mean
with paired t > 2, else "not shown" (a difference inside the noise is no difference).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from pyspark.sql import functions as F

from benchmarks.sizes import SIZES
from benchmarks.stats import lift_share, mean_std, paired, verdict  # noqa: F401 - re-exported
from esmm.config.loader import load_config
from esmm.config.schema import MODEL_KINDS, Config

WORLD_SEED, TRAIN_SEED = 42, 2018
PAIRS = (("esmm", "naive"), ("escm2-ips", "esmm"), ("escm2-dr", "esmm"))
HEADLINE = (
    "cvr_auc_all_potential",
    "cvr_auc_all_truth",
    "cvr_auc_clicked",
    "ctcvr_auc",
    "ctr_auc",
    "pcvr_over_all",
    "pcvr_over_clicked",
    "ctcvr_calibration",
    "ctr_logloss",
    "cvr_logloss_clicked",
    "ctcvr_logloss",
)
# model metric -> the oracle metric its lift is measured against
LIFT = {
    "ctr_auc": "ctr_auc",
    "cvr_auc_clicked": "cvr_auc_clicked",
    "cvr_auc_all_potential": "cvr_auc_all",
    "ctcvr_auc": "ctcvr_auc",
}
VERDICT_METRICS = ("cvr_auc_all_potential", "ctcvr_auc")
# raw -> calibrated, against sim/truth (benchmarks/calibration_truth.py); with --calibration-days
CALIBRATION = tuple(
    f"{m}_{v}"
    for m in (
        "pctcvr_pcoc_truth",
        "pctcvr_pcoc_labels",
        "pctr_pcoc_truth",
        "pctcvr_frce_truth_position",
        "pctr_frce_truth_position",
        "pctcvr_ece",
        "pcvr_over_all",
    )
    for v in ("raw", "cal")
)
PCOC_TARGET = (0.95, 1.05)


# --------------------------------------------------------------------------- statistics


def summarize(seeds: list[dict], models: tuple[str, ...]) -> dict:
    """Per-model mean ± std of the headline metrics and lift shares, oracle mean ± std,
    and the paired differences, from the per-seed records of :func:`run_seed`."""
    per_model = {}
    for kind in models:
        rows = [s["models"][kind] for s in seeds]
        m = {
            name: mean_std([r.get(name, math.nan) for r in rows])
            for name in (*HEADLINE, *CALIBRATION, "calibration_conversions")
        }
        for metric, oracle in LIFT.items():
            m[f"lift_{metric}"] = mean_std(
                [lift_share(r.get(metric, math.nan), s["oracle"][oracle]) for r, s in zip(rows, seeds)]
            )
        m["seconds"] = mean_std([r["seconds"] for r in rows])
        per_model[kind] = m
    oracle = {o: mean_std([s["oracle"][o] for s in seeds]) for o in LIFT.values()}
    diffs = {}
    for a, b in PAIRS:
        if a in models and b in models:
            diffs[f"{a} - {b}"] = {
                name: paired(
                    [s["models"][a].get(name, math.nan) for s in seeds],
                    [s["models"][b].get(name, math.nan) for s in seeds],
                )
                for name in HEADLINE
            }
    return {"models": per_model, "oracle": oracle, "paired": diffs}


# --------------------------------------------------------------------------- runs


def bench_overrides(
    size: str, cvr: Optional[float] = None, selection_bias: Optional[float] = None, calibration_days: int = 0
) -> list[str]:
    """Config overrides of a bench size (and of the world's two knobs when given); the
    ``calibration_days`` held-out days come on top of the size's days, so the training
    window stays the same."""
    days, per_day = SIZES[size]
    gen = [f"generate.days={days + calibration_days}", f"generate.impressions_per_day={per_day}"]
    if cvr is not None:
        gen.append(f"generate.cvr={cvr}")
    if selection_bias is not None:
        gen.append(f"generate.selection_bias={selection_bias}")
    return gen


def backfill_as_of(cfg: Config) -> dt.datetime:
    """As-of time of the full pipeline's label runs: the end of the last generated day plus
    the label horizon (:attr:`pipelines.labels.rules.Windows.horizon_s`), so every generated
    day's labels are mature."""
    from esmm.util.timeutil import default_as_of
    from pipelines.labels.rules import Windows

    return default_as_of(cfg.generate.dates[-1]) + dt.timedelta(seconds=Windows.from_config(cfg.labels).horizon_s)


def prepare(spark, cfg: Config, log=print) -> dict[str, int]:
    """Full pipeline: generate logs, label every generated day (as of :func:`backfill_as_of`)
    and build ``curated/examples``. Returns counts. Raises RuntimeError when any example
    row is immature."""
    from pipelines.features import job as features
    from pipelines.io.delta import read_delta
    from pipelines.labels import job as labels
    from pipelines.sim import generator as generate

    dates = cfg.generate.dates
    counts = generate.run(spark, cfg, log=log)
    as_of = backfill_as_of(cfg)
    log(f"bench quality: labelling {dates[0]}..{dates[-1]} as of {as_of.isoformat()}")
    reports = labels.run(spark, cfg, dates, as_of, log=log)
    counts["label_clicks"] = sum(r.clicks for r in reports)
    counts["label_conversions"] = sum(r.conversions for r in reports)
    per_day = features.run(spark, cfg, dates, log=log)
    counts["examples"] = sum(per_day.values())
    path = cfg.lakehouse.path("examples")
    immature = {
        r["dt"]: r["count"]
        for r in read_delta(spark, path)
        .where(F.col("dt").isin(*dates) & ~F.col("label_mature"))
        .groupBy("dt")
        .count()
        .collect()
    }
    if immature:
        raise RuntimeError(
            f"{path}: rows with label_mature=false on {immature} although labelled "
            f"as of {as_of.isoformat()}; training would drop them"
        )
    return counts


def run_seed(
    spark,
    conf_files: list[str],
    overrides: list[str],
    k: int,
    models: tuple[str, ...],
    epochs: int,
    pipeline: str = "direct",
    log: Callable[[str], None] = print,
    tracking_cfg=None,
    calibration_days: int = 0,
) -> dict:
    """One world (seed k) and every model on it. Returns ``{"seed", "world_seconds",
    "oracle": the evaluation day's sim/oracle row, "models": {kind: metrics + seconds}}``.

    With ``calibration_days`` K the K days before the evaluation day are held out of
    training, the trainer fits its calibration maps on them, and the model's metrics
    gain :data:`CALIBRATION` (raw and calibrated, against sim/truth)."""
    from esmm.data.examples import latest_version
    from esmm.training.trainer import train
    from pipelines.sim.examples import write_world
    from pipelines.sim.oracle import read_oracle

    seeded = [*overrides, f"generate.seed={WORLD_SEED + k}"]
    cfg = load_config(conf_files, seeded)
    dates = cfg.generate.dates
    t0 = time.time()
    if pipeline == "direct":
        write_world(spark, cfg, log=log)
    else:
        prepare(spark, cfg, log=log)
    oracle = read_oracle(spark, cfg, dates[-1])
    world_s = time.time() - t0
    log(
        f"  seed {k}: world in {world_s:.0f}s; eval day {dates[-1]}: {oracle['clicks']:,} clicks, "
        f"{oracle['conversions']:,} conversions"
    )
    out = {"seed": k, "world_seconds": world_s, "oracle": oracle, "models": {}}
    cal_dates = dates[len(dates) - 1 - calibration_days : -1]
    for kind in models:
        run_cfg = load_config(
            conf_files,
            [
                *seeded,
                f"model.kind={kind}",
                f"train.seed={TRAIN_SEED + k}",
                f"train.train_start={dates[0]}",
                f"train.train_end={dates[-2 - calibration_days]}",
                f"train.eval_dates=[{dates[-1]}]",
                f"train.epochs={epochs}",
                "train.resume=false",
                "train.progress=false",
                "train.register=false",
                f"calibration.dates=[{','.join(cal_dates)}]",
            ],
        )
        if tracking_cfg is not None:  # a child run of the bench's MLflow run
            tags = {**tracking_cfg.tags, "examples_version": str(latest_version(cfg.lakehouse.path("examples")))}
            run_cfg = dataclasses.replace(run_cfg, tracking=dataclasses.replace(tracking_cfg, tags=tags))
        t1 = time.time()
        r = train(run_cfg)
        secs = time.time() - t1
        out["models"][kind] = {
            **r.metrics,
            "seconds": secs,
            "samples_per_s": r.samples_per_s,
            "mlflow_run_id": r.mlflow_run_id,
        }
        if calibration_days:
            from benchmarks.calibration_truth import truth_calibration

            out["models"][kind].update(
                truth_calibration(
                    r.artifact_dir,
                    r.model_id,
                    cfg.lakehouse.path("examples"),
                    r.examples_version,
                    cfg.lakehouse.path("truth"),
                    dates[-1],
                )
            )
        m = r.metrics
        log(
            f"  seed {k} {kind:9s} {secs:5.0f}s: ctr_auc={m.get('ctr_auc', math.nan):.4f} "
            f"ctcvr_auc={m.get('ctcvr_auc', math.nan):.4f} "
            f"cvr_auc_all_potential={m.get('cvr_auc_all_potential', math.nan):.4f} "
            f"pcvr_over_all={m.get('pcvr_over_all', math.nan):.3f}"
        )
    return out


# --------------------------------------------------------------------------- output


def _ms(s: dict[str, float], digits: int = 4) -> str:
    return "n/a" if not s["n"] else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def markdown(summary: dict, header: str, seeds: Optional[list[dict]] = None) -> str:
    """The bench's Markdown: oracle, per-model table, paired differences, verdict."""
    models = list(summary["models"])
    lines = [
        header,
        "",
        "Oracle of the evaluation day (true probabilities), mean ± std over seeds: "
        + ", ".join(f"{k} {_ms(v)}" for k, v in summary["oracle"].items()),
        "",
    ]
    lines += ["| metric | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    names = [*HEADLINE, *[f"lift_{m}" for m in LIFT]]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_ms(summary["models"][k][name]) for k in models) + " |")
    lines.append("| seconds per run | " + " | ".join(_ms(summary["models"][k]["seconds"], 0) for k in models) + " |")
    if summary["paired"]:
        pairs = list(summary["paired"])
        lines += [
            "",
            "Paired differences over seeds (mean ± std, t):",
            "",
            "| metric | " + " | ".join(pairs) + " |",
            "|---" * (len(pairs) + 1) + "|",
        ]
        for name in HEADLINE:
            cells = [f"{_ms(summary['paired'][p][name])} (t {summary['paired'][p][name]['t']:+.1f})" for p in pairs]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "esmm - naive" in summary["paired"]:
        lines.append("")
        for name in VERDICT_METRICS:
            d = summary["paired"]["esmm - naive"][name]
            lines.append(
                f"- ESMM - naive on {name}: {d['mean']:+.4f} ± {d['std']:.4f} over {d['n']} seeds, "
                f"t {d['t']:+.2f}: {verdict(d)}."
            )
    lines += calibration_markdown(summary, seeds or [])
    return "\n".join(lines)


def calibration_markdown(summary: dict, seeds: list[dict]) -> list[str]:
    """The raw -> calibrated table and the plain calibration verdict (empty without maps)."""
    models = [k for k in summary["models"] if summary["models"][k]["pctcvr_pcoc_truth_cal"]["n"]]
    if not models:
        return []
    lo, hi = PCOC_TARGET
    lines = [
        "",
        "Calibration on the evaluation day, raw -> calibrated (mean ± std over seeds; `truth`: "
        "against sim/truth's expected rate, `labels`: against the observed conversions):",
        "",
        "| metric | " + " | ".join(models) + " |",
        "|---" * (len(models) + 1) + "|",
    ]
    names = sorted({n.rsplit("_", 1)[0] for n in CALIBRATION}, key=[n.rsplit("_", 1)[0] for n in CALIBRATION].index)
    for name in names:
        cells = [
            f"{_ms(summary['models'][k][f'{name}_raw'], 3)} -> {_ms(summary['models'][k][f'{name}_cal'], 3)}"
            for k in models
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    conv = [summary["models"][k]["calibration_conversions"]["mean"] for k in models]
    lines.append("| calibration-day conversions | " + " | ".join(f"{c:.0f}" for c in conv) + " |")
    lines.append("")
    for k in models:
        runs = [s["models"][k] for s in seeds if k in s["models"] and "pctcvr_pcoc_truth_cal" in s["models"][k]]
        inside = sum(lo <= r["pctcvr_pcoc_truth_cal"] <= hi for r in runs)
        halved = sum(r["pctcvr_frce_truth_position_cal"] <= 0.5 * r["pctcvr_frce_truth_position_raw"] for r in runs)
        noise = (
            np.mean(
                [1 / math.sqrt(r["calibration_conversions"]) for r in runs if r.get("calibration_conversions", 0) > 0]
            )
            if runs
            else math.nan
        )
        lines.append(
            f"- {k}: calibrated pCTCVR PCOC vs truth inside [{lo}, {hi}] in {inside}/{len(runs)} runs; "
            f"field-RCE(position) vs truth halved in {halved}/{len(runs)}; counting noise of the "
            f"calibration days alone ±{noise:.1%} (1/sqrt(conversions))."
        )
    return lines


def run(
    spark,
    conf_files: list[str],
    base_overrides: list[str],
    size: str = "default",
    seeds: int = 5,
    models: tuple[str, ...] = MODEL_KINDS,
    cvr: Optional[float] = None,
    selection_bias: Optional[float] = None,
    epochs: int = 1,
    pipeline: str = "direct",
    out_dir: Optional[str] = None,
    calibration_days: int = 2,
) -> dict:
    """Run the comparison; prints and writes ``bench_quality.json`` and ``bench_quality.md``
    under ``out_dir`` (default ``<lakehouse.root>/reports/bench_quality``). Returns the JSON.
    ``calibration_days`` (0: none) held-out days between training and evaluation, on which
    each model's calibration maps are fitted (see :func:`run_seed`)."""
    overrides = [*base_overrides, *bench_overrides(size, cvr, selection_bias, calibration_days)]
    cfg = load_config(conf_files, overrides)
    t0 = time.time()
    out = Path(out_dir or Path(cfg.lakehouse.path("reports")) / "bench_quality")
    records: list[dict] = []
    result: dict = {}
    parent, child_tracking = start_bench_run(
        cfg, "bench-quality", {"size": size, "seeds": seeds, "models": ",".join(models)}
    )
    with parent:  # the bench's MLflow run ends FAILED if a training raises
        for k in range(seeds):
            records.append(
                run_seed(
                    spark,
                    conf_files,
                    overrides,
                    k,
                    models,
                    epochs,
                    pipeline,
                    tracking_cfg=child_tracking,
                    calibration_days=calibration_days,
                )
            )
            done = time.time() - t0
            print(
                f"bench quality: seed {k + 1}/{seeds} done, {done:.0f}s so far, about "
                f"{done / (k + 1) * (seeds - k - 1):.0f}s to go",
                flush=True,
            )
            # Written after every seed: a run stopped early keeps the seeds it finished.
            result = write_outputs(
                records, cfg, size, seeds, models, epochs, pipeline, time.time() - t0, out, calibration_days
            )
        summary = result["summary"]["models"]
        parent.log_metrics(
            {
                f"{kind}/{name}_{stat}": v[stat]
                for kind, m in summary.items()
                for name, v in m.items()
                if name in HEADLINE
                for stat in ("mean", "std")
                if v["n"] and (stat == "mean" or v["n"] > 1)
            }
        )
        parent.log_text((out / "bench_quality.md").read_text(), "bench_quality.md")
    return result


def start_bench_run(cfg: Config, pipeline: str, extra_tags: dict):
    """The bench's parent MLflow run (a no-op Tracker when tracking is off) and the
    tracking section of its training runs, tagged as its children with the bench's run id."""
    from esmm.registry import tracking
    from esmm.util.timeutil import new_run_id

    bench_id = new_run_id(pipeline)
    tags = {
        "pipeline": pipeline,
        "bench_run_id": bench_id,
        "run_date": dt.datetime.now(dt.timezone.utc).date().isoformat(),
    }
    parent = tracking.start_run(cfg, bench_id, {**tags, **extra_tags})
    child = {**cfg.tracking.tags, **tags, **({"mlflow.parentRunId": parent.run_id} if parent else {})}
    return parent, dataclasses.replace(cfg.tracking, tags=child)


def write_outputs(
    records: list[dict],
    cfg: Config,
    size: str,
    seeds: int,
    models: tuple[str, ...],
    epochs: int,
    pipeline: str,
    seconds: float,
    out: Path,
    calibration_days: int = 0,
) -> dict:
    """bench_quality.json and bench_quality.md of the seeds done so far; prints the Markdown."""
    days, per_day = SIZES[size]
    summary = summarize(records, models)
    g = cfg.generate
    k = calibration_days
    cal = f"calibrate on days {days}-{days + k - 1}, " if k else "no calibration, "
    header = (
        f"bench quality: size={size} ({days + k} days x {per_day:,} impressions; train days 1-{days - 1}, "
        f"{cal}evaluate day {days + k}), pipeline={pipeline}, ctr={g.ctr}, cvr={g.cvr}, selection_bias="
        f"{g.selection_bias}, {len(records)}/{seeds} seeds (world seed {WORLD_SEED}+k, train seed "
        f"{TRAIN_SEED}+k), {epochs} epoch(s), models {', '.join(models)}; wall time {seconds:.0f}s"
    )
    md = markdown(summary, header, records)
    result = {
        "header": header,
        "size": size,
        "pipeline": pipeline,
        "epochs": epochs,
        "generate": {"ctr": g.ctr, "cvr": g.cvr, "selection_bias": g.selection_bias},
        "seconds": seconds,
        "summary": summary,
        "seeds": records,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_quality.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "bench_quality.md").write_text(md + "\n")
    print(md + f"\n\nwritten: {out / 'bench_quality.json'}, {out / 'bench_quality.md'}", flush=True)
    return result
