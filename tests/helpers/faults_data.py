"""A tiny raw world and a champion model for the fault tests (tests/test_faults*.py, test_cli_exit.py).

Two days of raw impressions, clicks and conversions (Delta, the contract of
:mod:`pipelines.io.contract`, default feature spec), written with ``spark.range``
so no generator run is needed: every 5th impression clicked a minute later, every
3rd click converting an hour after it (a click id on most, last-touch on the rest),
one click of an unknown impression for the quarantine. Two Parquet files per
partition, so one can be broken while the others stay good.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

DAYS = ("2026-11-01", "2026-11-02")
PER_DAY = 400
# Label windows short enough that a day's labels are final by the next midnight.
LABEL_OVERRIDES = [
    "labels.click_window=1h",
    "labels.attribution_window=6h",
    "labels.max_lateness=1h",
    "labels.max_bad_fraction=0.05",
]


def write_raw_world(spark: SparkSession, root: Path) -> dict[str, str]:
    """Write raw/impressions, raw/clicks, raw/conversions under ``root``; returns
    ``{source: path}`` (pass as ``sources.<source>.path`` overrides)."""
    start = int(dt.datetime.fromisoformat(DAYS[0] + "T00:00:00+00:00").timestamp())
    n = PER_DAY * len(DAYS)
    day = (F.col("id") / PER_DAY).cast("int")
    # Events spread over 00:00-20:00 of their day, so the windows close the same day.
    ts = (F.lit(start) + day * 86400 + (F.col("id") % PER_DAY) * 180).cast("timestamp")
    dt_col = F.date_format(ts, "yyyy-MM-dd")
    i = F.col("id")
    imp = spark.range(n).select(
        F.concat(F.lit("imp"), i.cast("string")).alias("impression_id"),
        ts.alias("ts"),
        F.concat(F.lit("u"), (i % 37).cast("string")).alias("user_id"),
        F.concat(F.lit("x"), (i % 23).cast("string")).alias("item_id"),
        (i % 2).alias("user_gender"),
        (i % 7).alias("user_age"),
        F.concat(F.lit("c"), (i % 5).cast("string")).alias("user_city"),
        (i % 11).alias("item_category"),
        F.concat(F.lit("b"), (i % 13).cast("string")).alias("item_brand"),
        F.concat(F.lit("s"), (i % 17).cast("string")).alias("item_shop"),
        (i % 10 + 1).alias("position"),
        F.when(i % 3 == 0, "ios").otherwise("android").alias("device"),
        F.hour(ts).cast("bigint").alias("hour"),
        (i % 50 + 1.5).alias("price"),
        (i % 5 + 0.5).alias("item_rating"),
        (i % 9 * 0.25).alias("user_activity"),
        dt_col.alias("dt"),
    )
    clicked = imp.where(F.substring("impression_id", 4, 10).cast("int") % 5 == 0)
    clicks = clicked.select(
        F.concat(F.lit("k"), "impression_id").alias("click_id"),
        "impression_id",
        (F.col("ts") + F.expr("INTERVAL 1 MINUTE")).alias("ts"),
        "dt",
    )
    orphan = spark.createDataFrame(
        [("k-orphan", "imp-none", dt.datetime(2026, 11, 2, 5), DAYS[1])],
        "click_id string, impression_id string, ts timestamp, dt string",
    )
    clicks = clicks.unionByName(orphan)
    k = F.substring("impression_id", 4, 10).cast("int")
    conv = clicked.where(k % 3 == 0).select(
        F.concat(F.lit("v"), "impression_id").alias("conversion_id"),
        F.when(k % 2 == 0, F.concat(F.lit("k"), "impression_id")).alias("click_id"),  # else last touch
        "user_id",
        "item_id",
        (F.col("ts") + F.expr("INTERVAL 1 HOUR")).alias("ts"),
        F.lit(9.5).alias("value"),
        "dt",
    )
    paths = {}
    for source, df in (("impressions", imp), ("clicks", clicks), ("conversions", conv)):
        paths[source] = str(root / "raw" / source)
        df.repartition(2 * len(DAYS), "dt", F.rand(1)).write.format("delta").partitionBy("dt").save(paths[source])
    return paths


def source_overrides(paths: dict[str, str]) -> list[str]:
    return [f"sources.{s}.path={p}" for s, p in paths.items()]


def save_champion(cfg, model_id: str = "m-faults") -> str:
    """A small, randomly initialised (seeded) ESMM network on three raw columns, saved as an
    artifact, registered and promoted, so ``esmm score`` has a champion. Returns its id."""
    import torch

    from esmm.config.schema import CategoricalField, FeatureSpec, NumericField
    from esmm.model.network import build_model
    from esmm.registry import artifacts as registry

    spec = FeatureSpec(
        categorical=[CategoricalField("device", buckets=8), CategoricalField("user_id", buckets=64)],
        numeric=[NumericField("price")],
    )
    mcfg = dataclasses.replace(cfg.model, embedding_dim=4, tower=[8])
    torch.manual_seed(7)
    net = build_model(mcfg, spec).eval()
    art = Path(cfg.lakehouse.path("models")) / model_id
    registry.save_artifact(
        art,
        net,
        {
            "model_id": model_id,
            "kind": "esmm",
            "model": dataclasses.asdict(mcfg),
            "features": dataclasses.asdict(spec),
            "feature_mapping_id": spec.mapping_id,
            "examples": {"version": 0},
            "window": {"train_start": DAYS[0], "train_end": DAYS[0], "eval_dates": [DAYS[1]]},
            "metrics": {},
        },
    )
    reg = cfg.lakehouse.path("registry")
    registry.register(reg, art)
    registry.promote(reg, model_id)
    return model_id


def cli_sets(root: Path, raw_paths: dict[str, str], *extra: str) -> list[str]:
    """``--set`` arguments: the lakehouse, the raw tables, the label windows, ``extra``."""
    sets = [f"lakehouse.root={root}", *source_overrides(raw_paths), *LABEL_OVERRIDES, *extra]
    return [a for s in sets for a in ("--set", s)]


def labels_cmd(root: Path, raw_paths: dict[str, str], day: str, *extra: str) -> list[str]:
    return ["labels", "--date", day, *cli_sets(root, raw_paths, *extra)]


def score_cmd(root: Path, raw_paths: dict[str, str], day: str, *extra: str) -> list[str]:
    return ["score", "--date", day, *cli_sets(root, raw_paths, *extra)]


TABLES = {  # name: (folder under the lakehouse root, the columns compared; run ids and times left out)
    "labels": (
        "curated/labels",
        ["impression_id", "click", "first_click_ts", "conversion", "conversion_ts", "label_mature", "as_of", "dt"],
    ),
    "quarantine": ("curated/quarantine", ["source", "record_id", "reason", "record", "dt"]),
    "scores": ("serving/scores", ["impression_id", "pctr", "pcvr", "pctcvr", "model_id", "dt"]),
}


def tables(spark, root: Path) -> dict[str, list[tuple] | int | None]:
    """Rows of each of :data:`TABLES` as sorted string tuples, and each one's Delta version
    (``<name>_version``); None for a table that does not exist."""
    from delta.tables import DeltaTable

    out: dict = {}
    for name, (folder, cols) in TABLES.items():
        path = str(root / folder)
        if not DeltaTable.isDeltaTable(spark, path):
            out[name], out[f"{name}_version"] = None, None
            continue
        df = spark.read.format("delta").load(path)
        out[name] = sorted(tuple(r) for r in df.select(*[F.col(c).cast("string") for c in cols]).collect())
        out[f"{name}_version"] = DeltaTable.forPath(spark, path).history(1).first()["version"]
    return out


def without_versions(t: dict) -> dict:
    return {k: v for k, v in t.items() if not k.endswith("_version")}
