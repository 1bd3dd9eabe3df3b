"""A hand-made candidates table, its feature spec and a small model, shared by the scoring tests."""

from __future__ import annotations

import dataclasses
import io
import json

import torch
from pyspark.sql import functions as F
from pyspark.sql import types as T

from esmm.config.schema import CategoricalField, FeatureSpec, NumericField
from esmm.model.network import build_model
from pipelines.scoring.model import ScoringModel

SPEC = FeatureSpec(
    categorical=[CategoricalField("device", buckets=8), CategoricalField("user_id", buckets=64)],
    numeric=[NumericField("price", transform="log1p", clip_min=0.0, clip_max=12.0)],
)
SCHEMA = T.StructType(
    [
        T.StructField("impression_id", T.StringType()),
        T.StructField("user_id", T.StringType()),
        T.StructField("device", T.StringType()),
        T.StructField("price", T.StringType()),  # a JSON-landed table: numbers as text
        T.StructField("dt", T.StringType()),
    ]
)
DAY = "2026-11-03"
GOOD = [
    (f"imp{i}", f"u{i % 7}", ("ios", "pc", None)[i % 3], None if i % 5 == 0 else str(i / 3), DAY) for i in range(40)
]
BAD = [
    ("imp1", "u1", "pc", str(1 / 3), DAY),  # exact copy of a good row: collapses, not quarantined
    ("dupkey", "u1", "ios", "1", DAY),
    ("dupkey", "u2", "ios", "1", DAY),  # one key, two records
    (None, "u3", "pc", "2", DAY),
    (None, "u3", "pc", "2", DAY),
    ("  ", "u3", "pc", "2", DAY),  # no key
    ("imp_cheap", "u4", "pc", "cheap", DAY),
]  # price does not parse
OTHER_DAY = [("imp_other", "u1", "pc", "3", "2026-11-04")]
EXPECT_QUARANTINE = {"conflicting_duplicate_key": 2, "missing_key": 2, "unparseable:price": 1}


def _model(cfg, spec=SPEC, model_id="m-test"):
    torch.manual_seed(3)
    mcfg = dataclasses.replace(cfg.model, embedding_dim=4, tower=[8])
    net = build_model(mcfg, spec).eval()
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    meta = {
        "model_id": model_id,
        "model": dataclasses.asdict(mcfg),
        "features": dataclasses.asdict(spec),
        "feature_mapping_id": spec.mapping_id,
    }
    return net, ScoringModel(model_id, json.loads(json.dumps(meta)), buf.getvalue())


def _candidates(spark, path, rows):
    spark.createDataFrame(rows, SCHEMA).repartition(3).write.format("delta").partitionBy("dt").save(path)


def _scores(spark, cfg):
    rows = spark.read.format("delta").load(cfg.lakehouse.path("scores")).where(F.col("dt") == DAY).collect()
    return {r["impression_id"]: r for r in rows}


def _quarantine(spark, cfg):
    q = spark.read.format("delta").load(cfg.lakehouse.path("quarantine")).where(F.col("dt") == DAY)
    return sorted((r["record_id"], r["reason"]) for r in q.collect())
