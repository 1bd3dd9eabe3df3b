"""Ali-CCP ingest: the public release (Tianchi dataset 408) -> ``curated/labels`` + quarantine.

Raw release: two text files per split, joined by ``common_feature_index``::

    sample_skeleton_{train,test}.csv: sample_id,click,conversion,common_feature_index,feature_num,feature_list
    common_features_{train,test}.csv: common_feature_index,feature_num,feature_list

A feature list holds ``feature_num`` features separated by ``\\x01``; a feature is
``field_id\\x02feature_id\\x03value``. The skeleton row carries the item side and the
common row the user side of one impression. Every feature id of a field is kept:
a field marked ``multi`` in the feature spec becomes an ARRAY<STRING> column of all
its ids (skeleton ids first, then common ids, each in file order); a single-valued
field becomes a STRING column (NULL when the row has none).

The ``\\x03`` value is dropped (every id is kept, whatever its value): the ESMM
paper's model embeds and pools ids, with no per-id weight. The fields whose values carry
information are the multi-valued behaviour fields and crosses (torch-rechub's processing
keeps a dense ``D<field>`` column for exactly 109_14, 110_14, 127_14, 150_14, 508, 509,
702, 853; README, Ali-CCP). Keeping them would need a weight array beside each id array
through labels, examples, loader and scorer (EmbeddingBag weights ids in ``sum`` mode only).

Output rows follow the ``curated/labels`` contract (one row per impression)::

    impression_id STRING ('<split>-<sample_id>'), ts TIMESTAMP (midnight of dt), user_id STRING (f101),
    item_id STRING (f205), f<field> STRING | ARRAY<STRING> (one per spec field), click INT,
    first_click_ts TIMESTAMP (NULL), conversion INT, conversion_ts TIMESTAMP (NULL),
    label_mature BOOLEAN (true: the release's labels are final), as_of TIMESTAMP (end of dt), dt STRING

The release has no timestamps, so each split gets a pseudo-date (``aliccp.train_date``,
``aliccp.val_date``, ``aliccp.test_date``; every layout, every file of a split on its
date; ``--date`` puts a slice on a date of its own, never another split's): the ESMM
paper trains on the train half and evaluates on the test half.

The gate: the quarantine is written first; when more than ``aliccp.max_bad_fraction``
of a source's records (skeleton lines, common lines) are quarantined the job raises
:class:`IngestGateError` naming the file, the counts and the top reasons, and
``curated/labels`` is not written (that date keeps what an earlier ingest wrote).
:class:`IngestGateError` is re-exported here for callers of the jobs.

PaddleRec's processed text layout (``sample_id,click,conversion,field:id,...``, a
multi-valued field repeated) goes through the same :func:`to_labels` (:func:`run_paddle`),
and so does torch-rechub's processed CSV layout (:func:`run_csv`).

Quarantine reasons (source ``aliccp_skeleton`` or ``aliccp_common``; the record is the raw line):

    malformed_line              wrong number of comma-separated columns, or a blank id
    bad_label                   click or conversion not 0/1
    bad_feature                 a feature not of the form field\\x02id\\x03value (e.g. a bad separator)
    feature_num_mismatch        feature_num differs from the number of features in the list
    conversion_without_click    conversion=1 with click=0 (the release's labels are post-click)
    duplicate_common_index      several common lines share one index (all copies quarantined)
    common_index_not_found      no valid common line with the skeleton row's index
    multiple_values:f<id>       several ids in a field the spec marks single-valued

Everything is a linear Spark plan over ``spark.read.text`` (no driver collect); the
join is a shuffle join, so memory stays flat as the files grow.
"""

from __future__ import annotations

import datetime as dt
from typing import Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from esmm.config.schema import Config
from pipelines.ingest.aliccp_processed import (  # noqa: F401 (parse_csv, split_of_or_none, ...: re-exported)
    parse_csv,
    parse_paddle,
    read_csv,
    split_of,
    split_of_or_none,
)
from pipelines.ingest.aliccp_release import (  # noqa: F401 (FIELD_COLUMN, field_id, parse_*, ...: re-exported)
    FIELD_COLUMN,
    SOURCES,
    SPLITS,
    build,
    field_id,
    join_common,
    parse_common,
    parse_skeleton,
    quarantine,
    to_labels,
)
from pipelines.ingest.gate import IngestGateError, check_bad_fraction  # noqa: F401 (IngestGateError: re-exported)

# --------------------------------------------------------------------------- jobs


def _write(
    spark: SparkSession,
    cfg: Config,
    labels: DataFrame,
    bad: DataFrame,
    day: str,
    read: dict[str, tuple[int, str]],
    log=print,
) -> dict[str, int]:
    """Replace this job's quarantine rows of ``day``, gate on the quarantined share
    (:func:`check_bad_fraction`, ``read`` = source -> (records read, file names)),
    then replace ``dt = day`` of curated/labels; report."""
    from esmm.util.timeutil import new_run_id
    from pipelines.io.delta import read_delta, write_delta
    from pipelines.io.quarantine import stamp, write_quarantine

    run_id = new_run_id("aliccp")
    labels_path, q_path = cfg.lakehouse.path("labels"), cfg.lakehouse.path("quarantine")
    q = stamp(bad, run_id, dt.datetime.now(dt.timezone.utc))
    # Only this job's sources: the label job and the scorer quarantine into the same table.
    # Written first: the gate reads its counts back instead of parsing the input once more.
    write_quarantine(q, q_path, [day], SOURCES)
    by_source: dict[str, dict[str, int]] = {}
    for row in (
        read_delta(spark, q_path)
        .where((F.col("dt") == day) & F.col("source").isin(*SOURCES))
        .groupBy("source", "reason")
        .agg(F.count(F.lit(1)).alias("n"))
        .collect()
    ):
        by_source.setdefault(row["source"], {})[row["reason"]] = int(row["n"])
    reasons: dict[str, int] = {}
    for per in by_source.values():
        for k, v in per.items():
            reasons[k] = reasons.get(k, 0) + v
    check_bad_fraction(by_source, read, day, cfg.aliccp.max_bad_fraction)
    write_delta(labels, labels_path, ["dt"], replace_where=f"dt = '{day}'")
    r = (
        read_delta(spark, labels_path)
        .where(F.col("dt") == day)
        .agg(F.count(F.lit(1)).alias("rows"), F.sum("click").alias("clicks"), F.sum("conversion").alias("conversions"))
        .first()
    )
    counts = {"rows": int(r["rows"]), "clicks": int(r["clicks"] or 0), "conversions": int(r["conversions"] or 0)}
    counts.update({f"quarantined:{k}": v for k, v in sorted(reasons.items())})
    log(
        f"curated/labels dt={day}: {counts['rows']:,} impressions, {counts['clicks']:,} clicks, "
        f"{counts['conversions']:,} conversions; quarantined: "
        + (", ".join(f"{k}={v:,}" for k, v in sorted(reasons.items())) or "none")
    )
    return counts


def day_of(cfg: Config, split: str, day: Optional[str] = None) -> str:
    """The pseudo-date of ``split`` (``aliccp.<split>_date``, or a slice's ``day``).

    Raises ValueError when ``day`` is another split's date: the write would replace that
    split's rows (a date holds one split, so training and evaluation days never mix).
    """
    if day is None:
        return cfg.aliccp.date_of(split)
    other = [s for s in SPLITS if s != split and cfg.aliccp.date_of(s) == day]
    if other:
        raise ValueError(
            f"--date {day} is aliccp.{other[0]}_date: a {split} slice there would replace "
            f"the {other[0]} split's rows; pick a date no other split uses"
        )
    return day


def run(
    spark: SparkSession, cfg: Config, skeleton: str, common: str, split: str, day: Optional[str] = None, log=print
) -> dict[str, int]:
    """Ingest one split of the raw release into ``dt = day`` (default: ``aliccp.<split>_date``).

    Re-running replaces that date (labels) and this job's quarantine rows of it. Raises
    :class:`IngestGateError` (labels not written) when more than ``aliccp.max_bad_fraction``
    of the skeleton lines, or of the common lines, are quarantined.
    Returns rows, clicks, conversions and ``quarantined:<reason>`` counts.
    """
    day = day_of(cfg, split, day)
    skel_lines, common_lines = spark.read.text(skeleton), spark.read.text(common)
    labels, bad = build(skel_lines, common_lines, cfg.features, split, day)
    read = {SOURCES[0]: (skel_lines.count(), skeleton), SOURCES[1]: (common_lines.count(), common)}
    return _write(spark, cfg, labels, bad, day, read, log)


def run_paddle(
    spark: SparkSession, cfg: Config, paths: list[str], split: str, day: Optional[str] = None, log=print
) -> dict[str, int]:
    """Ingest PaddleRec text files (all of one split) into ``dt = day`` (default ``aliccp.<split>_date``)."""
    day = day_of(cfg, split, day)
    lines = spark.read.text(paths)
    parsed = parse_paddle(lines)
    rows = to_labels(parsed.where(F.col("reason").isNull()), cfg.features, split, day)
    labels = rows.where(F.col("reason").isNull()).drop("sample_id", "line", "reason")
    bad = quarantine(parsed, SOURCES[0], "sample_id", day).unionByName(quarantine(rows, SOURCES[0], "sample_id", day))
    return _write(spark, cfg, labels, bad, day, {SOURCES[0]: (lines.count(), ", ".join(paths))}, log)


def run_csv(
    spark: SparkSession,
    cfg: Config,
    paths: list[str],
    split: Optional[str] = None,
    day: Optional[str] = None,
    log=print,
) -> dict[str, dict[str, int]]:
    """Ingest processed CSV files, all files of one split together into that split's date.

    The split comes from each file name (or ``split`` for all); the date is
    ``aliccp.<split>_date`` (or ``day``, for a single split), the raw ingest's scheme.
    Returns split -> the counts of :func:`run`.
    """
    groups: dict[str, list[str]] = {}
    for path in paths:
        groups.setdefault(split or split_of(path), []).append(path)
    if day is not None and len(groups) > 1:
        raise ValueError(
            f"--date {day} with files of several splits ({', '.join(groups)}): one date "
            f"holds one split; ingest each split's files on their own"
        )
    out = {}
    for s, files in groups.items():
        d = day_of(cfg, s, day)
        raw = read_csv(spark, files)
        rows = parse_csv(raw, cfg.features, s, d)
        labels = rows.where(F.col("reason").isNull()).drop("sample_id", "line", "reason")
        out[s] = _write(
            spark,
            cfg,
            labels,
            quarantine(rows, SOURCES[0], "sample_id", d),
            d,
            {SOURCES[0]: (raw.count(), ", ".join(files))},
            log,
        )
    return out
