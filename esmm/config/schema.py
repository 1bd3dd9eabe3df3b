"""Typed configuration schema: one dataclass per section, each with its own checks.

Every job builds one :class:`Config` at its entry point
(:func:`esmm.config.loader.load_config`, YAML files plus ``--set key=value``
overrides) and passes it (or the section it needs) down. The dataclass defaults
below are the embedded defaults a single machine runs on; ``conf/default.yaml``
spells the same values out for people to copy and edit (a test keeps the two
identical).

Each section's ``validate(key)`` raises :class:`esmm.config.errors.ConfigError` naming
the dotted key: a value of the wrong range or an impossible combination (a
negative window, an end date before the start date).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from esmm.config.data import (  # noqa: F401 - re-exported: the data sections live there
    POOLINGS,
    REPO_ROOT,
    AliccpConfig,
    CategoricalField,
    FeatureSpec,
    GenerateConfig,
    LabelConfig,
    LakehouseConfig,
    NumericField,
    SourceConfig,
    SourcesConfig,
    SparkConfig,
    TablesConfig,
)
from esmm.config.errors import ConfigError, require
from esmm.util.timeutil import date_range, parse_date, parse_duration

_require = require


# --------------------------------------------------------------------------- sections


MODEL_KINDS = ("naive", "esmm", "escm2-ips", "escm2-dr")
PROPENSITY_CALIBRATIONS = ("none", "batch")  # see esmm/model/losses.py propensity()
IPS_NORMALIZATIONS = ("all", "self")  # 1/|D| (the paper's) | self-normalised (SNIPS)


def _default_tower() -> list[int]:
    return [360, 200, 80]  # the ESMM paper's MLP (Ma et al. 2018, section 3.2)


@dataclass
class ModelConfig:
    """Architecture and loss of one model (see esmm/model/network.py, esmm/model/losses.py).

    ``kind``: naive | esmm | escm2-ips | escm2-dr. ``tower``: hidden sizes of
    each tower (CTR, CVR, and DR's imputation tower). ``cvr_risk_weight`` is
    ESCM2's lambda on the counterfactual CVR risk, ``imputation_weight`` the
    weight of DR's imputation loss, ``propensity_clip`` the lower clip of the
    detached pCTR used as propensity (so IPS weights are at most 1/clip),
    ``propensity_calibration`` ``batch`` rescales that pCTR so its batch mean is
    the batch's click rate, ``ips_normalization`` divides the inverse-propensity
    sums by |D| (``all``, the paper's) or by the sum of the weights (``self``).
    ``sparse_embedding``: auto | true | false, the embedding table's gradient
    (auto: sparse except under DDP over NCCL; see esmm/model/parallel.py).
    """

    kind: str = "esmm"
    embedding_dim: int = 18
    tower: list[int] = field(default_factory=_default_tower)
    dropout: float = 0.1
    sparse_embedding: bool | str = "auto"
    ctcvr_weight: float = 1.0
    cvr_risk_weight: float = 1.0
    imputation_weight: float = 1.0
    propensity_clip: float = 0.02
    propensity_calibration: str = "none"
    ips_normalization: str = "all"

    def validate(self, key: str) -> None:
        _require(self.kind in MODEL_KINDS, f"{key}.kind", f"{self.kind!r} is not one of {', '.join(MODEL_KINDS)}")
        _require(self.embedding_dim >= 1, f"{key}.embedding_dim", f"{self.embedding_dim} must be >= 1")
        _require(
            len(self.tower) >= 1 and all(h >= 1 for h in self.tower),
            f"{key}.tower",
            f"{self.tower} must be a non-empty list of positive sizes",
        )
        _require(0.0 <= self.dropout < 1.0, f"{key}.dropout", f"{self.dropout} is outside [0, 1)")
        _require(
            self.sparse_embedding in (True, False, "auto"),
            f"{key}.sparse_embedding",
            f"{self.sparse_embedding!r} is not one of auto, true, false",
        )
        _require(
            0.0 < self.propensity_clip <= 1.0, f"{key}.propensity_clip", f"{self.propensity_clip} is outside (0, 1]"
        )
        _require(
            self.propensity_calibration in PROPENSITY_CALIBRATIONS,
            f"{key}.propensity_calibration",
            f"{self.propensity_calibration!r} is not one of {', '.join(PROPENSITY_CALIBRATIONS)}",
        )
        _require(
            self.ips_normalization in IPS_NORMALIZATIONS,
            f"{key}.ips_normalization",
            f"{self.ips_normalization!r} is not one of {', '.join(IPS_NORMALIZATIONS)}",
        )
        for name in ("ctcvr_weight", "cvr_risk_weight", "imputation_weight"):
            _require(getattr(self, name) >= 0.0, f"{key}.{name}", f"{getattr(self, name)} must be >= 0")


# train.delayed_feedback: wait, vanilla (plain losses), then the corrected losses (esmm/model/losses.py).
DELAYED_FEEDBACK = ("wait", "vanilla", "dfm", "esdfm")


@dataclass
class TrainConfig:
    """One training run: data window, optimisation, checkpoints (see esmm/training/trainer.py).

    ``train_start``/``train_end``: inclusive ``dt`` window of ``curated/examples``;
    ``eval_dates``: dates evaluated after training; ``examples_version``: Delta
    version to read (null = latest at start, recorded in the artifact).
    ``lr`` drives Adam on the towers; ``embedding_lr`` the sparse optimizer
    (``sparse_adam`` | ``adagrad``) of the embedding table. ``lr_schedule: linear``
    scales both down linearly to ``lr_final_fraction`` of their value at the run's
    last step (steps estimated from the Delta log's row counts). ``shuffle_buffer``
    is in rows. ``checkpoint_dir`` null = ``<lakehouse.root>/checkpoints``.
    ``fail_after_steps`` > 0 raises after that many steps (crash drills and tests).
    ``amp``: bf16 autocast on CUDA (esmm/model/parallel.py); refused with ``device=cpu``.
    ``delayed_feedback`` (:data:`DELAYED_FEEDBACK`): how rows whose labels are not mature
    are used. ``wait``: left out; ``vanilla``: taken as observed (an unconverted click
    counts as a negative); ``dfm`` / ``esdfm``: taken with the conversion term corrected
    by a delay survival curve (esmm/model/losses.py), which is fitted on the label-mature
    converted rows of the ``delay_fit_days`` days of ``curated/examples`` ending
    ``train_end`` (esmm/training/delay.py).
    """

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "mature_only": "use train.delayed_feedback (true -> wait, false -> vanilla)"
    }

    train_start: Optional[str] = None
    train_end: Optional[str] = None
    eval_dates: list[str] = field(default_factory=list)
    examples_version: Optional[int] = None
    delayed_feedback: str = "wait"
    delay_fit_days: int = 28
    epochs: int = 1
    batch_size: int = 1024
    lr: float = 0.001
    embedding_lr: float = 0.01
    embedding_optimizer: str = "sparse_adam"
    lr_schedule: str = "constant"  # constant | linear (decay to lr_final_fraction over the run)
    lr_final_fraction: float = 0.1
    weight_decay: float = 0.0
    seed: int = 2018
    shuffle_buffer: int = 50000
    reader_workers: int = 2
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = False
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
            _require(
                parse_date(self.train_end) >= parse_date(self.train_start),
                f"{key}.train_end",
                f"{self.train_end} is before train_start {self.train_start}",
            )
        for i, d in enumerate(self.eval_dates):
            parse_date(d, f"{key}.eval_dates[{i}]")
        _require(
            self.delayed_feedback in DELAYED_FEEDBACK,
            f"{key}.delayed_feedback",
            f"{self.delayed_feedback!r} is not one of {', '.join(DELAYED_FEEDBACK)}",
        )
        _require(self.delay_fit_days >= 1, f"{key}.delay_fit_days", f"{self.delay_fit_days} must be >= 1")
        _require(self.epochs >= 1, f"{key}.epochs", f"{self.epochs} must be >= 1")
        _require(self.batch_size >= 1, f"{key}.batch_size", f"{self.batch_size} must be >= 1")
        _require(self.lr > 0 and self.embedding_lr > 0, f"{key}.lr", "lr and embedding_lr must be > 0")
        _require(
            self.embedding_optimizer in ("sparse_adam", "adagrad"),
            f"{key}.embedding_optimizer",
            f"{self.embedding_optimizer!r} is not one of sparse_adam, adagrad",
        )
        _require(
            self.lr_schedule in ("constant", "linear"),
            f"{key}.lr_schedule",
            f"{self.lr_schedule!r} is not one of constant, linear",
        )
        _require(
            0.0 <= self.lr_final_fraction <= 1.0,
            f"{key}.lr_final_fraction",
            f"{self.lr_final_fraction} must be in [0, 1]",
        )
        _require(
            self.device in ("auto", "cpu", "cuda"), f"{key}.device", f"{self.device!r} is not one of auto, cpu, cuda"
        )
        _require(
            not (self.amp and self.device == "cpu"),
            f"{key}.amp",
            "true needs a GPU (bf16 autocast on CUDA) but train.device=cpu; set train.amp=false",
        )
        _require(self.shuffle_buffer >= 0, f"{key}.shuffle_buffer", "must be >= 0")
        _require(self.torch_threads >= 0, f"{key}.torch_threads", "must be >= 0")
        _require(self.reader_workers >= 1, f"{key}.reader_workers", "must be >= 1")
        _require(self.checkpoint_every >= 1, f"{key}.checkpoint_every", "must be >= 1")
        if self.examples_version is not None:
            _require(self.examples_version >= 0, f"{key}.examples_version", "must be >= 0")

    @property
    def mature_only(self) -> bool:
        """Training (and its own evaluation) reads label-mature rows only: ``wait``."""
        return self.delayed_feedback == "wait"

    @property
    def dates(self) -> list[str]:
        if not (self.train_start and self.train_end):
            raise ConfigError(
                "train.train_start and train.train_end must be set "
                "(e.g. --train-start 2026-11-01 --train-end 2026-11-05)"
            )
        return date_range(self.train_start, self.train_end)


@dataclass
class ScoreConfig:
    """Batch scoring into ``serving/scores`` (see pipelines/scoring/job.py)."""

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
        _require(
            self.write_mode in ("replace", "merge"),
            f"{key}.write_mode",
            f"{self.write_mode!r} is not one of replace, merge",
        )


@dataclass
class GateConfig:
    """When a freshly trained candidate replaces the champion (pipelines/nightly/gate.py, docs/serving.md).

    The candidate is rejected only when it is worse than the champion beyond
    the noise of the evaluation day (paired one-sided tests on CTCVR AUC and
    log loss, family-wise level ``alpha``), or when the confidence interval of
    its calibration lies wholly outside [calibration_min, calibration_max].
    """

    alpha: float = 0.05  # one-sided level: an equally good candidate is rejected at most this often
    min_conversions: int = 100  # fewer on the evaluation day: no comparison, the champion stays
    calibration_min: float = 0.8  # mean(pCTCVR) / observed CTCVR rate on the evaluation day
    calibration_max: float = 1.25

    # Keys of earlier versions, refused with what replaced them.
    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "max_auc_drop": "a fixed allowed AUC drop ignored the noise of the day; the gate now tests the "
        "AUC difference against its DeLong standard error at level nightly.gate.alpha",
    }

    def validate(self, key: str) -> None:
        _require(0.0 < self.alpha < 0.5, f"{key}.alpha", f"{self.alpha} must be in (0, 0.5)")
        _require(self.min_conversions >= 1, f"{key}.min_conversions", f"{self.min_conversions} must be >= 1")
        _require(
            0.0 < self.calibration_min <= 1.0 <= self.calibration_max,
            f"{key}.calibration_min",
            f"need 0 < calibration_min <= 1 <= calibration_max, got "
            f"[{self.calibration_min}, {self.calibration_max}]",
        )


@dataclass
class NightlyConfig:
    """The nightly pipeline (pipelines/nightly/): windows, gate, lock."""

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
        _require(
            self.eval_day in ("mature", "latest"), f"{key}.eval_day", f"{self.eval_day!r} is not one of mature, latest"
        )
        _require(
            self.train_launcher in ("inprocess", "torchrun"),
            f"{key}.train_launcher",
            f"{self.train_launcher!r} is not one of inprocess, torchrun",
        )
        _require(self.torchrun_nproc >= 1, f"{key}.torchrun_nproc", "must be >= 1")
        parse_duration(self.lock_stale_after, f"{key}.lock_stale_after")


@dataclass
class TrackingConfig:
    """Experiment tracking with MLflow (esmm/registry/tracking.py); the registry stays the source of truth.

    ``uri``: empty = a local file store at ``<lakehouse.root>/mlruns``; else an
    MLflow tracking URI (``http(s)://host:5000``, ``file:/path``, ``sqlite:///x.db``,
    ``databricks``) or a local folder. ``tags``: added to every run (the nightly
    adds the run date and run id, the bench its own run id).
    """

    enabled: bool = True
    uri: str = ""
    experiment: str = "esmm"
    tags: dict[str, str] = field(default_factory=dict)

    def validate(self, key: str) -> None:
        _require(bool(self.experiment.strip()), f"{key}.experiment", "must be a non-empty name")
        scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", self.uri)
        _require(
            not scheme or scheme.group(1).lower() in _TRACKING_SCHEMES,
            f"{key}.uri",
            f"{self.uri!r}: scheme {scheme.group(1) if scheme else ''!r} is not one of "
            f"{', '.join(_TRACKING_SCHEMES)} (or leave it empty for <lakehouse.root>/mlruns)",
        )
        _require(all(k.strip() for k in self.tags), f"{key}.tags", "tag names must be non-empty")


_TRACKING_SCHEMES = ("file", "http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")


@dataclass
class CalibrationConfig:
    """Post-training calibration of pCTR and pCTCVR (see esmm/calibration/maps.py).

    ``dates``: held-out, label-mature day(s) to fit on, never a training or
    evaluation day (empty: the trainer saves an uncalibrated artifact; the
    nightly sets the ``days`` mature days before its evaluation day). ``fields``: categorical
    features with a map per value; ``min_count``: positives of the map's target
    (clicks for pCTR, conversions for pCTCVR) a value needs on the calibration
    day for its own map, else it uses the global one.
    """

    enabled: bool = True
    method: str = "isotonic"  # isotonic | platt
    dates: list[str] = field(default_factory=list)
    days: int = 2
    fields: list[str] = field(default_factory=lambda: ["position"])
    min_count: int = 100
    report_fields: list[str] = field(default_factory=lambda: ["position", "device"])

    def validate(self, key: str) -> None:
        _require(
            self.method in ("isotonic", "platt"), f"{key}.method", f"{self.method!r} is not one of isotonic, platt"
        )
        _require(self.min_count >= 1, f"{key}.min_count", f"{self.min_count} must be >= 1")
        _require(self.days >= 1, f"{key}.days", f"{self.days} must be >= 1")
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
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    aliccp: AliccpConfig = field(default_factory=AliccpConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
