"""What rank 0 does after the last step: evaluate on ``train.eval_dates``, calibrate, save
the artifact (esmm/registry/artifacts.py), log the run to MLflow and register it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from esmm.config.schema import Config
from esmm.data.examples import Snapshot, resolve_snapshot
from esmm.model.network import EntireSpaceModel
from esmm.model.parallel import note
from esmm.training.delay import DelayCurve
from esmm.training.distributed import Dist
from esmm.training.result import TrainResult
from esmm.util.timeutil import utc_now


def finish(
    cfg: Config,
    model: EntireSpaceModel,
    snapshot: Snapshot,
    result: TrainResult,
    key: str,
    d: Dist,
    curve: Optional[DelayCurve] = None,
) -> None:
    """Rank 0: evaluate on ``eval_dates``, save the artifact, log it to MLflow, register it."""
    from esmm.evaluation.metrics import eval_maturity, evaluate
    from esmm.registry import artifacts as registry
    from esmm.registry import tracking

    t = cfg.train
    now = utc_now()
    model_id = f"{cfg.model.kind}-{now.strftime('%Y%m%dT%H%M%S')}-{key[:8]}"
    artifact_dir = Path(cfg.lakehouse.path("models")) / model_id
    metrics: dict[str, float] = {}
    if t.eval_dates:
        eval_snap = resolve_snapshot(snapshot.table_path, list(t.eval_dates), snapshot.version)
        share = eval_maturity(eval_snap, log=lambda m: note(m, True))
        metrics = evaluate(
            model,
            eval_snap,
            cfg.features,
            truth_path=cfg.lakehouse.path("truth"),
            mature_only=share > 0,
            batch_size=t.eval_batch_size,
            out_dir=artifact_dir,
            device=d.device,
        )
    from esmm.calibration.fit import after_training

    cal_metrics, calibration = after_training(cfg, model, model_id, snapshot, artifact_dir, d.device)
    metrics.update(cal_metrics)
    if t.eval_dates:
        metrics["eval_label_mature_share"] = share
    meta = {
        "model_id": model_id,
        "kind": cfg.model.kind,
        "created_at": now.isoformat(),
        "model": dataclasses.asdict(cfg.model),
        "features": dataclasses.asdict(cfg.features),
        "feature_mapping_id": cfg.features.mapping_id,
        "examples": {"path": snapshot.table_path, "version": snapshot.version, "dates": list(snapshot.dates)},
        "window": {"train_start": t.train_start, "train_end": t.train_end, "eval_dates": list(t.eval_dates)},
        "train": dataclasses.asdict(t),
        "delay_curve": curve.summary() if curve is not None else None,
        "training": {
            "steps": result.steps,
            "samples": result.samples,
            "seconds": result.seconds,
            "samples_per_s": result.samples_per_s,
            "world_size": d.world_size,
            "embedding_gradients": "sparse" if model.embedding.table.sparse else "dense",
            "losses": result.losses,
            "resumed_from_step": result.resumed_from_step,
        },
        "metrics": metrics,
        "calibration": calibration,
        "code_version": registry.code_version(),
    }
    tracker = tracking.start_run(
        cfg,
        model_id,
        tracking.training_tags(
            cfg,
            model_id,
            snapshot.table_path,
            snapshot.version,
            list(snapshot.dates),
            d.world_size,
            meta["code_version"],
        ),
    )
    meta["mlflow_run_id"] = tracker.run_id
    with tracker:
        registry.save_artifact(artifact_dir, model, meta, losses=result.history)
        tracker.log_training(cfg, meta, result.history, artifact_dir)
    if t.register:
        registry.register(cfg.lakehouse.path("registry"), artifact_dir)
    result.model_id, result.artifact_dir, result.metrics = model_id, str(artifact_dir), metrics
    result.mlflow_run_id = meta["mlflow_run_id"]
