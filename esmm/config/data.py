"""Configuration of the data side: where the lakehouse and the raw sources are, the Spark
session, the feature spec, the label windows, the simulated world and the Ali-CCP ingest.

One dataclass per section, each with its own ``validate(key)`` (raising
:class:`esmm.config.errors.ConfigError` naming the dotted key); the root :class:`Config`
and the model, training and serving sections are in :mod:`esmm.config.schema`, which
re-exports these.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from esmm.config.errors import require
from esmm.util.timeutil import parse_date, parse_duration

REPO_ROOT = Path(__file__).resolve().parents[2]
_require = require


@dataclass
class TablesConfig:
    """Table locations, relative to ``lakehouse.root`` unless absolute (or a URI)."""

    impressions: str = "raw/impressions"
    clicks: str = "raw/clicks"
    conversions: str = "raw/conversions"
    truth: str = "sim/truth"
    oracle: str = "sim/oracle"
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
        _require(
            self.format in ("delta", "json", "parquet"),
            f"{key}.format",
            f"{self.format!r} is not one of delta, json, parquet",
        )


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


POOLINGS = ("sum", "mean")


@dataclass
class CategoricalField:
    """A categorical feature hashed into ``buckets`` embedding rows (row 0 = NULL).

    ``multi``: the raw column is an ARRAY (every value kept, hashed one by one);
    the model pools the field's embeddings with ``pooling`` (sum | mean) over at
    most ``max_len`` values per row (the first ``max_len``; the examples table
    keeps all of them).
    """

    name: str = ""
    column: Optional[str] = None  # raw column; default: ``name``
    buckets: int = 1000
    multi: bool = False
    pooling: str = "sum"
    max_len: int = 64

    @property
    def source(self) -> str:
        return self.column or self.name

    def validate(self, key: str) -> None:
        _require(bool(self.name), f"{key}.name", "must be a non-empty string")
        _require(self.buckets >= 2, f"{key}.buckets", f"{self.buckets} must be >= 2")
        _require(self.pooling in POOLINGS, f"{key}.pooling", f"{self.pooling!r} is not one of {', '.join(POOLINGS)}")
        _require(self.max_len >= 1, f"{key}.max_len", f"{self.max_len} must be >= 1")

    @property
    def width(self) -> int:
        """Columns the field takes in the model's ``cat`` matrix (1, or ``max_len`` if multi)."""
        return self.max_len if self.multi else 1


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
        _require(
            self.transform in ("none", "log1p"), f"{key}.transform", f"{self.transform!r} is not one of none, log1p"
        )
        if self.clip_min is not None and self.clip_max is not None:
            _require(
                self.clip_min <= self.clip_max, f"{key}.clip_max", f"{self.clip_max} is below clip_min {self.clip_min}"
            )


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
        data = dataclasses.asdict(self)
        for f in data["categorical"]:
            # pooling and max_len act in the model, not on example values; a single-valued
            # field hashes as before, so existing mapping ids stay valid.
            f.pop("pooling"), f.pop("max_len")
            if not f["multi"]:
                f.pop("multi")
        payload = json.dumps(data, sort_keys=True)
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
        _require(
            0.0 <= self.max_bad_fraction <= 1.0, f"{key}.max_bad_fraction", f"{self.max_bad_fraction} is outside [0, 1]"
        )

    def seconds(self, name: str) -> int:
        return parse_duration(getattr(self, name), name)


@dataclass
class GenerateConfig:
    """Synthetic click logs (see pipelines/sim/generator.py for the model of the world)."""

    start_date: str = "2026-11-01"
    days: int = 7
    impressions_per_day: int = 100_000
    seed: int = 42
    ctr: float = 0.04  # clicked impressions / impressions
    cvr: float = 0.05  # converting clicked impressions / clicked impressions
    # Correlation of the click and conversion signals (the shared factor's weight in
    # both logits; negative: what raises clicks lowers conversions). 0 = no selection bias.
    selection_bias: float = 0.5
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
        _require(
            self.impressions_per_day >= 1, f"{key}.impressions_per_day", f"{self.impressions_per_day} must be >= 1"
        )
        _require(self.n_users >= 1 and self.n_items >= 1, f"{key}.n_users", "n_users and n_items must be >= 1")
        _require(self.partitions_per_day >= 1, f"{key}.partitions_per_day", "must be >= 1")
        _require(0.0 < self.ctr < 0.5, f"{key}.ctr", f"{self.ctr} must be in (0, 0.5)")
        _require(0.0 < self.cvr < 0.5, f"{key}.cvr", f"{self.cvr} must be in (0, 0.5)")
        _require(
            -1.0 <= self.selection_bias <= 1.0, f"{key}.selection_bias", f"{self.selection_bias} is outside [-1, 1]"
        )
        for name in ("multi_click_rate", "duplicate_rate", "late_rate", "no_click_id_rate", "malformed_rate"):
            v = getattr(self, name)
            _require(0.0 <= v <= 1.0, f"{key}.{name}", f"{v} is outside [0, 1]")

    @property
    def dates(self) -> list[str]:
        d0 = parse_date(self.start_date)
        return [(d0 + dt.timedelta(days=i)).isoformat() for i in range(self.days)]


@dataclass
class AliccpConfig:
    """Ali-CCP ingest (pipelines/ingest/aliccp.py): the release has no timestamps.

    Each split gets a pseudo-date ``dt`` so the date-windowed trainer can use it:
    the ESMM paper trains on the release's train half and evaluates on its test half,
    i.e. ``--train-start/--train-end train_date --eval-date test_date``. ``val_date``
    is the processed layouts' validation file. ``max_bad_fraction``: an ingest whose
    quarantined share of a source's records exceeds it fails without writing labels.
    """

    train_date: str = "2018-01-01"
    val_date: str = "2018-01-02"
    test_date: str = "2018-01-03"
    max_bad_fraction: float = 0.01

    def validate(self, key: str) -> None:
        dates = [parse_date(getattr(self, n), f"{key}.{n}") for n in ("train_date", "val_date", "test_date")]
        _require(len(set(dates)) == 3, key, f"train_date, val_date and test_date must differ, got {dates}")
        _require(
            0.0 <= self.max_bad_fraction <= 1.0, f"{key}.max_bad_fraction", f"{self.max_bad_fraction} is outside [0, 1]"
        )

    def date_of(self, split: str) -> str:
        return getattr(self, f"{split}_date")
