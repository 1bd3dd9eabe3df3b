"""Fitting calibration maps for a trained model: in the trainer, and ``esmm calibrate``.

Reads the calibration day(s) of ``curated/examples`` (label-mature rows only),
runs the model on them in batches (:func:`esmm.evaluation.metrics.predict_rows`), fits
:class:`esmm.calibration.maps.CalibrationMaps` and saves them into the artifact
(``calibration.pt``, plus a ``calibration`` summary in ``meta.json``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from esmm.calibration.maps import CalibrationError, CalibrationMaps
from esmm.config.schema import CalibrationConfig, Config, FeatureSpec
from esmm.data.examples import Snapshot, resolve_snapshot


def check_fields(cal: CalibrationConfig, spec: FeatureSpec) -> None:
    """Every field with its own maps must be a single-valued categorical feature of the model."""
    names = [f.name for f in spec.categorical if not getattr(f, "multi", False)]
    bad = [f for f in cal.fields if f not in names]
    if bad:
        raise CalibrationError(
            f"calibration.fields: {bad} are not single-valued categorical "
            f"features of the model's feature spec ({names}); set calibration.fields to some of them or []"
        )


def report_fields(cal: CalibrationConfig, spec: FeatureSpec) -> list[str]:
    """The ``calibration.report_fields`` the model has (a breakdown, so the others are just absent)."""
    names = {f.name for f in spec.categorical}
    return [f for f in cal.report_fields if f in names]


def check_dates(cal_dates: list[str], train_dates: list[str], eval_dates: list[str]) -> None:
    """A calibration day must be held out: not trained on, not evaluated on."""
    for name, other in (("training", train_dates), ("evaluation", eval_dates)):
        both = sorted(set(cal_dates) & set(other))
        if both:
            raise CalibrationError(
                f"calibration.dates {both} are also {name} days; calibrate on a "
                f"held-out label-mature day (the {name} metrics would be in-sample)"
            )


def predict_snapshot(
    model: torch.nn.Module,
    snapshot: Snapshot,
    spec: FeatureSpec,
    fields: list[str],
    mature_only: bool = True,
    batch_size: int = 16384,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(raw predictions {pctr, pcvr, pctcvr}, click, conversion, {field: encoded values}), all [n]."""
    from esmm.evaluation.metrics import predict_rows

    # Streams batches of batch_size rows (train.eval_batch_size): no whole-day [n, W] matrix.
    pred, cols = predict_rows(
        model,
        snapshot,
        spec,
        list(dict.fromkeys(["click", "conversion", *fields])),
        mature_only=mature_only,
        batch_size=batch_size,
        device=device,
    )
    if len(cols["click"]) == 0:
        raise CalibrationError(
            f"{snapshot.table_path} v{snapshot.version}: no label-mature row on "
            f"{list(snapshot.dates)}; calibrate on a day whose labels are mature"
        )
    values = {f: np.asarray(cols[f], dtype=np.int64) for f in fields}
    return pred, cols["click"], cols["conversion"], values


def fit_on_snapshot(
    model: torch.nn.Module,
    model_id: str,
    snapshot: Snapshot,
    spec: FeatureSpec,
    cal: CalibrationConfig,
    *,
    mature_only: bool = True,
    batch_size: int = 16384,
    device: str | torch.device = "cpu",
) -> CalibrationMaps:
    """The maps of ``model`` fitted on ``snapshot`` (the calibration day(s))."""
    check_fields(cal, spec)
    pred, click, conv, values = predict_snapshot(model, snapshot, spec, cal.fields, mature_only, batch_size, device)
    return CalibrationMaps.fit(
        model_id,
        pred["pctr"],
        pred["pctcvr"],
        click,
        conv,
        values,
        method=cal.method,
        fields=cal.fields,
        min_count=cal.min_count,
        dates=list(snapshot.dates),
    )


def evaluate_calibration(
    model: torch.nn.Module,
    maps: Optional[CalibrationMaps],
    snapshot: Snapshot,
    spec: FeatureSpec,
    report_fields: list[str],
    *,
    mature_only: bool = True,
    batch_size: int = 16384,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, float], dict[str, Any]]:
    """Calibration metrics (raw and, with maps, calibrated) of ``model`` on ``snapshot``'s rows."""
    from esmm.calibration.metrics import calibration_report

    fields = list(dict.fromkeys([*report_fields, *(maps.fields if maps else [])]))
    pred, click, conv, values = predict_snapshot(model, snapshot, spec, fields, mature_only, batch_size, device)
    calibrated = None
    if maps is not None:
        pctr, _, pctcvr = maps.apply(pred["pctr"], pred["pctcvr"], values)
        calibrated = {"pctr": pctr, "pctcvr": pctcvr}
    return calibration_report(pred, click, conv, {f: values[f] for f in report_fields}, calibrated)


def fit_calibration(
    cfg: Config, model_id: str, dates: list[str], *, eval_dates: Optional[list[str]] = None, log=print
) -> CalibrationMaps:
    """``esmm calibrate --model ID --date D``: fit maps for a registered model and save them.

    Uses the model's own examples table and Delta version (from its meta.json).
    ``eval_dates`` (default: the model's evaluation days) get raw and calibrated
    metrics, stored in ``meta.json`` under ``calibration.metrics``.
    """
    from esmm.calibration.metrics import format_report
    from esmm.evaluation.metrics import eval_maturity
    from esmm.registry import artifacts as registry

    rows = [r for r in registry.list_models(cfg.lakehouse.path("registry")) if r["model_id"] == model_id]
    artifact_dir = Path(rows[0]["artifact_dir"] if rows else Path(cfg.lakehouse.path("models")) / model_id)
    model, meta = registry.load_model(artifact_dir)
    spec = registry.spec_of(meta)
    eval_dates = list(eval_dates if eval_dates is not None else meta["window"].get("eval_dates") or [])
    check_dates(dates, list(meta["examples"]["dates"]), eval_dates)
    table, version = meta["examples"]["path"], meta["examples"]["version"]
    try:
        snap = resolve_snapshot(table, dates, version)
    except FileNotFoundError:
        snap = resolve_snapshot(table, dates)  # the day was written after the model's version
    maps = fit_on_snapshot(
        model,
        model_id,
        snap,
        spec,
        cfg.calibration,
        # Maps are fitted on final labels only, whatever the training used.
        mature_only=True,
        batch_size=cfg.train.eval_batch_size,
    )
    summary = maps.summary()
    if eval_dates:
        eval_snap = resolve_snapshot(table, eval_dates)
        flat, per_value = evaluate_calibration(
            model,
            maps,
            eval_snap,
            spec,
            report_fields(cfg.calibration, spec),
            mature_only=eval_maturity(eval_snap, log) > 0,
            batch_size=cfg.train.eval_batch_size,
        )
        summary.update(metrics=flat, per_value=per_value, eval_dates=eval_dates)
        log(format_report(flat))
    maps.save(artifact_dir)
    meta["calibration"] = {**summary, "fitted_at": dt.datetime.now(dt.timezone.utc).isoformat()}
    registry.rewrite_meta(artifact_dir, meta)
    log(
        f"calibrated {model_id} on {dates}: {maps.calibration_id} ({maps.method}, fields {maps.fields}) "
        f"-> {artifact_dir}/calibration.pt"
    )
    return maps


def after_training(
    cfg: Config,
    model: torch.nn.Module,
    model_id: str,
    examples: Snapshot,
    artifact_dir: str | Path,
    device: str | torch.device = "cpu",
    log=print,
) -> tuple[dict[str, float], dict[str, Any]]:
    """The trainer's calibration stage (rank 0, before the artifact's meta.json is written).

    With ``calibration.enabled`` and ``calibration.dates``: fit the maps on those
    days (same examples version), save ``calibration.pt``. Either way, with
    ``train.eval_dates``: the calibration metrics on them, raw and (with maps)
    calibrated. Returns (flat metrics for the registry, ``meta["calibration"]``).
    """
    from esmm.evaluation.metrics import eval_maturity

    t, cal = cfg.train, cfg.calibration
    spec = cfg.features
    maps = None
    section: dict[str, Any] = {"calibrated": False}
    if cal.enabled and cal.dates:
        check_dates(cal.dates, list(examples.dates), list(t.eval_dates))
        check_fields(cal, spec)
        snap = resolve_snapshot(examples.table_path, list(cal.dates), examples.version)
        try:
            # Maps are fitted on final labels only, whatever the training used.
            maps = fit_on_snapshot(
                model, model_id, snap, spec, cal, mature_only=True, batch_size=t.eval_batch_size, device=device
            )
        except CalibrationError as e:
            # A day without a conversion cannot be calibrated on; the model is still a
            # model: it is saved uncalibrated, with the reason, and scores flagged so.
            section = {"calibrated": False, "reason": str(e)}
            log(f"calibration: NOT fitted: {e}")
        else:
            maps.save(artifact_dir)
            section = {"calibrated": True, **maps.summary()}
            log(f"calibration: {maps.calibration_id} fitted on {cal.dates} ({maps.method}, fields {maps.fields})")
    elif cal.enabled:
        log(
            "calibration: no calibration.dates, the artifact is uncalibrated "
            "(fit later with `esmm calibrate --model ID --date D`)"
        )
    flat: dict[str, float] = {}
    if t.eval_dates:
        snap = resolve_snapshot(examples.table_path, list(t.eval_dates), examples.version)
        flat, per_value = evaluate_calibration(
            model,
            maps,
            snap,
            spec,
            report_fields(cal, spec),
            mature_only=eval_maturity(snap, log=lambda _m: None) > 0,  # the trainer said the share
            batch_size=t.eval_batch_size,
            device=device,
        )
        section.update(metrics=flat, per_value=per_value, eval_dates=list(t.eval_dates))
    return flat, section
