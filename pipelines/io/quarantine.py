"""The quarantine table: the one home of its schema, record ids, blank test and writer.

Every job that refuses a record writes it to ``curated/quarantine`` with a
reason instead of dropping it: the label job (sources ``impressions``,
``clicks``, ``conversions``; see :mod:`pipelines.labels.job`) and the scorer
(source ``score``; see :mod:`pipelines.scoring.job`). Each job owns its sources'
rows and replaces them per day, so the jobs never overwrite each other's rows.

``curated/quarantine`` (Delta, partitioned by dt)::

    source          STRING     impressions | clicks | conversions | score
    record_id       STRING     the record's key, or 'sha256:<hex>' of ``record``
                               when a key is blank (:func:`record_id`)
    reason          STRING     why the record was refused (each job lists its reasons)
    record          STRING     the record as JSON (the raw line for corrupt_record)
    run_id          STRING     the run that wrote the row
    quarantined_at  TIMESTAMP  UTC, one value per run
    dt              STRING     the owner date yyyy-MM-dd, or 'unknown' (:data:`UNKNOWN_DT`)

Blank (:func:`is_blank`): a value is blank when it is NULL or, as a string,
empty or only ASCII spaces, the characters SQL's ``trim`` removes. So ``NULL``,
``''`` and ``'  '`` are blank; ``' x'`` is not, and neither is a tab or a
newline (a key holding one is a real, if odd, value; the SQL oracle of the
tests, ``trim(c) <> ''``, agrees).
"""

from __future__ import annotations

import datetime as dt
from typing import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from esmm.util.timeutil import utc_micros

UNKNOWN_DT = "unknown"  # owner date of a record whose own dt is missing or malformed

QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField("source", T.StringType()),
        T.StructField("record_id", T.StringType()),
        T.StructField("reason", T.StringType()),
        T.StructField("record", T.StringType()),
        T.StructField("run_id", T.StringType()),
        T.StructField("quarantined_at", T.TimestampType()),
        T.StructField("dt", T.StringType()),
    ]
)


def is_blank(c: str) -> Column:
    """True when column ``c`` is NULL, empty or only ASCII spaces (see the module docstring).

    Spelled so that the common case, a non-empty string not starting with a
    space, is decided without ``trim``, which copies every string it sees.
    """
    s = F.col(c).cast("string")
    return s.isNull() | (s == "") | (s.startswith(" ") & (F.trim(s) == ""))


def any_blank(cols: Sequence[str]) -> Column:
    """True when any of ``cols`` is blank (:func:`is_blank`)."""
    out = is_blank(cols[0])
    for c in cols[1:]:
        out = out | is_blank(c)
    return out


def record_id(keys: Sequence[str], record: Column) -> Column:
    """The quarantine ``record_id``: the key when none of ``keys`` is blank, else
    ``'sha256:<hex>'`` of ``record`` (the record's JSON), so a keyless record still
    has a stable id. Several keys: their JSON object, e.g. ``{"a":"1","b":"2"}``."""
    if len(keys) == 1:
        key = F.col(keys[0]).cast("string")
    else:
        key = F.to_json(F.struct(*[F.col(k) for k in keys]))
    return F.when(any_blank(keys), F.concat(F.lit("sha256:"), F.sha2(record, 256))).otherwise(key)


def stamp(rows: DataFrame, run_id: str, now: dt.datetime) -> DataFrame:
    """``rows`` (source, record_id, reason, record, dt) with ``run_id`` and
    ``quarantined_at`` = ``now`` (naive = UTC), in :data:`QUARANTINE_SCHEMA`'s order and types."""
    extra = {"run_id": F.lit(run_id), "quarantined_at": F.timestamp_micros(F.lit(utc_micros(now)))}
    return rows.select(
        *[
            (extra[f.name] if f.name in extra else F.col(f.name)).cast(f.dataType).alias(f.name)
            for f in QUARANTINE_SCHEMA.fields
        ]
    )


def _in(values: Sequence[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def write_quarantine(
    rows: DataFrame, path: str, days: Sequence[str], sources: Sequence[str], empty: bool = False
) -> None:
    """Replace the quarantine rows of ``sources`` on the dates ``days`` with ``rows``, in one commit.

    ``replaceWhere dt IN (days) AND source IN (sources)``: each job replaces only
    its own sources' rows, so a re-run replaces instead of adding and the other
    job's rows of the same day stay. Not a MERGE: records of one conflicting key
    share record_id and reason, and a MERGE refuses several source rows for one
    target row. ``rows`` must hold only those dates and sources (Delta checks it).
    ``empty=True`` (the caller knows ``rows`` has none, the usual case) deletes
    the matching rows instead, which commits nothing when there were none.
    """
    from pipelines.io.delta import delete_where, write_delta

    where = f"dt IN ({_in(days)}) AND source IN ({_in(sources)})"
    if empty and delete_where(rows.sparkSession, path, where):
        return
    rows = rows.select(*[F.col(f.name).cast(f.dataType) for f in QUARANTINE_SCHEMA.fields])
    write_delta(rows, path, ["dt"], replace_where=where)
