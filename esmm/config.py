"""Typed configuration: YAML files plus ``--set key=value`` overrides, loaded once.

Every job builds one :class:`Config` at its entry point (``load_config``) and
passes it (or the section it needs) down. The dataclass defaults below are the
embedded defaults a single machine runs on; ``conf/default.yaml`` spells the
same values out for people to copy and edit (a test keeps the two identical).

Errors are raised as :class:`ConfigError` naming the dotted key, before any
Spark or torch work starts: an unknown key, a value of the wrong type, or an
impossible value (a negative window, an end date before the start date).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONF = REPO_ROOT / "conf" / "default.yaml"


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type, or an impossible value."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str, key: str = "duration") -> int:
    """``"90s"``, ``"5m"``, ``"2h"``, ``"7d"`` -> whole seconds (>= 0)."""
    m = _DURATION.match(str(value))
    if not m:
        raise ConfigError(
            f"{key}: {value!r} is not a duration; write a non-negative number with a unit, "
            f"e.g. '30s', '5m', '2h', '7d'"
        )
    return int(float(m.group(1)) * _UNIT_SECONDS[m.group(2)])


def parse_date(value: str, key: str = "date") -> dt.date:
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError as e:
        raise ConfigError(f"{key}: {value!r} is not a date in yyyy-MM-dd form") from e


def date_range(start: str, end: str) -> list[str]:
    """Inclusive list of ``yyyy-MM-dd`` strings; raises if end < start."""
    d0, d1 = parse_date(start, "start"), parse_date(end, "end")
    if d1 < d0:
        raise ConfigError(f"end date {end} is before start date {start}")
    return [(d0 + dt.timedelta(days=i)).isoformat() for i in range((d1 - d0).days + 1)]


def _require(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


# --------------------------------------------------------------------------- sections


@dataclass
class TablesConfig:
    """Table locations, relative to ``lakehouse.root`` unless absolute (or a URI)."""

    impressions: str = "raw/impressions"
    clicks: str = "raw/clicks"
    conversions: str = "raw/conversions"
    truth: str = "sim/truth"
    labels: str = "curated/labels"
    quarantine: str = "curated/quarantine"
    examples: str = "curated/examples"
    registry: str = "models/registry"
    models: str = "models/artifacts"
    scores: str = "serving/scores"
    runs: str = "ops/runs"
    reports: str = "reports"


@dataclass
class LakehouseConfig:
    root: str = "./lakehouse"
    tables: TablesConfig = field(default_factory=TablesConfig)

    def path(self, table: str) -> str:
        """Absolute location of a table named in :class:`TablesConfig`."""
        rel = getattr(self.tables, table)
        if "://" in rel or rel.startswith("/"):
            return rel
        if "://" in self.root:
            return self.root.rstrip("/") + "/" + rel
        return str((Path(self.root).expanduser().resolve() / rel))


@dataclass
class SourceConfig:
    """Where a raw source lives and in which format (producers often land files first)."""

    format: str = "delta"  # delta | json | parquet
    path: Optional[str] = None  # default: the lakehouse table of the same name

    def validate(self, key: str) -> None:
        _require(self.format in ("delta", "json", "parquet"), f"{key}.format",
                 f"{self.format!r} is not one of delta, json, parquet")


@dataclass
class SourcesConfig:
    impressions: SourceConfig = field(default_factory=SourceConfig)
    clicks: SourceConfig = field(default_factory=SourceConfig)
    conversions: SourceConfig = field(default_factory=SourceConfig)


def _default_local_conf() -> dict[str, str]:
    # Sized for a laptop / 2-core CI box; a cluster's spark-submit settings win.
    return {
        "spark.sql.shuffle.partitions": "8",
        "spark.default.parallelism": "4",
        "spark.driver.memory": "6g",
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.databricks.delta.snapshotPartitions": "2",
    }


@dataclass
class SparkConfig:
    """``master`` and ``local_conf`` apply only when no spark-submit launched us."""

    app_name: str = "esmm"
    master: str = "local[*]"
    local_conf: dict[str, str] = field(default_factory=_default_local_conf)
    conf: dict[str, str] = field(default_factory=lambda: {"spark.sql.session.timeZone": "UTC"})


@dataclass
class CategoricalField:
    """A categorical feature hashed into ``buckets`` embedding rows (row 0 = NULL)."""

    name: str = ""
    column: Optional[str] = None  # raw column; default: ``name``
    buckets: int = 1000

    @property
    def source(self) -> str:
        return self.column or self.name

    def validate(self, key: str) -> None:
        _require(bool(self.name), f"{key}.name", "must be a non-empty string")
        _require(self.buckets >= 2, f"{key}.buckets", f"{self.buckets} must be >= 2")


@dataclass
class NumericField:
    """A numeric feature: NaN/inf/NULL -> ``fill``, then transform, then clip."""

    name: str = ""
    column: Optional[str] = None
    transform: str = "none"  # none | log1p
    clip_min: Optional[float] = None
    clip_max: Optional[float] = None
    fill: float = 0.0

    @property
    def source(self) -> str:
        return self.column or self.name

    def validate(self, key: str) -> None:
        _require(bool(self.name), f"{key}.name", "must be a non-empty string")
        _require(self.transform in ("none", "log1p"), f"{key}.transform",
                 f"{self.transform!r} is not one of none, log1p")
        if self.clip_min is not None and self.clip_max is not None:
            _require(self.clip_min <= self.clip_max, f"{key}.clip_max",
                     f"{self.clip_max} is below clip_min {self.clip_min}")


def _default_categorical() -> list[CategoricalField]:
    return [
        CategoricalField("user_id", buckets=200_000),
        CategoricalField("item_id", buckets=100_000),
        CategoricalField("user_gender", buckets=4),
        CategoricalField("user_age", buckets=10),
        CategoricalField("user_city", buckets=2_000),
        CategoricalField("item_category", buckets=500),
        CategoricalField("item_brand", buckets=5_000),
        CategoricalField("item_shop", buckets=20_000),
        CategoricalField("position", buckets=16),
        CategoricalField("device", buckets=8),
        CategoricalField("hour", buckets=32),
    ]


def _default_numeric() -> list[NumericField]:
    return [
        NumericField("price", transform="log1p", clip_min=0.0, clip_max=12.0),
        NumericField("item_rating", transform="none", clip_min=0.0, clip_max=5.0),
        NumericField("user_activity", transform="log1p", clip_min=0.0, clip_max=10.0),
    ]


@dataclass
class FeatureSpec:
    """The model's inputs, mapped identically by the feature job and the scorer."""

    categorical: list[CategoricalField] = field(default_factory=_default_categorical)
    numeric: list[NumericField] = field(default_factory=_default_numeric)
    hash_version: int = 1

    def validate(self, key: str) -> None:
        names = [f.name for f in self.categorical] + [f.name for f in self.numeric]
        dup = sorted({n for n in names if names.count(n) > 1})
        _require(not dup, key, f"feature names must be unique, repeated: {dup}")
        _require(len(self.categorical) > 0, f"{key}.categorical", "needs at least one field")
        for i, f in enumerate(self.categorical):
            f.validate(f"{key}.categorical[{i}]")
        for i, f in enumerate(self.numeric):
            f.validate(f"{key}.numeric[{i}]")

    @property
    def mapping_id(self) -> str:
        """Content hash of everything that decides an example's column values."""
        payload = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return "fm-" + hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass
class LabelConfig:
    """Windows of the entire-space label join (durations like '5m', '1d', '7d')."""

    click_skew: str = "5m"
    click_window: str = "1d"
    attribution_window: str = "7d"
    max_lateness: str = "1d"
    max_bad_fraction: float = 0.01

    def validate(self, key: str) -> None:
        for name in ("click_skew", "click_window", "attribution_window", "max_lateness"):
            parse_duration(getattr(self, name), f"{key}.{name}")
        _require(0.0 <= self.max_bad_fraction <= 1.0, f"{key}.max_bad_fraction",
                 f"{self.max_bad_fraction} is outside [0, 1]")

    def seconds(self, name: str) -> int:
        return parse_duration(getattr(self, name), name)


@dataclass
class GenerateConfig:
    """Synthetic click logs (see pipelines/generate.py for the model of the world)."""

    start_date: str = "2026-11-01"
    days: int = 7
    impressions_per_day: int = 100_000
    seed: int = 42
    ctr: float = 0.04  # clicked impressions / impressions
    cvr: float = 0.05  # converting clicked impressions / clicked impressions
    n_users: int = 100_000
    n_items: int = 50_000
    multi_click_rate: float = 0.05  # share of clicked impressions clicked twice
    duplicate_rate: float = 0.01
    late_rate: float = 0.01  # share of events arriving in the next dt
    no_click_id_rate: float = 0.10  # conversions that need last-touch attribution
    malformed_rate: float = 0.0
    conversion_delay_median: str = "2h"
    partitions_per_day: int = 2

    def validate(self, key: str) -> None:
        parse_date(self.start_date, f"{key}.start_date")
        parse_duration(self.conversion_delay_median, f"{key}.conversion_delay_median")
        _require(self.days >= 1, f"{key}.days", f"{self.days} must be >= 1")
        _require(self.impressions_per_day >= 1, f"{key}.impressions_per_day",
                 f"{self.impressions_per_day} must be >= 1")
        _require(self.n_users >= 1 and self.n_items >= 1, f"{key}.n_users",
                 "n_users and n_items must be >= 1")
        _require(self.partitions_per_day >= 1, f"{key}.partitions_per_day", "must be >= 1")
        _require(0.0 < self.ctr < 0.5, f"{key}.ctr", f"{self.ctr} must be in (0, 0.5)")
        _require(0.0 < self.cvr < 0.5, f"{key}.cvr", f"{self.cvr} must be in (0, 0.5)")
        for name in ("multi_click_rate", "duplicate_rate", "late_rate", "no_click_id_rate",
                     "malformed_rate"):
            v = getattr(self, name)
            _require(0.0 <= v <= 1.0, f"{key}.{name}", f"{v} is outside [0, 1]")

    @property
    def dates(self) -> list[str]:
        d0 = parse_date(self.start_date)
        return [(d0 + dt.timedelta(days=i)).isoformat() for i in range(self.days)]


MODEL_KINDS = ("naive", "esmm", "escm2-ips", "escm2-dr")


def _default_tower() -> list[int]:
    return [360, 200, 80]  # the ESMM paper's MLP (Ma et al. 2018, section 3.2)


@dataclass
class ModelConfig:
    """Architecture and loss of one model (see esmm/model.py, esmm/losses.py).

    ``kind``: naive | esmm | escm2-ips | escm2-dr. ``tower``: hidden sizes of
    each tower (CTR, CVR, and DR's imputation tower). ``cvr_risk_weight`` is
    ESCM2's lambda on the counterfactual CVR risk, ``imputation_weight`` the
    weight of DR's imputation loss, ``propensity_clip`` the lower clip of the
    detached pCTR used as propensity (so IPS weights are at most 1/clip).
    """

    kind: str = "esmm"
    embedding_dim: int = 18
    tower: list[int] = field(default_factory=_default_tower)
    dropout: float = 0.1
    sparse_embedding: bool = True
    ctcvr_weight: float = 1.0
    cvr_risk_weight: float = 1.0
    imputation_weight: float = 1.0
    propensity_clip: float = 0.02

    def validate(self, key: str) -> None:
        _require(self.kind in MODEL_KINDS, f"{key}.kind",
                 f"{self.kind!r} is not one of {', '.join(MODEL_KINDS)}")
        _require(self.embedding_dim >= 1, f"{key}.embedding_dim", f"{self.embedding_dim} must be >= 1")
        _require(len(self.tower) >= 1 and all(h >= 1 for h in self.tower), f"{key}.tower",
                 f"{self.tower} must be a non-empty list of positive sizes")
        _require(0.0 <= self.dropout < 1.0, f"{key}.dropout", f"{self.dropout} is outside [0, 1)")
        _require(0.0 < self.propensity_clip <= 1.0, f"{key}.propensity_clip",
                 f"{self.propensity_clip} is outside (0, 1]")
        for name in ("ctcvr_weight", "cvr_risk_weight", "imputation_weight"):
            _require(getattr(self, name) >= 0.0, f"{key}.{name}", f"{getattr(self, name)} must be >= 0")


@dataclass
class TrainConfig:
    """One training run: data window, optimisation, checkpoints (see esmm/train.py).

    ``train_start``/``train_end``: inclusive ``dt`` window of ``curated/examples``;
    ``eval_dates``: dates evaluated after training; ``examples_version``: Delta
    version to read (null = latest at start, recorded in the artifact).
    ``lr`` drives Adam on the towers; ``embedding_lr`` the sparse optimizer
    (``sparse_adam`` | ``adagrad``) of the embedding table. ``shuffle_buffer``
    is in rows. ``checkpoint_dir`` null = ``<lakehouse.root>/checkpoints``.
    ``fail_after_steps`` > 0 raises after that many steps (crash drills and tests).
    """

    train_start: Optional[str] = None
    train_end: Optional[str] = None
    eval_dates: list[str] = field(default_factory=list)
    examples_version: Optional[int] = None
    mature_only: bool = True
    epochs: int = 1
    batch_size: int = 1024
    lr: float = 0.001
    embedding_lr: float = 0.01
    embedding_optimizer: str = "sparse_adam"
    weight_decay: float = 0.0
    seed: int = 2018
    shuffle_buffer: int = 50000
    reader_workers: int = 2
    device: str = "auto"  # auto | cpu | cuda
    torch_threads: int = 0  # 0 = torch's default; 1 on a small shared CPU box
    checkpoint_every: int = 500
    checkpoint_dir: Optional[str] = None
    resume: bool = True
    max_steps: int = 0  # 0 = no limit
    fail_after_steps: int = 0
    log_every: int = 20
    progress: bool = True
    register: bool = True
    eval_batch_size: int = 16384

    def validate(self, key: str) -> None:
        for name in ("train_start", "train_end"):
            v = getattr(self, name)
            if v is not None:
                parse_date(v, f"{key}.{name}")
        if self.train_start and self.train_end:
            _require(parse_date(self.train_end) >= parse_date(self.train_start), f"{key}.train_end",
                     f"{self.train_end} is before train_start {self.train_start}")
        for i, d in enumerate(self.eval_dates):
            parse_date(d, f"{key}.eval_dates[{i}]")
        _require(self.epochs >= 1, f"{key}.epochs", f"{self.epochs} must be >= 1")
        _require(self.batch_size >= 1, f"{key}.batch_size", f"{self.batch_size} must be >= 1")
        _require(self.lr > 0 and self.embedding_lr > 0, f"{key}.lr", "lr and embedding_lr must be > 0")
        _require(self.embedding_optimizer in ("sparse_adam", "adagrad"), f"{key}.embedding_optimizer",
                 f"{self.embedding_optimizer!r} is not one of sparse_adam, adagrad")
        _require(self.device in ("auto", "cpu", "cuda"), f"{key}.device",
                 f"{self.device!r} is not one of auto, cpu, cuda")
        _require(self.shuffle_buffer >= 0, f"{key}.shuffle_buffer", "must be >= 0")
        _require(self.torch_threads >= 0, f"{key}.torch_threads", "must be >= 0")
        _require(self.reader_workers >= 1, f"{key}.reader_workers", "must be >= 1")
        _require(self.checkpoint_every >= 1, f"{key}.checkpoint_every", "must be >= 1")
        if self.examples_version is not None:
            _require(self.examples_version >= 0, f"{key}.examples_version", "must be >= 0")

    @property
    def dates(self) -> list[str]:
        if not (self.train_start and self.train_end):
            raise ConfigError("train.train_start and train.train_end must be set "
                              "(e.g. --train-start 2026-11-01 --train-end 2026-11-05)")
        return date_range(self.train_start, self.train_end)


@dataclass
class ScoreConfig:
    """Batch scoring into ``serving/scores`` (see pipelines/score.py)."""

    candidates: Optional[str] = None  # null: the day's raw impressions; else a table name or a Delta path
    date_column: str = "dt"  # partition column of the candidates selecting a day
    key_columns: list[str] = field(default_factory=lambda: ["impression_id"])
    batch_size: int = 4096  # rows per Arrow batch handed to the model
    torch_threads: int = 0  # 0: spark.task.cpus (one intra-op thread per core the task holds)
    write_mode: str = "replace"  # replace: replaceWhere dt = D | merge: MERGE on keys + dt

    def validate(self, key: str) -> None:
        _require(len(self.key_columns) > 0, f"{key}.key_columns", "needs at least one column")
        _require(self.batch_size >= 1, f"{key}.batch_size", f"{self.batch_size} must be >= 1")
        _require(self.torch_threads >= 0, f"{key}.torch_threads", f"{self.torch_threads} must be >= 0")
        _require(self.write_mode in ("replace", "merge"), f"{key}.write_mode",
                 f"{self.write_mode!r} is not one of replace, merge")


@dataclass
class GateConfig:
    """When a freshly trained candidate replaces the champion."""

    max_auc_drop: float = 0.002  # candidate CTCVR AUC may trail the champion's by at most this
    calibration_min: float = 0.8  # mean(pCTCVR) / observed CTCVR rate on the evaluation day
    calibration_max: float = 1.25

    def validate(self, key: str) -> None:
        _require(self.max_auc_drop >= 0.0, f"{key}.max_auc_drop", f"{self.max_auc_drop} must be >= 0")
        _require(0.0 < self.calibration_min <= 1.0 <= self.calibration_max, f"{key}.calibration_min",
                 f"need 0 < calibration_min <= 1 <= calibration_max, got "
                 f"[{self.calibration_min}, {self.calibration_max}]")


@dataclass
class NightlyConfig:
    """The nightly pipeline (pipelines/nightly.py): windows, gate, lock."""

    train_days: int = 7  # trailing window of days the model trains on (ends the day before eval)
    eval_day: str = "mature"  # mature: newest label-mature day | latest: the run date (immature labels)
    score_days: int = 1  # score the candidates of the last N days ending at the run date
    lock_path: Optional[str] = None  # null: <runs table>.lock (needs a local or shared POSIX path)
    lock_stale_after: str = "6h"  # a lock not heart-beaten for this long is taken over
    train_launcher: str = "inprocess"  # inprocess: train(config) in this process | torchrun
    torchrun_nproc: int = 2
    gate: GateConfig = field(default_factory=GateConfig)

    def validate(self, key: str) -> None:
        _require(self.train_days >= 1, f"{key}.train_days", f"{self.train_days} must be >= 1")
        _require(self.score_days >= 1, f"{key}.score_days", f"{self.score_days} must be >= 1")
        _require(self.eval_day in ("mature", "latest"), f"{key}.eval_day",
                 f"{self.eval_day!r} is not one of mature, latest")
        _require(self.train_launcher in ("inprocess", "torchrun"), f"{key}.train_launcher",
                 f"{self.train_launcher!r} is not one of inprocess, torchrun")
        _require(self.torchrun_nproc >= 1, f"{key}.torchrun_nproc", "must be >= 1")
        parse_duration(self.lock_stale_after, f"{key}.lock_stale_after")


@dataclass
class CalibrationConfig:
    """Post-training calibration of pCTR and pCTCVR (see esmm/calibration.py).

    ``dates``: held-out, label-mature day(s) to fit on, never a training or
    evaluation day (empty: the trainer saves an uncalibrated artifact; the
    nightly sets the day before its evaluation day). ``fields``: categorical
    features with a map per value; ``min_count``: positives of the map's target
    (clicks for pCTR, conversions for pCTCVR) a value needs on the calibration
    day for its own map, else it uses the global one.
    """

    enabled: bool = True
    method: str = "isotonic"  # isotonic | platt
    dates: list[str] = field(default_factory=list)
    fields: list[str] = field(default_factory=lambda: ["position"])
    min_count: int = 100
    report_fields: list[str] = field(default_factory=lambda: ["position", "device"])

    def validate(self, key: str) -> None:
        _require(self.method in ("isotonic", "platt"), f"{key}.method",
                 f"{self.method!r} is not one of isotonic, platt")
        _require(self.min_count >= 1, f"{key}.min_count", f"{self.min_count} must be >= 1")
        for i, d in enumerate(self.dates):
            parse_date(d, f"{key}.dates[{i}]")


@dataclass
class Config:
    lakehouse: LakehouseConfig = field(default_factory=LakehouseConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    features: FeatureSpec = field(default_factory=FeatureSpec)
    labels: LabelConfig = field(default_factory=LabelConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    nightly: NightlyConfig = field(default_factory=NightlyConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and build dataclasses recursively."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (dt.date, dt.datetime)):
            return value.isoformat()
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            full = f"{prefix}.{k}" if prefix else k
            raise ConfigError(f"{full}: unknown key; known keys here: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def _validate_children(obj: Any, prefix: str) -> None:
    if hasattr(obj, "validate"):
        obj.validate(prefix)
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            _validate_children(v, f"{prefix}.{f.name}" if prefix else f.name)


def _merge(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(item: str) -> dict[str, Any]:
    """``"generate.days=3"`` -> ``{"generate": {"days": 3}}`` (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except (yaml.YAMLError, ValueError) as e:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {e}") from e
    out: dict[str, Any] = {}
    cur = out
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read configuration file {path}: {e}") from e
    try:
        data = yaml.safe_load(text) or {}
    except (yaml.YAMLError, ValueError) as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def load_config(files: Optional[list[str | Path]] = None,
                overrides: Optional[list[str]] = None,
                use_default_file: bool = True) -> Config:
    """Build the one :class:`Config` of a run.

    Order: dataclass defaults < ``conf/default.yaml`` < each of ``files`` <
    ``overrides`` (``key.path=value``). Raises :class:`ConfigError` on any bad key.
    """
    data: dict[str, Any] = {}
    paths: list[Path] = []
    if use_default_file and DEFAULT_CONF.exists():
        paths.append(DEFAULT_CONF)
    paths += [Path(f) for f in files or []]
    for p in paths:
        data = _merge(data, _read_yaml(p))
    for item in overrides or []:
        data = _merge(data, parse_override(item))
    cfg = _build(Config, data, "")
    _validate_children(cfg, "")
    return cfg


def section_from_dict(cls: type, data: dict[str, Any], key: str) -> Any:
    """Rebuild and validate one config section (e.g. ModelConfig) saved with asdict."""
    obj = _build(cls, data, key)
    _validate_children(obj, key)
    return obj


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config saved with :meth:`Config.to_dict` (e.g. inside a model artifact)."""
    cfg = _build(Config, data, "")
    _validate_children(cfg, "")
    return cfg
