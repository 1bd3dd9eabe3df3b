"""Which candidate rows the scorer cannot score, and why: checks, tagging and the split.

Before any scoring the job checks the candidates' columns against the model's
feature spec (:func:`check_candidates`) and, in one query, finds the key
hashes that repeat and counts the per-row reasons (:func:`check_keys`). Rows
that cannot be scored get a ``reason`` (:func:`tag_unscorable`) and are split
off (:func:`split_tagged`) into ``curated/quarantine`` rows with source
``score`` (:func:`quarantine_records`); exact duplicate rows collapse to one.
Only the rows of repeated keys are shuffled.

Reasons, first match wins: ``missing_key`` (a key is blank, see
:func:`pipelines.io.quarantine.is_blank`), ``unparseable:<column>`` (a numeric
feature that does not parse as a number) and ``conflicting_duplicate_key``.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass
from typing import Any, Optional

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from esmm.config.schema import FeatureSpec
from pipelines.io.quarantine import any_blank, record_id, stamp
from pipelines.scoring.model import ScoringInputError

QUARANTINE_SOURCE = "score"  # this job's rows of curated/quarantine


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
            f"{sorted(have)}. Score a table with these columns, or a model trained on this table's features"
        )


def _row_reason(spec: FeatureSpec, keys: list[str]) -> Column:
    """The reason a single row cannot be scored (NULL: it can), before any duplicate check."""
    reason = F.lit(None).cast("string")
    for f in reversed(spec.numeric):
        raw = F.col(f.source)
        bad = raw.isNotNull() & raw.cast("double").isNull()
        reason = F.when(bad, F.lit(f"unparseable:{f.source}")).otherwise(reason)
    return F.when(any_blank(keys), F.lit("missing_key")).otherwise(reason)


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


def check_keys(
    df: DataFrame, spec: FeatureSpec, keys: list[str], partitions: int, limit: int = 2_000_000
) -> KeyRepeats:
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
    observed = df.observe(
        obs,
        F.count(F.lit(1)).alias("rows"),
        *[F.count(F.when(reason == r, 1)).alias(f"r{i}") for i, r in enumerate(per_row)],
    )
    repeated = (
        observed.where(~any_blank(keys))
        .select(_key_hash(keys).alias(KEY_HASH))
        .repartition(partitions, KEY_HASH)
        .groupBy(KEY_HASH)
        .count()
        .where(F.col("count") > 1)
        .select(KEY_HASH)
        .limit(limit + 1)
    )
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
        "reason",
        F.when(
            F.col("reason").isNull() & (F.count(F.lit(1)).over(per_key) > 1), F.lit("conflicting_duplicate_key")
        ).otherwise(F.col("reason")),
    )


def tag_unscorable(
    df: DataFrame, spec: FeatureSpec, keys: list[str], repeats: Optional[KeyRepeats] = None
) -> DataFrame:
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


def tag_parts(
    df: DataFrame, spec: FeatureSpec, keys: list[str], repeats: Optional[KeyRepeats] = None
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


def split_unscorable(
    df: DataFrame, spec: FeatureSpec, keys: list[str], repeats: Optional[KeyRepeats] = None
) -> tuple[DataFrame, DataFrame]:
    """(scorable rows, rows with a ``reason`` column) of the candidates ``df``.

    Exact duplicate rows (at-least-once delivery) collapse to one; the reasons
    are :func:`tag_unscorable`'s, and so is ``repeats``. Output rows keep
    ``df``'s columns.
    """
    tagged = tag_unscorable(df, spec, keys, repeats)
    return split_tagged(tagged, per_row=repeats is not None and not repeats.overflow)


def quarantine_records(bad: DataFrame, keys: list[str], day: str, run_id: str, now: dt.datetime) -> DataFrame:
    """Quarantine rows (curated/quarantine schema) of ``bad`` (candidates + ``reason``)."""
    data_cols = [c for c in bad.columns if c != "reason"]
    record = F.to_json(F.struct(*[F.col(c) for c in data_cols]))
    rows = bad.select(
        F.lit(QUARANTINE_SOURCE).alias("source"),
        record_id(keys, record).alias("record_id"),
        F.col("reason"),
        record.alias("record"),
        F.lit(day).alias("dt"),
    )
    return stamp(rows, run_id, now)


def count_reasons(bad: DataFrame) -> dict[str, int]:
    return {r["reason"]: int(r["n"]) for r in bad.groupBy("reason").agg(F.count(F.lit(1)).alias("n")).collect()}
