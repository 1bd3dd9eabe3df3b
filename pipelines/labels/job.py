"""Entire-space labels: one row per valid impression, with its click and post-click conversion.

The label job of a day D turns the three raw logs (see :mod:`pipelines.io.contract`)
into ``curated/labels`` rows for the impressions whose event time ``ts`` falls on
D (UTC), and writes every record it cannot use to ``curated/quarantine`` with a
reason. Everything below is decided by event time ``ts``, a run's ``as_of`` and
the windows of the configuration (``labels.*``); the arrival partition ``dt`` only
decides where a record is looked for and whether it arrived in time.

Rules (W = click_window, S = click_skew, T = attribution_window, L = max_lateness)
--------------------------------------------------------------------------------
0. *Visible*: an event counts only when ``ts <= as_of`` and it arrived in time,
   ``date(ts) <= dt <= date(ts + L)``; its event date is ``date(ts)`` (UTC).
1. *Record checks* (each record, first failing check wins; all ``gated``):
   ``corrupt_record`` (unparseable JSON line), ``missing_dt`` (NULL or not
   yyyy-MM-dd), ``missing_<id>`` (NULL/blank ``impression_id``, ``user_id``,
   ``item_id`` of an impression; ``click_id``, ``impression_id`` of a click;
   ``conversion_id`` of a conversion, and its ``user_id``/``item_id`` when it has
   no ``click_id``), ``missing_ts``, ``ts_after_arrival`` (dt before date(ts): a
   clock error), ``arrived_too_late`` (dt after date(ts + L)).
2. *Duplicates*: copies of one id (impression_id, click_id, conversion_id); the
   copy with the earliest ``ts`` is kept (ties: earliest ``dt``, for impressions
   then the smallest ``user_id``, ``item_id``, then a hash of the record, so the
   choice is deterministic). Impression copies are looked for
   within ``ceil(L)`` days before the event date (redelivered copies land within
   the lateness); clicks and conversions among all copies the run reads.
3. *Clicks*: valid when their impression exists and
   ``imp.ts - S <= click.ts <= imp.ts + W``. Otherwise ``orphan_click`` (no
   impression with that id among the impressions the run reads),
   ``click_before_impression`` (beyond the skew) or ``click_after_window``.
4. *Conversions with a click_id* (blank counts as none): looked up among the
   clicks of the ``4 T`` before it (and after it, up to as_of):
   ``unknown_click`` (not found), ``conversion_before_click``,
   ``conversion_after_window`` (later than click.ts + T), ``click_not_valid``
   (its click is quarantined); otherwise attributed to that click.
   *Without a click_id*: last touch, the latest valid click (ties: greatest
   click_id) on an impression with the same ``user_id`` and ``item_id`` with
   ``click.ts <= conv.ts <= click.ts + T``; none: ``no_click_in_window``.
5. *Labels*: one row per kept impression of D: ``click`` = 1 when it has a valid
   click, ``first_click_ts`` the earliest; ``conversion`` = 1 when a conversion
   is attributed to one of its clicks, ``conversion_ts`` the earliest;
   ``label_mature = as_of >= ts + W + T + L`` (the label horizon, ``Windows.horizon_s``);
   ``click_elapsed_s = as_of - first_click_ts`` and ``conversion_delay_s =
   conversion_ts - first_click_ts`` in seconds (null without a click / a conversion).
   ``conversion <= click`` by construction.

Which run quarantines a record (its *owner date*; the quarantine ``dt``)
-----------------------------------------------------------------------
* A record failing a record check: its arrival ``dt`` (``unknown`` when dt itself
  is missing; every run re-derives and replaces that set, so it is never doubled).
* Any other record: its event date ``date(ts)``; a click or conversion after
  as_of is not looked at (a later as-of run will).
Each record has exactly one owner date, and the run of that date replaces all
quarantine rows of that date (replaceWhere dt IN (day, 'unknown'), one commit), so
re-runs replace rather than add and two dates never quarantine the same record.

The gate
--------
Reasons marked ``gated`` in :data:`REASONS` are integrity failures (corrupt or
incomplete records, clock errors, broken references). Window reasons
(``click_after_window``, ``conversion_after_window``, ``no_click_in_window``,
``click_not_valid``) are legitimate late behaviour or follow from a click counted
under clicks: they are quarantined for inspection but do not count towards
``max_bad_fraction`` (about 1% of real conversions come after 7 days).

Tables
------
``curated/labels`` (partitioned by dt)::

    <raw impression columns, in source order, without dt>   e.g. impression_id STRING,
        ts TIMESTAMP, user_id STRING, item_id STRING, user_gender BIGINT, ..., price DOUBLE
    click INT, first_click_ts TIMESTAMP, conversion INT, conversion_ts TIMESTAMP,
    label_mature BOOLEAN, as_of TIMESTAMP, click_elapsed_s DOUBLE, conversion_delay_s DOUBLE,
    dt STRING (= UTC date of ts)

``curated/quarantine``: the schema of :mod:`pipelines.io.quarantine`; this job writes
sources impressions, clicks and conversions, record_id the record's id (or
'sha256:<hex>' of the record when the id is blank), dt the owner date or 'unknown'.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from esmm.config.schema import Config
from esmm.util.timeutil import US, default_as_of, micros_date, new_run_id
from pipelines.io.contract import SOURCES
from pipelines.io.quarantine import UNKNOWN_DT, stamp, write_quarantine
from pipelines.labels.report import DayReport, count_fates
from pipelines.labels.rules import (
    DATE_RE,
    IMP_ORDER,
    REASONS,
    Windows,
    arrived_between,
    attribute_conversions,
    between,
    candidate_conditions,
    check_records,
    click_status,
    day_candidates,
    fold_copies,
    kept_impressions,
    label_rows,
    quarantine_rows,
    rank_copies,
    record_json,
    scope_of,
    winners,
)

# A cached side up to this many rows is broadcast where the planner's static estimate
# would shuffle the large side first (AQE switches to a broadcast only after that shuffle).
BROADCAST_MAX_ROWS = 2_000_000
LABEL_COLUMNS = (
    "click",
    "first_click_ts",
    "conversion",
    "conversion_ts",
    "label_mature",
    "as_of",
    "click_elapsed_s",
    "conversion_delay_s",
    "dt",
)


class LabelGateError(RuntimeError):
    """A source's quarantined share exceeds ``labels.max_bad_fraction``; nothing was written."""


@dataclass
class LabelResult:
    """Lazy outputs of one day's label computation (see :func:`build_labels`)."""

    labels: DataFrame
    quarantine: DataFrame  # source, record_id, reason, record, dt
    fates: DataFrame  # source, fate, reason, n: what became of each raw row the day owns
    persisted: list[DataFrame] = field(default_factory=list)

    def unpersist(self) -> None:
        for df in self.persisted:
            df.unpersist()


def build_labels(
    impressions: DataFrame,
    clicks: DataFrame,
    conversions: DataFrame,
    day: str,
    as_of: dt.datetime,
    w: Windows,
    persist: bool = False,
) -> LabelResult:
    """Labels, quarantine rows and per-row fates of one day (no table is written).

    Inputs: the raw sources (contract of :mod:`pipelines.io.contract`; JSON sources may
    carry ``_corrupt_record``) holding at least the partitions of
    :meth:`pipelines.labels.rules.Scope.dt_range`; more is fine, the result is the same. ``as_of`` cuts
    event time (``ts <= as_of``). ``fates`` has one row per (source, fate, reason)
    with fate in: labelled, valid, attributed, duplicate, quarantined, after_as_of.

    With ``persist`` the intermediates every output shares (the day's bad and late
    impressions, its duplicate ids and their winners, the looked-up impressions,
    clicks, conversions and their verdicts) are cached and counted here, one Spark
    job each, so the counts and the quarantine cost one pass over cached columns and
    only the labels read the day's impressions at full width, once. The caller
    releases them with :meth:`LabelResult.unpersist`. Without it, everything is lazy.
    """
    persisted: list[DataFrame] = []
    try:
        return _build_labels(impressions, clicks, conversions, day, as_of, w, persist, persisted)
    except BaseException:
        for df in persisted:
            df.unpersist()
        raise


def _build_labels(
    impressions: DataFrame,
    clicks: DataFrame,
    conversions: DataFrame,
    day: str,
    as_of: dt.datetime,
    w: Windows,
    persist: bool,
    persisted: list[DataFrame],
) -> LabelResult:
    sc = scope_of(day, as_of, w)
    a = F.lit(sc.as_of_us)

    counts: dict[int, int] = {}

    def keep(df: DataFrame) -> DataFrame:
        # Materialised at once, in order: a cached frame's plan is fixed when it is
        # cached, so each later one is planned with the real sizes of the ones before
        # (small sides broadcast instead of shuffling the large side first).
        if persist:
            df = df.persist()
            counts[id(df)] = df.count()
            persisted.append(df)
        return df

    us, reason, dt_ = F.col("__us"), F.col("__reason"), F.col("dt")
    is_day = F.col("__date") == day
    day_arrivals = arrived_between(day, micros_date(sc.day_hi + w.max_lateness * US))
    # A bad record's owner is its dt (or 'unknown'), so only those partitions hold them.
    own_dt = (dt_ == day) | dt_.isNull() | ~dt_.rlike(DATE_RE)
    owned_bad = own_dt & reason.isNotNull() & F.col("__owner").isin(day, UNKNOWN_DT)
    after_as_of = day_arrivals & reason.isNull() & is_day & (us > a)

    # Impressions are the wide, large source: every pass over the scope is narrow (no
    # record hash, no feature columns), and only the labels read the day at full width.
    imp = check_records(impressions, "impressions", w, with_hash=False)
    imps_ok = imp.where(reason.isNull() & (us <= a) & between(us, sc.imp_lo, sc.hi))
    # Owned bad records and the day's arrivals after as_of: few, kept with their JSON.
    imp_odd = keep(
        imp.where((own_dt | day_arrivals) & (owned_bad | after_as_of)).select(
            *[c for c in imp.columns if c.startswith("__") or c in ("impression_id", "dt")],
            F.when(reason.isNotNull(), record_json(imp)).alias("__record"),
        )
    )
    chk = {s: keep(check_records(df, s, w)) for s, df in (("clicks", clicks), ("conversions", conversions))}
    ok = {s: df.where(reason.isNull() & (us <= a)) for s, df in chk.items()}
    clicks_ranked = keep(rank_copies(ok["clicks"].where(between(us, sc.click_lo, sc.hi)), "click_id"))
    clicks_kept = clicks_ranked.where(F.col("__rank") == 1)

    copies = keep(fold_copies(day_candidates(imps_ok, sc, w)))
    n_lookup = counts.get(id(clicks_ranked), BROADCAST_MAX_ROWS) + counts.get(id(copies), BROADCAST_MAX_ROWS)
    dup_ids = copies.where(F.col("impression_id").isNotNull())
    # One narrow pass over the scope picks out every impression a later step looks at:
    # the clicked ones (click validity) and the day's duplicated ones (their winner).
    lookup = (
        clicks_kept.where(between(us, sc.valid_lo, sc.hi))
        .select("impression_id")
        .unionByName(dup_ids.select("impression_id"))
        .distinct()
    )
    if n_lookup <= BROADCAST_MAX_ROWS:  # known small: broadcast, rather than shuffle the scope first
        lookup = F.broadcast(lookup)
    on_day, earlier = candidate_conditions(sc, w)
    few = keep(
        imps_ok.select(
            "impression_id", *IMP_ORDER, "__date", (on_day | earlier).alias("__cand"), on_day.cast("long").alias("__d")
        ).join(lookup, "impression_id", "left_semi")
    )
    multi = keep(winners(few.where(F.col("__cand")), dup_ids))
    status = keep(click_status(clicks_kept, few, sc, w))
    convs_ranked = keep(rank_copies(ok["conversions"].where(between(us, sc.conv_lo, sc.hi)), "conversion_id"))
    attributed = keep(attribute_conversions(convs_ranked.where(F.col("__rank") == 1), clicks_kept, status, sc, w))

    # The only full-width read: the day's arrivals, checked again (cheap, no shuffle).
    full_day = check_records(impressions.where(day_arrivals), "impressions", w, with_hash=False).where(
        reason.isNull() & is_day & (us <= a)
    )
    if counts.get(id(multi), BROADCAST_MAX_ROWS + 1) <= BROADCAST_MAX_ROWS:
        multi = F.broadcast(multi)  # the full-width day streams past it, never shuffled
    labels = label_rows(kept_impressions(full_day, multi, day), status, attributed, sc, w)

    q = [quarantine_rows(imp_odd.where(owned_bad), "impressions", F.col("__owner"))]
    q += [quarantine_rows(chk[s].where(owned_bad), s, F.col("__owner")) for s in ("clicks", "conversions")]
    q.append(quarantine_rows(status.where(is_day & reason.isNotNull()), "clicks", F.lit(day)))
    q.append(quarantine_rows(attributed.where(is_day & reason.isNotNull()), "conversions", F.lit(day)))
    quarantine = _union(q).groupBy("source", "record_id", "reason", "dt").agg(F.min("record").alias("record"))
    quarantine = quarantine.select("source", "record_id", "reason", "record", "dt")

    def fate(df: DataFrame, source: str, f: Column, why: Column, n: Column = F.lit(1)) -> DataFrame:
        return df.select(F.lit(source).alias("source"), f.alias("fate"), why.alias("reason"), n.cast("long").alias("n"))

    none = F.lit(None).cast("string")
    checked = {"impressions": imp_odd, **chk}
    rows = [fate(checked[s].where(owned_bad), s, F.lit("quarantined"), reason) for s in SOURCES]
    rows += [fate(checked[s].where(after_as_of), s, F.lit("after_as_of"), none) for s in SOURCES]
    won = F.col("__w_date") == day
    rows.append(
        fate(copies.where(F.col("impression_id").isNull()), "impressions", F.lit("labelled"), none, F.col("__ids"))
    )  # the ids with a single copy
    rows.append(fate(multi.where(won), "impressions", F.lit("labelled"), none))
    rows.append(fate(multi, "impressions", F.lit("duplicate"), none, F.col("__n_day") - won.cast("long")))
    for source, ranked, decided, ok_fate in (
        ("clicks", clicks_ranked, status, "valid"),
        ("conversions", convs_ranked, attributed, "attributed"),
    ):
        rows.append(fate(ranked.where(is_day & (F.col("__rank") > 1)), source, F.lit("duplicate"), none))
        detail = F.col("__via") if source == "conversions" else none
        rows.append(
            fate(
                decided.where(is_day),
                source,
                F.when(reason.isNull(), ok_fate).otherwise("quarantined"),
                F.coalesce(reason, detail),
            )
        )
    fates = _union(rows).groupBy("source", "fate", "reason").agg(F.sum("n").alias("n")).where(F.col("n") > 0)
    return LabelResult(labels, quarantine, fates, persisted)


def _union(dfs: list[DataFrame]) -> DataFrame:
    out = dfs[0]
    for df in dfs[1:]:
        out = out.unionByName(df)
    return out


def check_gate(report: DayReport, max_bad_fraction: float) -> None:
    """Raise :class:`LabelGateError` naming the first source above ``max_bad_fraction``."""
    for s in SOURCES:
        c = report.sources[s]
        if c.bad_fraction > max_bad_fraction:
            top = sorted(((n, r) for r, n in c.quarantined.items() if REASONS.get(r, (True,))[0]), reverse=True)
            raise LabelGateError(
                f"labels {report.day}: {s}: {c.bad_fraction:.2%} of {c.rows_in - c.duplicates:,} "
                f"distinct records quarantined for integrity reasons ("
                + ", ".join(f"{r} {n:,}" for n, r in top)
                + f"), above labels.max_bad_fraction={max_bad_fraction:.2%}; nothing was written "
                f"for {report.day}. Fix the {s} source, or raise labels.max_bad_fraction "
                f"if this is expected."
            )


# --------------------------------------------------------------------------- job edge


def read_scope(spark: SparkSession, cfg: Config, source: str, first_dt: str, last_dt: str) -> DataFrame:
    """The raw source restricted to arrival partitions [first_dt, last_dt] (plus rows whose
    dt is missing or malformed), so Delta and partitioned folders prune and cost follows
    the window, not the history. A Delta source is pinned to its version at this call:
    the job reads the frame in several passes, and they must all see the same rows."""
    from pipelines.io.delta import read_raw

    df = read_raw(spark, cfg, source, pin=True)
    dt_ = F.col("dt")
    return df.where(((dt_ >= first_dt) & (dt_ <= last_dt)) | dt_.isNull() | ~dt_.rlike(DATE_RE))


def run_day(
    spark: SparkSession, cfg: Config, day: str, as_of: dt.datetime | None = None, run_id: str | None = None, log=print
) -> DayReport:
    """Label one day: read the scope, compute, report, gate, then write.

    Writes ``curated/quarantine`` (replaceWhere dt IN (day, 'unknown')) and then
    ``curated/labels`` (replaceWhere dt = day), each one atomic Delta commit; a
    failed gate raises :class:`LabelGateError` before either write.
    """
    from pipelines.io.delta import read_delta, write_delta

    t0 = time.time()
    w = Windows.from_config(cfg.labels)
    as_of = as_of or default_as_of(day)
    run_id = run_id or new_run_id("labels")
    sc = scope_of(day, as_of, w)
    src = {s: read_scope(spark, cfg, s, *sc.dt_range(s, w)) for s in SOURCES}
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = time.time() - t0 - sum(timings.values())

    res = build_labels(src["impressions"], src["clicks"], src["conversions"], day, as_of, w, persist=True)
    lap("decide")
    try:
        # The counts come from the cached intermediates; the gate needs nothing else.
        report = DayReport(day, as_of, run_id, count_fates(res.fates.collect()), timings=timings)
        lap("count")
        check_gate(report, cfg.labels.max_bad_fraction)
        # Every run re-derives the whole 'unknown' set (rows without a valid dt are always
        # read), so replacing it with the day's never loses or doubles a record.
        write_quarantine(
            stamp(res.quarantine, run_id, dt.datetime.now(dt.timezone.utc)),
            cfg.lakehouse.path("quarantine"),
            [day, UNKNOWN_DT],
            SOURCES,
        )
        lap("quarantine")
        # Written straight from the plan (caching a full-width day costs more than one
        # more read); the summary is read back from the committed partition.
        labels_path = cfg.lakehouse.path("labels")
        # merge_schema: a table written before the delay columns existed gains them (older days: null).
        write_delta(res.labels, labels_path, ["dt"], replace_where=f"dt = '{day}'", merge_schema=True)
        report.written = True
        lap("labels")
        summary = (
            read_delta(spark, labels_path)
            .where(F.col("dt") == day)
            .agg(F.count(F.lit(1)), F.sum("click"), F.sum("conversion"), F.sum(F.col("label_mature").cast("int")))
            .first()
        )
        report.label_rows, report.clicks, report.conversions, report.mature = (int(x or 0) for x in summary)
        lap("summary")
        report.seconds = time.time() - t0
        for line in report.lines():
            log(line)
        return report
    except LabelGateError:
        for line in report.lines():
            log(line)
        raise
    finally:
        res.unpersist()


def run(
    spark: SparkSession,
    cfg: Config,
    dates: list[str],
    as_of: dt.datetime | None = None,
    run_id: str | None = None,
    log=print,
) -> list[DayReport]:
    """Label each of ``dates`` in order (each day one atomic unit, as if run alone).

    ``as_of`` applies to every date; by default each date uses its own end of day.
    Stops at the first date whose gate fails (earlier dates stay written). An unreadable
    raw file or Delta log: :class:`pipelines.io.errors.TableReadError`; a table that
    cannot be written: :class:`pipelines.io.errors.TableWriteError` (nothing committed).
    """
    from pipelines.io.delta import reading_raw

    run_id = run_id or new_run_id("labels")
    # A corrupt raw file fails inside Spark, far from here: name the table and the file.
    with reading_raw(spark, cfg, SOURCES):
        return [run_day(spark, cfg, d, as_of, run_id, log) for d in dates]
