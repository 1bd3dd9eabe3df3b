"""Batch scoring: pCTR, pCVR and pCTCVR of a day's candidates into ``serving/scores``.

``esmm score --date D [--model MODEL_ID]``. Steps:

1. Read the candidates of day ``D``: by default the raw impressions with
   ``dt = D``; ``score.candidates`` may name any lakehouse table or Delta path
   holding the configured ``score.key_columns``, the raw feature columns of the
   model's feature spec and ``score.date_column``.
2. Check the keys (:func:`check_keys`): one query hashes the non-blank keys,
   finds the hashes that occur more than once and counts the per-row reasons.
   Split off the rows that cannot be scored (:func:`tag_unscorable`) into
   ``curated/quarantine`` with ``source = 'score'`` and a reason; exact
   duplicate rows collapse to one. Only the rows of repeated keys are shuffled.
3. Encode with :func:`pipelines.features.encode_features` and the *model's own*
   feature spec (from its ``meta.json``), so the mapping is the one it was
   trained with; a model whose spec does not hash to its recorded
   ``feature_mapping_id``, or candidates lacking a column it needs, are refused
   (:class:`ScoringInputError`) before any work.
4. Run the network inside the executors (:func:`score_frame`): ``mapInArrow``
   over Arrow batches of ``score.batch_size`` rows. The weights travel once per
   executor as a broadcast of the ``model.pt`` bytes; each Python worker builds
   the network once and keeps it in a per-process cache keyed by model id
   (Spark reuses Python workers across tasks). ``torch.set_num_threads`` is
   the task's cores (``spark.task.cpus``) unless ``score.torch_threads`` says
   otherwise, so N concurrent tasks use N x threads = the executor's cores.
5. Write ``serving/scores`` in one Delta commit (:func:`write_scores`):
   ``replaceWhere dt = D`` (default) or MERGE on the keys and dt. A job killed
   before the commit leaves the previous version as it was. Then the day's
   quarantine rows of this job, in one commit (``replaceWhere dt = D AND
   source = 'score'``; the label job's rows of that day stay).

``serving/scores`` (Delta, partitioned by dt)::

    <key columns>  as in the candidates (default impression_id STRING)
    pctr           FLOAT  P(click | impression), calibrated when the model has maps
    pcvr           FLOAT  P(conversion | click, impression), over the entire space
                          (calibrated: calibrated pctcvr / calibrated pctr, clipped to [0, 1])
    pctcvr         FLOAT  P(click and conversion | impression) = pctr * pcvr
    pctr_raw       FLOAT  the network's own outputs, before calibration (audit); equal
    pcvr_raw       FLOAT  to pctr, pcvr, pctcvr when the model is uncalibrated
    pctcvr_raw     FLOAT
    calibrated     BOOLEAN whether pctr/pcvr/pctcvr went through calibration maps
    calibration_id STRING the maps applied (esmm/calibration.py), NULL when uncalibrated
    model_id       STRING the registry model that scored the row
    scored_at      TIMESTAMP UTC, one value per job
    dt             STRING yyyy-MM-dd, the candidates' day

One row per key per dt. Quarantine rows (``curated/quarantine``, the label
job's schema): source 'score', record_id (the key, or 'sha256:<hex>' of the
record when the key is NULL), reason (``missing_key``, ``unparseable:<column>``,
``conflicting_duplicate_key``), record (JSON), run_id, quarantined_at, dt.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from esmm.config import Config, FeatureSpec, ScoreConfig
from pipelines.features import encode_features, feature_names

SCORE_COLUMNS = ("pctr", "pcvr", "pctcvr")
RAW_COLUMNS = ("pctr_raw", "pcvr_raw", "pctcvr_raw")


class ScoringInputError(ValueError):
    """The model and the candidates do not fit together; nothing was scored."""


# --------------------------------------------------------------------------- model loading


@dataclass
class ScoringModel:
    """What the executors need: the id, the meta (config + spec), the weights as bytes and
    the calibration maps (None: uncalibrated)."""

    model_id: str
    meta: dict[str, Any]
    state_bytes: bytes
    calibration: Any = None  # esmm.calibration.CalibrationMaps

    @property
    def spec(self) -> FeatureSpec:
        from esmm.registry import spec_of

        return spec_of(self.meta)


def resolve_model(cfg: Config, model_id: Optional[str] = None) -> ScoringModel:
    """The artifact of ``model_id`` (default: the registry's champion), checked for consistency."""
    from esmm import registry

    if model_id is None:
        champ = registry.champion(cfg.lakehouse.path("registry"))
        if champ is None:
            raise ScoringInputError(
                f"no champion in the registry {cfg.lakehouse.path('registry')}: train and promote a "
                f"model first (esmm nightly, or esmm train then promote), or pass --model MODEL_ID")
        model_id, artifact_dir = champ["model_id"], champ["artifact_dir"]
    else:
        rows = [r for r in registry.list_models(cfg.lakehouse.path("registry")) if r["model_id"] == model_id]
        artifact_dir = rows[0]["artifact_dir"] if rows else str(Path(cfg.lakehouse.path("models")) / model_id)
    meta = registry.read_meta(artifact_dir)
    spec = registry.spec_of(meta)
    if spec.mapping_id != meta.get("feature_mapping_id"):
        raise ScoringInputError(
            f"model {model_id} ({artifact_dir}/meta.json): its feature spec hashes to "
            f"{spec.mapping_id} but it was trained on feature mapping {meta.get('feature_mapping_id')}; "
            f"the artifact does not describe its own inputs, refusing to score with it")
    state_bytes = (Path(artifact_dir) / "model.pt").read_bytes()
    from esmm import calibration

    return ScoringModel(model_id, meta, state_bytes, calibration.load(artifact_dir, model_id))


_MODEL_CACHE: dict[str, Any] = {}  # per Python worker process: model id -> network in eval mode


def _cached_network(model_id: str, meta_json: str, state_bytes_bc) -> Any:
    """Build the network once per worker process; later tasks of the job reuse it."""
    net = _MODEL_CACHE.get(model_id)
    if net is None:
        import torch

        from esmm.config import ModelConfig, section_from_dict
        from esmm.model import build_model
        from esmm.registry import spec_of

        meta = json.loads(meta_json)
        net = build_model(section_from_dict(ModelConfig, meta["model"], "meta.model"), spec_of(meta))
        state = torch.load(io.BytesIO(state_bytes_bc.value), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        net.eval()
        _MODEL_CACHE.clear()  # one model per worker at a time: old champions do not pile up
        _MODEL_CACHE[model_id] = net
    return net


# --------------------------------------------------------------------------- transforms


def check_candidates(df: DataFrame, spec: FeatureSpec, keys: list[str], where: str) -> None:
    """Raise :class:`ScoringInputError` if ``df`` lacks a key or raw feature column of ``spec``."""
    have = set(df.columns)
    missing_keys = [k for k in keys if k not in have]
    needed = {f.source for f in spec.categorical} | {f.source for f in spec.numeric}
    missing_feats = sorted(needed - have)
    if missing_keys or missing_feats:
        raise ScoringInputError(
            f"candidates {where}: missing key column(s) {missing_keys} and raw feature column(s) "
            f"{missing_feats} that the model's feature spec ({spec.mapping_id}) reads; present: "
            f"{sorted(have)}. Score a table with these columns, or a model trained on this table's features")


def _blank(c: str) -> Column:
    """NULL, empty or only spaces (what Spark's ``trim`` removes).

    Spelled so that the common case, a non-empty string not starting with a
    space, is decided without ``trim``, which copies every string it sees.
    """
    s = F.col(c).cast("string")
    return s.isNull() | (s == "") | (s.startswith(" ") & (F.trim(s) == ""))


def _row_reason(spec: FeatureSpec, keys: list[str]) -> Column:
    """The reason a single row cannot be scored (NULL: it can), before any duplicate check."""
    reason = F.lit(None).cast("string")
    for f in reversed(spec.numeric):
        raw = F.col(f.source)
        bad = raw.isNotNull() & raw.cast("double").isNull()
        reason = F.when(bad, F.lit(f"unparseable:{f.source}")).otherwise(reason)
    return F.when(_missing_key(keys), F.lit("missing_key")).otherwise(reason)


def _missing_key(keys: list[str]) -> Column:
    missing = None
    for k in keys:
        missing = _blank(k) if missing is None else (missing | _blank(k))
    return missing


def known_reasons(spec: FeatureSpec) -> list[str]:
    """Every reason :func:`tag_unscorable` can give, in a fixed order."""
    return ["missing_key"] + [f"unparseable:{f.source}" for f in spec.numeric] + ["conflicting_duplicate_key"]


KEY_HASH = "__key_hash"


def _key_hash(keys: list[str]) -> Column:
    return F.xxhash64(*[F.col(k) for k in keys])


@dataclass
class KeyRepeats:
    """What :func:`check_keys` found among the candidates.

    ``count``: how many 64-bit hashes of non-blank keys occur more than once.
    ``hashes``: those hashes as a one-column frame (``__key_hash`` BIGINT), or
    None when ``count`` is 0 or above the limit (``overflow``: then every row is
    shuffled). ``rows``: all candidate rows; ``reasons``: rows per per-row
    reason (``missing_key``, ``unparseable:<col>``) among them, before any
    duplicate collapses; None when the counts did not arrive.
    """

    count: int
    hashes: Optional[DataFrame] = None
    overflow: bool = False
    rows: Optional[int] = None
    reasons: Optional[dict[str, int]] = None


def check_keys(df: DataFrame, spec: FeatureSpec, keys: list[str], partitions: int,
               limit: int = 2_000_000) -> KeyRepeats:
    """The key hashes that repeat among ``df``'s non-blank keys, and its per-row reasons, in one query.

    It groups a 64-bit hash of the keys (``xxhash64``), not the keys: distinct
    hashes prove distinct keys. A repeated hash is a repeated key or, rarely
    (about n^2 / 2^65 for n rows: 3e-8 at 1M rows), a collision; either way its
    rows take the exact, shuffled path of :func:`tag_unscorable`, so a
    collision costs time, never a wrong row. The hashes are hash-partitioned
    into ``partitions`` explicitly, which the aggregate reuses as its own
    distribution: no map-side partial aggregate (keys are nearly all distinct,
    it would shrink nothing) and no second exchange. At most ``limit`` + 1
    repeated hashes reach the driver (usually none, or as many as at-least-once
    delivery duplicated); above ``limit`` the caller shuffles every row.

    The same scan counts the rows and their per-row reasons as an observation
    (``DataFrame.observe``) of this query, which runs nothing else.
    """
    import numpy as np
    import pandas as pd
    from pyspark.sql import Observation

    obs = Observation(f"score_check_{uuid.uuid4().hex}")
    reason = _row_reason(spec, keys)
    per_row = known_reasons(spec)[:-1]
    observed = df.observe(obs, F.count(F.lit(1)).alias("rows"),
                          *[F.count(F.when(reason == r, 1)).alias(f"r{i}") for i, r in enumerate(per_row)])
    repeated = (observed.where(~_missing_key(keys)).select(_key_hash(keys).alias(KEY_HASH))
                .repartition(partitions, KEY_HASH).groupBy(KEY_HASH).count()
                .where(F.col("count") > 1).select(KEY_HASH).limit(limit + 1))
    # toPandas travels as Arrow (spark.sql.execution.arrow.pyspark.enabled): a million
    # hashes are 8 MB, not a million Row objects.
    hashes = repeated.toPandas()[KEY_HASH].to_numpy(dtype=np.int64)
    n = len(hashes)
    m = _observed(obs)
    rows = reasons = None
    if m is not None:
        rows = int(m["rows"])
        reasons = {r: int(m[f"r{i}"]) for i, r in enumerate(per_row) if m[f"r{i}"]}
    if n == 0 or n > limit:
        return KeyRepeats(n, None, n > limit, rows, reasons)
    frame = df.sparkSession.createDataFrame(pd.DataFrame({KEY_HASH: hashes}))
    return KeyRepeats(n, frame, False, rows, reasons)


def _observed(obs: Any, timeout_s: float = 60.0) -> Optional[dict[str, Any]]:
    """The metrics of an Observation whose query has run; None if they have not arrived
    ``timeout_s`` later (they travel on Spark's listener bus, asynchronously)."""
    fut = obs._jo.future()
    deadline = time.time() + timeout_s
    while not fut.isCompleted():
        if time.time() > deadline:
            return None
        time.sleep(0.01)
    return obs.get


def _tag_exact(df: DataFrame, spec: FeatureSpec, keys: list[str]) -> DataFrame:
    # One shuffle, by the keys: it co-locates exact duplicates too (they share the
    # keys), so the duplicate collapse and the per-key window both run on it.
    per_key = Window.partitionBy(*[F.col(k) for k in keys])
    tagged = df.repartition(*[F.col(k) for k in keys]).dropDuplicates().withColumn("reason", _row_reason(spec, keys))
    return tagged.withColumn(
        "reason", F.when(F.col("reason").isNull() & (F.count(F.lit(1)).over(per_key) > 1),
                         F.lit("conflicting_duplicate_key")).otherwise(F.col("reason")))


def tag_unscorable(df: DataFrame, spec: FeatureSpec, keys: list[str],
                   repeats: Optional[KeyRepeats] = None) -> DataFrame:
    """``df`` with exact duplicate rows collapsed and a ``reason`` column (NULL: scorable).

    Reasons, first match wins: ``missing_key`` (a key NULL/blank),
    ``unparseable:<col>`` (a numeric feature holds a value that does not parse
    as a number; NULL is a legitimate missing value filled by the mapping),
    ``conflicting_duplicate_key`` (the key repeats with different values: no row
    can be chosen honestly, so none is scored).

    ``repeats`` (:func:`check_keys` of ``df``) decides the plan; the
    rows and reasons are the same for all three:

    * None (not checked) or an overflow: every row takes the exact path, one
      shuffle of whole rows by the keys (collapse, then a per-key window);
    * no repeated key: a per-row projection, no shuffle. Only blank-key rows
      can then be exact duplicates; :func:`split_tagged` collapses them among
      the unscorable rows (``per_row=True``);
    * some: only the rows whose key hash repeats (found by a broadcast hash
      join against the small hash set) take the exact path; the others are a
      per-row projection, and the two parts are unioned.
    Exact duplicates of the per-row part are left to :func:`split_tagged`.
    """
    return join_parts(*tag_parts(df, spec, keys, repeats))


def join_parts(per_row: Optional[DataFrame], shuffled: Optional[DataFrame]) -> DataFrame:
    """The tagged rows of :func:`tag_parts`' two parts (at least one is a frame)."""
    if per_row is None or shuffled is None:
        return shuffled if per_row is None else per_row
    return per_row.unionByName(shuffled)


def tag_parts(df: DataFrame, spec: FeatureSpec, keys: list[str], repeats: Optional[KeyRepeats] = None
              ) -> tuple[Optional[DataFrame], Optional[DataFrame]]:
    """(per-row part, shuffled part) of :func:`tag_unscorable`; None for a part the plan lacks.

    The shuffled part holds the rows that took the exact path. The job caches
    it: it is read by the scores, the quarantine and its count, and unless the
    repeats overflowed it holds only the rows of repeated keys.
    """
    if repeats is None or repeats.overflow:
        return None, _tag_exact(df, spec, keys)
    if repeats.hashes is None:
        return df.withColumn("reason", _row_reason(spec, keys)), None
    hashed = df.withColumn(KEY_HASH, _key_hash(keys))
    rep = F.broadcast(repeats.hashes)
    once = hashed.join(rep, KEY_HASH, "left_anti").drop(KEY_HASH).withColumn("reason", _row_reason(spec, keys))
    many = hashed.join(rep, KEY_HASH, "left_semi").drop(KEY_HASH)
    return once, _tag_exact(many, spec, keys)


def split_tagged(tagged: DataFrame, per_row: bool = False) -> tuple[DataFrame, DataFrame]:
    """(scorable rows without ``reason``, unscorable rows with it) of :func:`tag_unscorable`'s output.

    ``per_row``: ``tagged`` came (partly) from the per-row projection, whose
    blank-key exact duplicates are still there; they collapse here, among the
    (few) unscorable rows.
    """
    cols = [c for c in tagged.columns if c != "reason"]
    good = tagged.where(F.col("reason").isNull()).select(*cols)
    bad = tagged.where(F.col("reason").isNotNull())
    if per_row:
        bad = bad.dropDuplicates()
    return good, bad


def split_unscorable(df: DataFrame, spec: FeatureSpec, keys: list[str],
                     repeats: Optional[KeyRepeats] = None) -> tuple[DataFrame, DataFrame]:
    """(scorable rows, rows with a ``reason`` column) of the candidates ``df``.

    Exact duplicate rows (at-least-once delivery) collapse to one; the reasons
    are :func:`tag_unscorable`'s, and so is ``repeats``. Output rows keep
    ``df``'s columns.
    """
    tagged = tag_unscorable(df, spec, keys, repeats)
    return split_tagged(tagged, per_row=repeats is not None and not repeats.overflow)


def quarantine_records(bad: DataFrame, keys: list[str], day: str, run_id: str,
                       now: dt.datetime) -> DataFrame:
    """Quarantine rows (curated/quarantine schema) of ``bad`` (candidates + ``reason``)."""
    data_cols = [c for c in bad.columns if c != "reason"]
    record = F.to_json(F.struct(*[F.col(c) for c in data_cols]))
    if len(keys) == 1:
        key = F.col(keys[0]).cast("string")
    else:
        key = F.to_json(F.struct(*[F.col(k) for k in keys]))
    rid = F.when(_missing_key(keys), F.concat(F.lit("sha256:"), F.sha2(record, 256))).otherwise(key)
    return bad.select(F.lit("score").alias("source"), rid.alias("record_id"), F.col("reason"),
                      record.alias("record"), F.lit(run_id).alias("run_id"),
                      F.lit(now).cast("timestamp").alias("quarantined_at"), F.lit(day).alias("dt"))


def score_frame(encoded: DataFrame, model: ScoringModel, keys: list[str], torch_threads: int,
                fail_after_batches: Optional[int] = None) -> DataFrame:
    """Run the model over ``encoded`` (keys + encoded features) inside the executors.

    Output: the key columns, ``pctr``, ``pcvr``, ``pctcvr`` FLOAT (calibrated by
    ``model.calibration``'s maps, :func:`esmm.calibration.apply`, when it has
    them), ``pctr_raw``, ``pcvr_raw``, ``pctcvr_raw`` FLOAT. Tensor shapes
    per Arrow batch of B rows: ``cat`` LongTensor[B, n_cat], ``num``
    FloatTensor[B, n_num], in the spec's column order. ``fail_after_batches``
    (tests only) raises inside a task after that many batches, to prove a
    killed job leaves the table untouched.

    ``mapInArrow``, not ``mapInPandas``: the key columns go back to the JVM as the
    very Arrow arrays that came in, and the feature columns become tensors without
    a pandas frame in between. Measured at 1M rows on 2 cores, this path ran the
    same model 2 s faster (the string keys' round trip through pandas objects).
    """
    spark = encoded.sparkSession
    cat_names, num_names = feature_names(model.spec)
    bc = spark.sparkContext.broadcast(model.state_bytes)
    meta_json = json.dumps(model.meta)
    model_id = model.model_id
    key_fields = [encoded.schema[k] for k in keys]
    out_cols = SCORE_COLUMNS + RAW_COLUMNS
    out_schema = T.StructType(key_fields + [T.StructField(c, T.FloatType(), True) for c in out_cols])
    maps = model.calibration
    map_fields = [(f, cat_names.index(f)) for f in (maps.fields if maps is not None else [])]

    def predict(batches: Iterator[Any]) -> Iterator[Any]:
        import numpy as np
        import pyarrow as pa
        import torch

        torch.set_num_threads(torch_threads)
        net = _cached_network(model_id, meta_json, bc)
        out_fields = None
        for i, rb in enumerate(batches):
            if fail_after_batches is not None and i >= fail_after_batches:
                raise RuntimeError(f"injected scoring fault after {i} batch(es)")
            n = rb.num_rows
            if n == 0:
                continue
            cat = np.empty((n, len(cat_names)), dtype=np.int64)
            num = np.empty((n, len(num_names)), dtype=np.float32)
            for block, names in ((cat, cat_names), (num, num_names)):
                for j, c in enumerate(names):
                    col = rb.column(c)
                    if col.null_count:  # encode_features never yields NULL: a broken invariant
                        raise ValueError(f"encoded feature column {c!r} holds {col.null_count} NULL(s)")
                    block[:, j] = col.to_numpy(zero_copy_only=False)
            with torch.inference_mode():
                out = net(torch.from_numpy(cat), torch.from_numpy(num))
            raw = [out[c].reshape(-1).numpy() for c in SCORE_COLUMNS]
            final = raw
            if maps is not None:
                from esmm.calibration import apply

                final = list(apply(maps, raw[0], raw[2], {f: cat[:, j] for f, j in map_fields}))
            arrays = [rb.column(k) for k in keys]
            arrays += [pa.array(np.asarray(a, dtype=np.float32)) for a in final + raw]
            if out_fields is None:
                out_fields = pa.schema([rb.schema.field(k) for k in keys] + [(c, pa.float32()) for c in out_cols])
            yield pa.RecordBatch.from_arrays(arrays, schema=out_fields)

    return encoded.select(*keys, *cat_names, *num_names).mapInArrow(predict, out_schema)


def task_threads(spark: SparkSession, score_cfg: ScoreConfig) -> int:
    """Intra-op threads per task: ``score.torch_threads``, else ``spark.task.cpus``."""
    if score_cfg.torch_threads > 0:
        return score_cfg.torch_threads
    return max(1, int(spark.conf.get("spark.task.cpus", "1")))


# --------------------------------------------------------------------------- job edge


def read_candidates(spark: SparkSession, cfg: Config, day: str) -> tuple[DataFrame, str]:
    """The candidates of ``day`` and where they came from (for messages)."""
    from pipelines.delta_io import read_delta, read_raw

    # Pinned to one Delta version: the job reads the candidates in more than one pass
    # (the check, then the scoring), and both must see the same rows.
    sc = cfg.score
    if sc.candidates is None:
        df = read_raw(spark, cfg, "impressions", pin=True)
        where = cfg.sources.impressions.path or cfg.lakehouse.path("impressions")
    else:
        try:
            where = cfg.lakehouse.path(sc.candidates)
        except AttributeError:
            where = sc.candidates
        df = read_delta(spark, where, pin=True)
    if sc.date_column not in df.columns:
        raise ScoringInputError(f"candidates {where}: no column {sc.date_column!r} (score.date_column) "
                                f"to select day {day} by; present: {sorted(df.columns)}")
    return df.where(F.col(sc.date_column) == day), where


def write_scores(scores: DataFrame, path: str, day: str, keys: list[str], mode: str,
                 run_id: Optional[str] = None) -> None:
    """One Delta commit replacing day ``day`` of ``serving/scores`` (see module docstring).

    ``run_id`` is recorded as the commit's userMetadata, so the job can read its
    row count from its own commit (:func:`_committed_rows`) instead of a scan.
    """
    from delta.tables import DeltaTable

    spark = scores.sparkSession
    if mode == "merge" and DeltaTable.isDeltaTable(spark, path):
        on = " AND ".join([f"t.`{k}` = s.`{k}`" for k in keys] + [f"t.dt = '{day}'", "s.dt = t.dt"])
        key = "spark.databricks.delta.commitInfo.userMetadata"
        prev = spark.conf.get(key, None)
        if run_id:
            spark.conf.set(key, run_id)
        try:
            (DeltaTable.forPath(spark, path).alias("t").merge(scores.alias("s"), on)
             .whenMatchedUpdateAll().whenNotMatchedInsertAll()
             .whenNotMatchedBySourceDelete(condition=f"t.dt = '{day}'").execute())
        finally:
            if prev is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, prev)
        return
    # mergeSchema: a table written before the raw/calibration columns existed gains them.
    w = (scores.write.format("delta").mode("overwrite").partitionBy("dt").option("replaceWhere", f"dt = '{day}'")
         .option("mergeSchema", "true"))
    if run_id:
        w = w.option("userMetadata", run_id)
    w.save(path)


def _committed_rows(spark: SparkSession, path: str, run_id: str) -> Optional[int]:
    """Rows of day D after this run's commit (tagged ``run_id``), from its metrics; None if not found.

    A replaceWhere commit's ``numOutputRows`` and a MERGE's ``numSourceRows`` both
    equal the day's rows afterwards (the MERGE deletes what the source lacks).
    """
    from delta.tables import DeltaTable

    for r in DeltaTable.forPath(spark, path).history(20).select("userMetadata", "operationMetrics").collect():
        if r["userMetadata"] == run_id:
            m = r["operationMetrics"] or {}
            n = m.get("numOutputRows") if "numOutputRows" in m else m.get("numSourceRows")
            return int(n) if n is not None else None
    return None


def write_quarantine(spark: SparkSession, rows: DataFrame, path: str, day: str, empty: bool = False) -> None:
    """Replace this job's quarantine rows of ``day`` (source 'score') in one commit.

    ``replaceWhere dt = D AND source = 'score'``: the label job's rows of the
    same day stay. Not a MERGE: a conflicting key's records share record_id and
    reason, and a MERGE refuses several source rows for one target row.
    ``empty=True`` (the caller knows ``rows`` has none, the usual case) deletes
    the day's earlier score rows instead, which commits nothing when there were none.
    """
    from delta.tables import DeltaTable

    from pipelines.delta_io import write_delta

    if empty and DeltaTable.isDeltaTable(spark, path):
        DeltaTable.forPath(spark, path).delete(f"dt = '{day}' AND source = 'score'")
        return
    write_delta(rows, path, ["dt"], replace_where=f"dt = '{day}' AND source = 'score'")


def _count_reasons(bad: DataFrame) -> dict[str, int]:
    return {r["reason"]: int(r["n"]) for r in bad.groupBy("reason").agg(F.count(F.lit(1)).alias("n")).collect()}


@dataclass
class ScoreReport:
    day: str
    model_id: str
    scored: int
    quarantined: dict[str, int]
    seconds: float
    candidates: str
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step of the job, for tuning
    calibration_id: Optional[str] = None  # None: scores are the raw model outputs

    def line(self) -> str:
        q = ", ".join(f"{r} {n:,}" for r, n in sorted(self.quarantined.items())) or "none"
        cal = f"calibrated by {self.calibration_id}" if self.calibration_id else "UNCALIBRATED (no maps)"
        return (f"score {self.day}: {self.scored:,} rows scored by {self.model_id} ({cal}) from "
                f"{self.candidates} in {self.seconds:.1f}s; quarantined: {q}")


def run(spark: SparkSession, cfg: Config, day: str, model_id: Optional[str] = None,
        model: Optional[ScoringModel] = None, run_id: Optional[str] = None,
        fail_after_batches: Optional[int] = None, log=print) -> ScoreReport:
    """Score the candidates of ``day`` and write ``serving/scores`` (see the module docstring)."""
    t0 = time.time()
    sc = cfg.score
    model = model or resolve_model(cfg, model_id)
    spec = model.spec
    if spec.mapping_id != cfg.features.mapping_id:
        log(f"score {day}: model {model.model_id} uses feature mapping {spec.mapping_id}, the "
            f"configuration {cfg.features.mapping_id}; encoding with the model's own spec")
    run_id = run_id or f"score-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    phases: dict[str, float] = {}
    t = time.time()

    def lap(name: str) -> None:
        nonlocal t
        now_ = time.time()
        phases[name] = round(now_ - t, 2)
        t = now_

    cand, where = read_candidates(spark, cfg, day)
    check_candidates(cand, spec, sc.key_columns, where)
    raw_cols = list(dict.fromkeys(sc.key_columns + [f.source for f in spec.categorical]
                                  + [f.source for f in spec.numeric]))
    base = cand.select(*raw_cols)
    parallelism = spark.sparkContext.defaultParallelism
    # Usually every key is unique: then the split is a per-row projection and the
    # scoring pass reads the candidates without any shuffle of whole rows; repeated
    # keys (at-least-once delivery) send only their own rows through a shuffle.
    repeats = check_keys(base, spec, sc.key_columns, parallelism)
    lap("check")
    once, shuffled = tag_parts(base, spec, sc.key_columns, repeats)
    if shuffled is not None:
        # The shuffled rows (all of them on overflow, else those of repeated keys) feed the
        # scores, the quarantine and its count: compute them once.
        shuffled = shuffled.persist()
    tagged = join_parts(once, shuffled)
    per_row = once is not None
    scored: Optional[int] = None
    try:
        good, bad = split_tagged(tagged, per_row)
        encoded = encode_features(good, spec)
        if repeats.count == 0 and encoded.rdd.getNumPartitions() < parallelism:
            # Unshuffled, a day landed as one or two files would run the model in one or two
            # tasks. (Only planned here: the plan holds no exchange, so nothing executes.)
            encoded = encoded.repartition(parallelism)
        prev_batch = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(sc.batch_size))
        try:
            scores = score_frame(encoded, model, sc.key_columns, task_threads(spark, sc), fail_after_batches)
            cal_id = model.calibration.calibration_id if model.calibration is not None else None
            scores = scores.select(*sc.key_columns, *SCORE_COLUMNS, *RAW_COLUMNS,
                                   F.lit(cal_id is not None).alias("calibrated"),
                                   F.lit(cal_id).cast("string").alias("calibration_id"),
                                   F.lit(model.model_id).alias("model_id"),
                                   F.lit(now).cast("timestamp").alias("scored_at"),
                                   F.lit(day).alias("dt"))
            write_scores(scores, cfg.lakehouse.path("scores"), day, sc.key_columns, sc.write_mode, run_id)
        finally:
            spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", prev_batch)
        lap("score_write")
        if repeats.count == 0 and repeats.reasons is not None:
            # Every key unique: the unscorable rows are the per-row reasons the check counted
            # (blank-key exact duplicates collapse in the quarantine: then count after that).
            quarantined = repeats.reasons
            if quarantined.get("missing_key"):
                quarantined = _count_reasons(bad)
            scored = repeats.rows - sum(repeats.reasons.values())
        else:
            quarantined = _count_reasons(bad)
        # Quarantine after the scores commit: a failed scoring run leaves both tables as they were.
        write_quarantine(spark, quarantine_records(bad, sc.key_columns, day, run_id, now),
                         cfg.lakehouse.path("quarantine"), day, empty=not quarantined)
        lap("quarantine_write")
    finally:
        if shuffled is not None:
            shuffled.unpersist()
    if scored is None or sc.write_mode == "merge":
        # Duplicates collapsed, or a MERGE: the commit's metrics hold the day's row count.
        scored = _committed_rows(spark, cfg.lakehouse.path("scores"), run_id)
    if scored is None:
        scored = (spark.read.format("delta").load(cfg.lakehouse.path("scores"))
                  .where(F.col("dt") == day).count())
    lap("count")
    report = ScoreReport(day, model.model_id, scored, quarantined, time.time() - t0, where, phases,
                         model.calibration.calibration_id if model.calibration is not None else None)
    log(report.line())
    return report
