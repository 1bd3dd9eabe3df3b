"""Experiment tracking with MLflow: the one module that imports ``mlflow`` (lazily).

Rank 0 of a training run logs, when training has finished, one MLflow run
(:func:`start_run` then :meth:`Tracker.log_training`):

* tags: ``model_id``, ``model_kind``, ``seed``, ``examples_table``,
  ``examples_version`` (the Delta version trained on), ``train_dates``,
  ``eval_dates``, ``feature_mapping_id``, ``world_size``, ``code_version``, and
  ``tracking.tags`` of the configuration (the nightly adds ``run_date`` and
  ``run_id``; ``esmm bench quality`` its ``bench_run_id`` and parent run);
* params: the model and train configuration sections, flattened
  (``model.kind``, ``train.lr``, ...);
* metrics: ``loss/<part>`` per recorded step (``step`` = optimizer step), the
  evaluation metrics (``ctcvr_auc``, ...) at the last step, and ``train/seconds``,
  ``train/samples``, ``train/samples_per_s``;
* artifacts: the model's artifact folder under ``model/``.

The registry Delta table stays the source of truth that scoring reads; its row
of the model records the MLflow run id (``mlflow_run_id``), and so does the
artifact's ``meta.json``. Tracking is never on the critical path: when it is
disabled or the store cannot be reached, :class:`Tracker` does nothing (the
run id is None), and the first failure is said once on stderr.

The embedded default store is a local MLflow file store at
``<lakehouse.root>/mlruns`` (``mlflow-skinny`` has no SQL store without extra
packages, and a fresh SQLite store costs seconds of migrations); a team points
``tracking.uri`` at its tracking server. Read it with ``MlflowClient(tracking_uri=...)``
or any MLflow UI started on that folder.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional

from esmm.config.schema import Config

# A loss record (esmm.training.trainer's history, an artifact's losses.json) holds these positions;
# every other key is a loss part ("total", "ctr", "ctcvr", ...).
LOSS_RECORD_KEYS = ("step", "epoch", "samples", "time")

_BATCH = 1000  # MLflow's limit of metrics per log_batch call


def resolve_uri(cfg: Config) -> Optional[str]:
    """The tracking URI of ``cfg``: ``tracking.uri``, a local folder as a ``file:`` URI,
    or ``<lakehouse.root>/mlruns`` when empty. None when the root is remote and no
    URI is set (an MLflow file store needs a local path)."""
    uri = cfg.tracking.uri.strip()
    if uri == "databricks" or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri):
        return uri
    if uri:
        return Path(uri).expanduser().resolve().as_uri()
    if "://" in cfg.lakehouse.root:
        return None
    return (Path(cfg.lakehouse.root).expanduser().resolve() / "mlruns").as_uri()


def flatten(prefix: str, value: Any) -> dict[str, str]:
    """``{"model": {"kind": "esmm", "tower": [64, 32]}}`` -> ``{"model.kind": "esmm",
    "model.tower": "[64, 32]"}``: MLflow params are flat strings."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: value if isinstance(value, str) else json.dumps(value)}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class Tracker:
    """One MLflow run, or nothing when ``run_id`` is None.

    Every method swallows tracking errors after saying the first one on
    stderr, so a lost tracking server never fails a training run. Used as a
    context manager, the run ends FINISHED, or FAILED when the block raises.
    """

    def __init__(self, client: Any = None, run_id: Optional[str] = None, uri: str = "") -> None:
        self.client, self.run_id, self.uri = client, run_id, uri

    def __bool__(self) -> bool:
        return self.run_id is not None

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("FAILED" if exc_type else "FINISHED")

    def _call(self, what: str, method: str, *args, **kwargs) -> None:
        if self.run_id is None:
            return
        try:
            getattr(self.client, method)(self.run_id, *args, **kwargs)
        except Exception as e:  # any store error: tracking is best effort
            _say_once(
                f"esmm: MLflow tracking at {self.uri} failed to {what} for run {self.run_id} "
                f"({_first_line(e)}); continuing without it"
            )
            self.run_id = None

    def log_params(self, params: dict[str, str]) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call
            self._call("log params", "log_batch", params=items[i : i + 100])

    def log_metrics(
        self, metrics: dict[str, Any], step: int = 0, history: Optional[list[dict[str, Any]]] = None
    ) -> None:
        """``metrics`` at ``step`` (non-numeric and non-finite values are left out), and
        each record of ``history`` (``{"step", "time", <loss part>: float, ...}``) as
        ``loss/<part>`` at its step."""
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if _finite(v)]
        for rec in history or []:
            ts = int(rec.get("time", now / 1000) * 1000)
            items += [
                Metric(f"loss/{k}", float(v), ts, int(rec["step"]))
                for k, v in rec.items()
                if k not in LOSS_RECORD_KEYS and _finite(v)
            ]
        for i in range(0, len(items), _BATCH):
            self._call("log metrics", "log_batch", metrics=items[i : i + _BATCH])

    def log_artifacts(self, folder: str | Path, path: str) -> None:
        self._call("log artifacts", "log_artifacts", str(folder), path)

    def log_text(self, text: str, name: str) -> None:
        self._call("log a text artifact", "log_text", text, name)

    def log_training(
        self, cfg: Config, meta: dict[str, Any], history: list[dict[str, Any]], artifact_dir: str | Path
    ) -> None:
        """Params, per-step losses, evaluation metrics and the artifact folder of a model."""
        if self.run_id is None:
            return
        training = meta.get("training") or {}
        self.log_params(
            {
                **flatten("model", meta.get("model") or {}),
                **flatten("train", meta.get("train") or {}),
                "feature_mapping_id": meta.get("feature_mapping_id", ""),
            }
        )
        summary = {
            "train/seconds": training.get("seconds"),
            "train/samples": training.get("samples"),
            "train/samples_per_s": training.get("samples_per_s"),
        }
        self.log_metrics(
            {**(meta.get("metrics") or {}), **summary}, step=int(training.get("steps") or 0), history=history
        )
        self.log_artifacts(artifact_dir, "model")

    def end(self, status: str = "FINISHED") -> None:
        self._call("end the run", "set_terminated", status)
        self.run_id = None


_said: set[str] = set()


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _say_once(msg: str) -> None:
    if msg not in _said:
        _said.add(msg)
        print(msg, file=sys.stderr, flush=True)


def _client(uri: str):
    # Bounded retries: an unreachable server must cost seconds, not minutes (MLflow's
    # defaults retry 7 times with backoff). A user's own setting wins.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    if uri.startswith("file:"):
        # MLflow 3 keeps the file store in maintenance mode behind this opt-in; it is the
        # embedded default here because it needs no database and starts in milliseconds.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def start_run(cfg: Config, name: str, tags: Optional[dict[str, Any]] = None) -> Tracker:
    """Create a run named ``name`` in ``tracking.experiment`` with ``tracking.tags``
    and ``tags`` (which win). Returns a :class:`Tracker` that does nothing when tracking is
    disabled, the store is unreachable or ``mlflow`` is not installed (said once)."""
    if not cfg.tracking.enabled:
        return Tracker()
    uri = resolve_uri(cfg)
    if uri is None:
        _say_once(
            f"esmm: tracking.uri is empty and lakehouse.root {cfg.lakehouse.root} is not a "
            f"local folder; set tracking.uri to log to MLflow. Continuing without it"
        )
        return Tracker()
    try:
        client = _client(uri)
        exp = client.get_experiment_by_name(cfg.tracking.experiment)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(cfg.tracking.experiment)
        all_tags = {
            **cfg.tracking.tags,
            **{k: str(v) for k, v in (tags or {}).items() if v is not None},
            "mlflow.runName": name,
        }
        run = client.create_run(exp_id, tags=all_tags, run_name=name)
    except Exception as e:  # ImportError, unreachable server, bad store: never fatal
        _say_once(f"esmm: MLflow tracking at {uri} is unavailable ({_first_line(e)}); " f"continuing without it")
        return Tracker()
    return Tracker(client, run.info.run_id, uri)


def training_tags(
    cfg: Config,
    model_id: str,
    examples_table: str,
    examples_version: int,
    dates: list[str],
    world_size: int,
    code_version: str,
) -> dict[str, Any]:
    """The tags of a training run (see the module docstring)."""
    t = cfg.train
    return {
        "model_id": model_id,
        "model_kind": cfg.model.kind,
        "seed": t.seed,
        "examples_table": examples_table,
        "examples_version": examples_version,
        "train_dates": f"{dates[0]}..{dates[-1]}" if dates else "",
        "eval_dates": ",".join(t.eval_dates),
        "feature_mapping_id": cfg.features.mapping_id,
        "world_size": world_size,
        "code_version": code_version,
    }


def run_data(uri: str, run_id: str) -> dict[str, Any]:
    """What a run holds, for checks and tools: ``{"tags", "params", "metrics" (last
    values), "history": {loss metric: [(step, value), ...]}, "artifacts": [paths]}``."""
    client = _client(uri)
    run = client.get_run(run_id)
    history = {
        k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)]
        for k in run.data.metrics
        if k.startswith("loss/")
    }

    def walk(path: Optional[str]) -> list[str]:
        out = []
        for f in client.list_artifacts(run_id, path):
            out += walk(f.path) if f.is_dir else [f.path]
        return out

    return {
        "tags": dict(run.data.tags),
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
        "history": history,
        "artifacts": walk(None),
        "status": run.info.status,
    }
