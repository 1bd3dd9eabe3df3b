"""Model artifacts (a folder per model id) and the model registry (a Delta table).

Artifact folder ``<lakehouse models>/<model_id>/``:

* ``model.pt``: the network's ``state_dict`` only (loaded with ``weights_only=True``:
  no pickled code runs when a model is loaded);
* ``meta.json``: everything needed to rebuild and trust the model::

    {"format": 1, "model_id", "kind", "created_at",
     "model": ModelConfig as a dict, "features": FeatureSpec as a dict,
     "feature_mapping_id",
     "examples": {"path", "version", "dates"},   # the Delta snapshot trained on
     "window": {"train_start", "train_end", "eval_dates"},
     "train": TrainConfig as a dict, "training": {steps, samples, seconds, ...},
     "metrics": {name: float}, "code_version": git commit (+ "-dirty") or "unknown",
     "mlflow_run_id": the MLflow run of the training (null without tracking)}

* ``losses.json``: the trainer's per-step loss records, a JSON list of
  ``{"step", "epoch", "samples", "time", "total", <loss part>: float, ...}``
  (the mean over the ``train.log_every`` steps up to ``step``; rank 0's batches);
* ``reliability.png`` when the model was evaluated;
* ``calibration.pt`` when calibration maps were fitted (esmm/calibration/maps.py; a plain
  dict of tensors and strings, loaded with ``weights_only=True``), summarised in
  ``meta.json`` under ``"calibration"`` (id, method, fields, dates, metrics).

Registry table (Delta, ``cfg.lakehouse.path("registry")``), one row per model::

    model_id STRING, kind STRING, status STRING (candidate | champion | retired),
    created_at TIMESTAMP, updated_at TIMESTAMP, artifact_dir STRING,
    feature_mapping_id STRING, examples_version BIGINT, train_start STRING,
    train_end STRING, eval_dates STRING (comma separated),
    ctr_auc DOUBLE, cvr_auc_clicked DOUBLE, ctcvr_auc DOUBLE, pcvr_bias_all DOUBLE,
    metrics_json STRING, code_version STRING, mlflow_run_id STRING (nullable)

A registry written before ``mlflow_run_id`` existed gains the column (null for its
old rows) with the first model registered by this code.

The registry is written with the ``deltalake`` package (no JVM), so that rank 0
of a torchrun job can register its model; Spark reads it like any Delta table.
Every change is one Delta commit (``promote`` retires the old champion and
crowns the new one in the same commit), so readers never see two champions or none.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import subprocess
from pathlib import Path
from typing import Any, Optional

import torch

from esmm.config.loader import section_from_dict
from esmm.config.schema import REPO_ROOT, FeatureSpec, ModelConfig
from esmm.model.network import EntireSpaceModel, build_model
from esmm.util.files import atomic_torch_save, atomic_write_bytes
from esmm.util.timeutil import utc_now

META_FORMAT = 1
STATUSES = ("candidate", "champion", "retired")
HEADLINE_METRICS = ("ctr_auc", "cvr_auc_clicked", "ctcvr_auc", "pcvr_bias_all")
LOSSES_FILE = "losses.json"


def code_version() -> str:
    """Git commit of the code (with ``-dirty`` for uncommitted changes), else 'unknown'."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_artifact(
    artifact_dir: str | Path,
    model: torch.nn.Module,
    meta: dict[str, Any],
    losses: Optional[list[dict[str, float]]] = None,
) -> Path:
    """Write ``model.pt`` (state dict of the unwrapped model), ``losses.json`` (when
    given) and ``meta.json``.

    Each file is written to a temporary name and renamed, and ``meta.json`` goes
    last, so a folder with a ``meta.json`` always holds complete weights.
    """
    d = Path(artifact_dir)
    d.mkdir(parents=True, exist_ok=True)
    net = getattr(model, "module", model)  # unwrap DDP
    atomic_torch_save({k: v.detach().cpu() for k, v in net.state_dict().items()}, d / "model.pt")
    if losses is not None:
        atomic_write_bytes(d / LOSSES_FILE, json.dumps(losses).encode())
    meta = {"format": META_FORMAT, **meta}
    atomic_write_bytes(d / "meta.json", json.dumps(meta, indent=2, sort_keys=True, default=_json_default).encode())
    return d


def rewrite_meta(artifact_dir: str | Path, meta: dict[str, Any]) -> None:
    """Replace an artifact's ``meta.json`` atomically (e.g. after fitting its calibration)."""
    atomic_write_bytes(
        Path(artifact_dir) / "meta.json", json.dumps(meta, indent=2, sort_keys=True, default=_json_default).encode()
    )


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, (dt.date, dt.datetime)):
        return o.isoformat()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"cannot write {type(o).__name__} to meta.json")


def read_meta(artifact_dir: str | Path) -> dict[str, Any]:
    path = Path(artifact_dir) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{path}: no model artifact here (meta.json missing); "
            f"list models with `esmm models` or check the model id"
        ) from e
    if meta.get("format") != META_FORMAT:
        raise ValueError(f"{path}: artifact format {meta.get('format')!r}, this code reads {META_FORMAT}")
    return meta


def read_losses(artifact_dir: str | Path) -> list[dict[str, float]]:
    """The per-step loss records of an artifact (``losses.json``); [] for a model
    saved without them."""
    path = Path(artifact_dir) / LOSSES_FILE
    if not path.is_file():
        return []
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not a JSON list of loss records: {e}") from e


def load_model(
    artifact_dir: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[EntireSpaceModel, dict[str, Any]]:
    """Rebuild the network of an artifact and load its weights (``weights_only=True``).

    Returns ``(model in eval mode, meta dict)``. The feature spec to encode inputs
    with is ``meta["features"]`` (``FeatureSpec``: :func:`spec_of`); its
    ``mapping_id`` equals ``meta["feature_mapping_id"]`` (checked here).
    """
    meta = read_meta(artifact_dir)
    model_cfg = section_from_dict(ModelConfig, meta["model"], "meta.model")
    spec = spec_of(meta)
    if spec.mapping_id != meta["feature_mapping_id"]:
        raise ValueError(
            f"{artifact_dir}/meta.json: features hash to {spec.mapping_id} but the "
            f"artifact says {meta['feature_mapping_id']}; the artifact is corrupt"
        )
    model = build_model(model_cfg, spec)
    path = Path(artifact_dir) / "model.pt"
    state = torch.load(path, map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, meta


def spec_of(meta: dict[str, Any]) -> FeatureSpec:
    """The FeatureSpec stored in an artifact's meta.json."""
    return section_from_dict(FeatureSpec, meta["features"], "meta.features")


# --------------------------------------------------------------------------- registry table


def _schema():
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    return pa.schema(
        [
            ("model_id", pa.string()),
            ("kind", pa.string()),
            ("status", pa.string()),
            ("created_at", ts),
            ("updated_at", ts),
            ("artifact_dir", pa.string()),
            ("feature_mapping_id", pa.string()),
            ("examples_version", pa.int64()),
            ("train_start", pa.string()),
            ("train_end", pa.string()),
            ("eval_dates", pa.string()),
            *[(m, pa.float64()) for m in HEADLINE_METRICS],
            ("metrics_json", pa.string()),
            ("code_version", pa.string()),
            ("mlflow_run_id", pa.string()),
        ]
    )


_now = utc_now


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def register(registry_path: str, artifact_dir: str | Path, status: str = "candidate") -> dict[str, Any]:
    """Append the artifact's row to the registry (creating the table). Returns the row.

    Registering the same model id twice is refused (the registry is keyed by id).
    """
    import pyarrow as pa
    from deltalake import write_deltalake

    if status not in ("candidate",):
        raise ValueError(f"register: new models enter as 'candidate', not {status!r}; use promote()")
    meta = read_meta(artifact_dir)
    if any(r["model_id"] == meta["model_id"] for r in list_models(registry_path)):
        raise ValueError(f"{registry_path}: model {meta['model_id']} is already registered")
    metrics = meta.get("metrics") or {}
    now = _now()

    def num(name: str) -> Optional[float]:
        v = metrics.get(name)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    row = {
        "model_id": meta["model_id"],
        "kind": meta["kind"],
        "status": status,
        "created_at": now,
        "updated_at": now,
        "artifact_dir": str(Path(artifact_dir).resolve()),
        "feature_mapping_id": meta["feature_mapping_id"],
        "examples_version": meta["examples"]["version"],
        "train_start": meta["window"]["train_start"],
        "train_end": meta["window"]["train_end"],
        "eval_dates": ",".join(meta["window"].get("eval_dates") or []),
        **{m: num(m) for m in HEADLINE_METRICS},
        "metrics_json": json.dumps(metrics, sort_keys=True),
        "code_version": meta.get("code_version"),
        "mlflow_run_id": meta.get("mlflow_run_id"),
    }
    table = pa.Table.from_pylist([row], schema=_schema())
    if _lacks_columns(registry_path, table.schema.names):
        # An older registry: add the new columns in this append (old rows read them as null).
        # Only delta-rs's rust writer merges schemas; every other append keeps the default writer.
        write_deltalake(registry_path, table, mode="append", engine="rust", schema_mode="merge")
    else:
        write_deltalake(registry_path, table, mode="append")
    return row


def _lacks_columns(registry_path: str, names: list[str]) -> bool:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        have = set(DeltaTable(registry_path).schema().to_pyarrow().names)
    except TableNotFoundError:
        return False
    return bool(set(names) - have)


def list_models(registry_path: str, status: Optional[str] = None) -> list[dict[str, Any]]:
    """Registry rows (newest first), optionally only those of one status; [] without a table."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        t = DeltaTable(registry_path)
    except TableNotFoundError:
        return []
    rows = t.to_pyarrow_table().to_pylist()
    if status is not None:
        rows = [r for r in rows if r["status"] == status]
    return sorted(rows, key=lambda r: r["created_at"], reverse=True)


def champion(registry_path: str) -> Optional[dict[str, Any]]:
    """The registry row of the current champion, or None."""
    rows = list_models(registry_path, "champion")
    return rows[0] if rows else None


def promote(registry_path: str, model_id: str) -> None:
    """Make ``model_id`` the champion and retire the previous one, in one Delta commit."""
    from deltalake import DeltaTable

    if not any(r["model_id"] == model_id for r in list_models(registry_path)):
        raise ValueError(
            f"{registry_path}: no model {model_id!r} in the registry; " f"see list_models() / `esmm models`"
        )
    q = _quote(model_id)
    DeltaTable(registry_path).update(
        predicate=f"status = 'champion' OR model_id = {q}",
        updates={
            "status": f"CASE WHEN model_id = {q} THEN 'champion' ELSE 'retired' END",
            "updated_at": f"CAST('{_now().strftime('%Y-%m-%dT%H:%M:%S.%fZ')}' AS TIMESTAMP)",
        },
    )
