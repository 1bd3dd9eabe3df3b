"""Entire-space labels: one row per valid impression, with its click and post-click conversion.

The label job of a day D turns the three raw logs (see :mod:`pipelines.contract`)
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
   ``label_mature = as_of >= ts + W + T``. ``conversion <= click`` by construction.

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
    label_mature BOOLEAN, as_of TIMESTAMP, dt STRING (= UTC date of ts)

``curated/quarantine``: the schema of :mod:`pipelines.quarantine`; this job writes
sources impressions, clicks and conversions, record_id the record's id (or
'sha256:<hex>' of the record when the id is blank), dt the owner date or 'unknown'.
"""
from __future__ import annotations

import datetime as dt
import math
import time
import uuid
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from esmm.config import Config, LabelConfig
from esmm.timeutil import DAY_S, DAY_US, US, default_as_of, micros_date, utc_micros
from pipelines.contract import CORRUPT_COLUMN, ID_COLUMN, REQUIRED_IDS, SOURCES
from pipelines.quarantine import UNKNOWN_DT, is_blank, record_id, stamp, write_quarantine

# A cached side up to this many rows is broadcast where the planner's static estimate
# would shuffle the large side first (AQE switches to a broadcast only after that shuffle).
BROADCAST_MAX_ROWS = 2_000_000
CLICK_LOOKUP_WINDOWS = 4  # a conversion's click is searched 4 attribution windows back
DATE_RE = r"^\d{4}-\d{2}-\d{2}$"

# reason -> (gated, what it means). Gated reasons count towards max_bad_fraction.
REASONS: dict[str, tuple[bool, str]] = {
    "corrupt_record": (True, "the line could not be parsed; record holds the raw line"),
    "missing_dt": (True, "arrival partition dt is NULL or not yyyy-MM-dd"),
    "missing_impression_id": (True, "impression_id is NULL or blank"),
    "missing_click_id": (True, "click_id is NULL or blank"),
    "missing_conversion_id": (True, "conversion_id is NULL or blank"),
    "missing_user_id": (True, "user_id is NULL or blank (impression, or conversion without click_id)"),
    "missing_item_id": (True, "item_id is NULL or blank (impression, or conversion without click_id)"),
    "missing_ts": (True, "ts is NULL"),
    "ts_after_arrival": (True, "dt is before the UTC date of ts (clock error)"),
    "arrived_too_late": (True, "dt is after the UTC date of ts + max_lateness"),
    "orphan_click": (True, "no impression with its impression_id among those the run reads"),
    "click_before_impression": (True, "click ts earlier than impression ts - click_skew"),
    "click_after_window": (False, "click ts later than impression ts + click_window"),
    "unknown_click": (True, "no click with its click_id within 4 attribution windows before it"),
    "conversion_before_click": (True, "conversion ts earlier than its click's ts"),
    "conversion_after_window": (False, "conversion ts later than click ts + attribution_window"),
    "click_not_valid": (False, "its click is quarantined (counted under clicks)"),
    "no_click_in_window": (False, "no click_id and no valid click of the same user_id and "
                                  "item_id within attribution_window before it"),
}

LABEL_COLUMNS = ("click", "first_click_ts", "conversion", "conversion_ts", "label_mature", "as_of", "dt")


class LabelGateError(RuntimeError):
    """A source's quarantined share exceeds ``labels.max_bad_fraction``; nothing was written."""


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Windows:
    """The label windows, in whole seconds."""

    click_skew: int = 300
    click_window: int = DAY_S
    attribution_window: int = 7 * DAY_S
    max_lateness: int = DAY_S

    @classmethod
    def from_config(cls, c: LabelConfig) -> "Windows":
        return cls(c.seconds("click_skew"), c.seconds("click_window"),
                   c.seconds("attribution_window"), c.seconds("max_lateness"))

    @property
    def dedupe_days(self) -> int:
        """Days before an event date searched for earlier copies of an impression."""
        return max(1, math.ceil(self.max_lateness / DAY_S))


@dataclass(frozen=True)
class Scope:
    """Event-time ranges (epoch microseconds, inclusive) one day's run needs, per role.

    ``hi`` is the latest ts that can matter: min(as_of, day end + W + T + S).
    """

    day: str
    as_of_us: int
    day_lo: int  # first microsecond of the day
    day_hi: int  # last microsecond of the day
    hi: int
    click_lo: int  # clicks needed: their own day, valid-click checks, conversion lookups
    valid_lo: int  # clicks whose validity (and impression) the run decides
    imp_lo: int  # impressions needed: the day, earlier copies, clicked impressions
    conv_lo: int  # conversions needed: owned by the day or attributable to its clicks

    def dt_range(self, source: str, w: Windows) -> tuple[str, str]:
        """Arrival partitions that can hold the source's records of this scope."""
        lo = {"impressions": self.imp_lo, "clicks": self.click_lo, "conversions": self.conv_lo}[source]
        first = min(micros_date(lo), self.day)
        last = max(micros_date(self.hi + w.max_lateness * US), self.day)
        return first, last


def scope_of(day: str, as_of: dt.datetime, w: Windows) -> Scope:
    day_lo = utc_micros(default_as_of(day)) - DAY_US
    day_hi = day_lo + DAY_US - 1
    a = utc_micros(as_of)
    W, S, Tw = w.click_window * US, w.click_skew * US, w.attribution_window * US
    hi = min(a, day_hi + W + Tw + S)
    valid_lo = day_lo - Tw - S
    return Scope(
        day=day, as_of_us=a, day_lo=day_lo, day_hi=day_hi, hi=hi,
        click_lo=day_lo - CLICK_LOOKUP_WINDOWS * Tw - S,
        valid_lo=valid_lo,
        imp_lo=min(valid_lo - W, day_lo - w.dedupe_days * DAY_US),
        conv_lo=day_lo - S,
    )


# --------------------------------------------------------------------------- column helpers


def date_of_us(us: Column) -> Column:
    """UTC date string of epoch microseconds, whatever the session time zone."""
    days = F.floor(us / F.lit(DAY_US)).cast("int")
    return F.date_add(F.lit("1970-01-01").cast("date"), days).cast("string")


def _between(c: Column, lo: int, hi: int) -> Column:
    return (c >= F.lit(lo)) & (c <= F.lit(hi))


def arrived_between(first: str, last: str) -> Column:
    """Partition filter on dt (pushed down to Delta / partitioned folders): the branches
    that need one day's rows must not scan the whole lookback at full width."""
    return (F.col("dt") >= first) & (F.col("dt") <= last)


def raw_columns(df: DataFrame) -> list[str]:
    """The source's own columns (without Spark's corrupt-record and our ``__`` columns)."""
    return [c for c in df.columns if c != CORRUPT_COLUMN and not c.startswith("__")]


# --------------------------------------------------------------------------- transforms


def check_records(df: DataFrame, source: str, w: Windows, with_hash: bool = True) -> DataFrame:
    """Add the record-level verdict of each raw row.

    Adds ``__us`` LONG (ts in epoch microseconds), ``__date`` STRING (UTC date of
    ts), ``__reason`` STRING (NULL when the record passes), ``__owner`` STRING (the
    date whose run accounts for the record: __date when it passes, else dt, or
    'unknown' when dt is missing) and, ``with_hash``, ``__h`` LONG (hash of the
    record, the last tie-breaker between copies; it reads every column, so the
    impressions' narrow passes leave it out).
    """
    cols = raw_columns(df)
    us = F.unix_micros(F.col("ts"))
    ev = date_of_us(us)
    checks: list[tuple[Column, str]] = []
    if CORRUPT_COLUMN in df.columns:
        # Spark's JSON reader parses only the columns a query reads, so a bad value in a
        # column a narrow pass leaves out would not mark the line corrupt there, and the
        # passes would disagree about one record. The second term is never true, but it
        # reads every column and the optimizer cannot fold it away: every pass parses all.
        every_column = F.greatest(F.lit(0), record_hash(cols)) < 0
        checks.append((F.col(CORRUPT_COLUMN).isNotNull() | every_column, "corrupt_record"))
    checks.append((is_blank("dt") | ~F.col("dt").rlike(DATE_RE), "missing_dt"))
    checks += [(is_blank(c), f"missing_{c}") for c in REQUIRED_IDS[source]]
    checks.append((F.col("ts").isNull(), "missing_ts"))
    if source == "conversions":
        no_click = is_blank("click_id")
        checks += [(no_click & is_blank("user_id"), "missing_user_id"),
                   (no_click & is_blank("item_id"), "missing_item_id")]
    checks.append((F.col("dt") < ev, "ts_after_arrival"))
    checks.append((F.col("dt") > date_of_us(us + F.lit(w.max_lateness * US)), "arrived_too_late"))
    reason = F.when(checks[0][0], F.lit(checks[0][1]))
    for cond, name in checks[1:]:
        reason = reason.when(cond, F.lit(name))
    out = df.select("*", us.alias("__us"), ev.alias("__date"), reason.alias("__reason"))
    owner = (F.when(F.col("__reason").isNull(), F.col("__date"))
             .when(F.col("__reason") == "missing_dt", F.lit(UNKNOWN_DT))
             .otherwise(F.col("dt")))
    out = out.select("*", owner.alias("__owner"))
    return out.select("*", record_hash(cols).alias("__h")) if with_hash else out


def record_hash(cols: list[str]) -> Column:
    return F.xxhash64(*[F.col(c) for c in cols])


def rank_copies(df: DataFrame, key: str, order: tuple[str, ...] = ("__us", "dt", "__h")) -> DataFrame:
    """Add ``__rank`` INT: 1 for the kept copy of each ``key`` (by ``order``: earliest ts,
    then dt, then the record hash for clicks and conversions; see :data:`IMP_ORDER`)."""
    win = Window.partitionBy(key).orderBy(*[F.col(c) for c in order])
    return df.withColumn("__rank", F.row_number().over(win))


# Impression copies are ordered by ts, dt, user_id, item_id on narrow columns; copies equal
# on all four are told apart by the record hash only where it matters (kept_impressions).
IMP_ORDER = ("__us", "dt", "user_id", "item_id")


def day_candidates(imps_ok: DataFrame, sc: Scope, w: Windows) -> DataFrame:
    """The copies that compete for the day's impression ids (narrow).

    ``imps_ok``: impressions passing the record checks with ts <= as_of. Candidates are
    the day's copies and copies on the ``dedupe_days`` days before (an impression whose
    earliest copy lies on an earlier day is left to that day's run). Output:
    ``impression_id``, the :data:`IMP_ORDER` columns, ``__date`` and ``__d`` LONG (1 for
    a copy of the day).
    """
    on_day, earlier = candidate_conditions(sc, w)
    return imps_ok.where(on_day | earlier).select("impression_id", *IMP_ORDER, "__date",
                                                  on_day.cast("long").alias("__d"))


def candidate_conditions(sc: Scope, w: Windows) -> tuple[Column, Column]:
    """(a copy of the day, a copy on one of the ``dedupe_days`` days before)."""
    L_us = w.max_lateness * US
    first = micros_date(sc.day_lo - w.dedupe_days * DAY_US)
    date = F.col("__date")
    on_day = arrived_between(sc.day, micros_date(sc.day_hi + L_us)) & (date == sc.day)
    earlier = (arrived_between(first, micros_date(sc.day_lo - 1 + L_us))
               & (date >= first) & (date < sc.day))
    return on_day, earlier


def fold_copies(cand: DataFrame) -> DataFrame:
    """Copy counts of the ids with a copy on the day, folded to the size of the duplicates.

    Output: one row per id with several candidate copies (``impression_id``, ``__n``
    LONG copies, ``__n_day`` LONG copies on the day, ``__ids`` = 1) and one row with
    ``impression_id`` NULL whose ``__ids`` counts the ids with a single copy (each is
    labelled as it is). Both aggregates keep fixed-width buffers, so Spark runs them as
    hash aggregates, and the second collapses the singles before its shuffle.
    """
    ids = (cand.groupBy("impression_id").agg(F.count(F.lit(1)).alias("__n"), F.sum("__d").alias("__n_day"))
           .where(F.col("__n_day") > 0))
    dup_id = F.when(F.col("__n") > 1, F.col("impression_id"))
    return ids.groupBy(dup_id.alias("impression_id")).agg(
        F.count(F.lit(1)).alias("__ids"), F.max("__n").alias("__n"), F.max("__n_day").alias("__n_day"))


def winners(cand: DataFrame, multi: DataFrame) -> DataFrame:
    """The winning copy (minimum of :data:`IMP_ORDER`) of each id of ``multi``.

    Output: ``multi``'s columns plus ``__w_us``, ``__w_dt``, ``__w_user``, ``__w_item``,
    ``__w_date``. ``multi`` is small (the duplicated ids), so the join is a broadcast.
    """
    mine = cand.join(multi.select("impression_id"), "impression_id", "left_semi")
    best = rank_copies(mine, "impression_id", IMP_ORDER).where(F.col("__rank") == 1)
    best = best.select("impression_id", *[F.col(c).alias(a) for c, a in zip(
        (*IMP_ORDER, "__date"), ("__w_us", "__w_dt", "__w_user", "__w_item", "__w_date"))])
    return multi.join(best, "impression_id")


def click_status(clicks_kept: DataFrame, imps_ok: DataFrame, sc: Scope, w: Windows) -> DataFrame:
    """Decide each click of the validity range against its (deduplicated) impression.

    Input: kept clicks (one per click_id) and visible good impressions.
    Output: the clicks with ts in [valid_lo, hi], their raw columns plus ``__us``,
    ``__date``, ``__reason`` (NULL = valid, else orphan_click,
    click_before_impression, click_after_window), ``__imp_us``, ``__imp_user``,
    ``__imp_item`` (of the impression; NULL for orphans). ``imps_ok`` may be just the
    impressions of the clicked ids (:func:`build_labels` passes those, fetched once).
    """
    clicks = clicks_kept.where(_between(F.col("__us"), sc.valid_lo, sc.hi)).drop("__reason")
    wanted = clicks.select("impression_id").distinct()
    imp = (imps_ok.select("impression_id", "__us", "dt", "user_id", "item_id")
           .join(wanted, "impression_id", "left_semi"))
    imp = (rank_copies(imp, "impression_id", IMP_ORDER).where(F.col("__rank") == 1)
           .select("impression_id", F.col("__us").alias("__imp_us"),
                   F.col("user_id").alias("__imp_user"), F.col("item_id").alias("__imp_item")))
    j = clicks.drop("__rank").join(imp, "impression_id", "left")
    cus, ius = F.col("__us"), F.col("__imp_us")
    reason = (F.when(ius.isNull(), F.lit("orphan_click"))
              .when(cus < ius - F.lit(w.click_skew * US), F.lit("click_before_impression"))
              .when(cus > ius + F.lit(w.click_window * US), F.lit("click_after_window")))
    return j.withColumn("__reason", reason)


def attribute_conversions(convs_kept: DataFrame, clicks_kept: DataFrame, status: DataFrame,
                          sc: Scope, w: Windows) -> DataFrame:
    """Attribute each conversion of the scope to one click, or give the reason why not.

    Output: the kept conversions with ts in [conv_lo, hi], their raw columns plus
    ``__us``, ``__date``, ``__reason`` (NULL = attributed), ``__click`` (the
    attributed click_id), ``__imp`` (its impression_id) and ``__via``
    ('click_id' | 'last_touch').
    """
    Tw = F.lit(w.attribution_window * US)
    convs = convs_kept.where(_between(F.col("__us"), sc.conv_lo, sc.hi)).drop("__reason", "__rank")
    cols = convs.columns

    with_id = convs.where(~is_blank("click_id"))
    known = clicks_kept.select("click_id", F.col("__us").alias("__k_us"))
    st = status.select("click_id", F.col("__reason").alias("__k_reason"),
                       F.col("impression_id").alias("__k_imp"), F.lit(True).alias("__k_has"))
    j = with_id.join(known, "click_id", "left").join(st, "click_id", "left")
    cu, ku = F.col("__us"), F.col("__k_us")
    r1 = (F.when(ku.isNull(), F.lit("unknown_click"))
          .when(cu < ku, F.lit("conversion_before_click"))
          .when(cu > ku + Tw, F.lit("conversion_after_window"))
          .when(F.col("__k_has").isNull() | F.col("__k_reason").isNotNull(), F.lit("click_not_valid")))
    by_id = j.select(*cols, r1.alias("__reason"),
                     F.when(r1.isNull(), F.col("click_id")).alias("__click"),
                     F.when(r1.isNull(), F.col("__k_imp")).alias("__imp"),
                     F.lit("click_id").alias("__via"))

    without = convs.where(is_blank("click_id"))
    valid = status.where(F.col("__reason").isNull()).select(
        F.col("click_id").alias("__c_id"), F.col("__us").alias("__c_us"),
        F.col("impression_id").alias("__c_imp"),
        F.col("__imp_user").alias("user_id"), F.col("__imp_item").alias("item_id"))
    cand = (without.select("conversion_id", "user_id", "item_id", "__us")
            .join(valid, ["user_id", "item_id"])
            .where((F.col("__c_us") <= F.col("__us")) & (F.col("__us") <= F.col("__c_us") + Tw)))
    latest = Window.partitionBy("conversion_id").orderBy(F.col("__c_us").desc(), F.col("__c_id").desc())
    best = (cand.withColumn("__n", F.row_number().over(latest)).where(F.col("__n") == 1)
            .select("conversion_id", "__c_id", "__c_imp"))
    lt = without.join(best, "conversion_id", "left")
    r2 = F.when(F.col("__c_id").isNull(), F.lit("no_click_in_window"))
    by_touch = lt.select(*cols, r2.alias("__reason"), F.col("__c_id").alias("__click"),
                         F.col("__c_imp").alias("__imp"), F.lit("last_touch").alias("__via"))
    return by_id.unionByName(by_touch)


def kept_impressions(full_day: DataFrame, multi: DataFrame, day: str) -> DataFrame:
    """The full-width kept impressions of the day: one row per ``impression_id``.

    ``full_day``: checked visible impressions of the day (raw columns, ``__us``, ...);
    ``multi``: :func:`winners` of the ids with several copies. Ids with one copy
    (nearly all) pass an anti join against the few ids with several (broadcast when
    small: no full-width shuffle). Of those, the day keeps the copy equal to the
    winner on :data:`IMP_ORDER`, the smallest record hash among equal ones (equal
    hashes mean equal records).
    """
    single = full_day.join(multi.select("impression_id"), "impression_id", "left_anti")
    winners = multi.where(F.col("__w_date") == day).select(
        "impression_id", *[F.col(a).alias(c) for a, c in zip(
            ("__w_us", "__w_dt", "__w_user", "__w_item"), IMP_ORDER)])
    tied = full_day.join(winners, ["impression_id", *IMP_ORDER], "left_semi")
    tied = tied.withColumn("__h", record_hash(raw_columns(full_day)))
    first = Window.partitionBy("impression_id").orderBy("__h")
    chosen = tied.withColumn("__r", F.row_number().over(first)).where(F.col("__r") == 1).drop("__r", "__h")
    return single.unionByName(chosen)


def label_rows(kept: DataFrame, status: DataFrame, conversions: DataFrame,
               sc: Scope, w: Windows) -> DataFrame:
    """The ``curated/labels`` rows of the day (schema in the module docstring).

    ``kept``: :func:`kept_impressions`; ``status``: :func:`click_status`;
    ``conversions``: :func:`attribute_conversions`.
    """
    raw = [c for c in raw_columns(kept) if c != "dt"]
    clicks = (status.where(F.col("__reason").isNull()).groupBy("impression_id")
              .agg(F.min("ts").alias("first_click_ts")))
    convs = (conversions.where(F.col("__reason").isNull())
             .groupBy(F.col("__imp").alias("impression_id"))
             .agg(F.min("ts").alias("conversion_ts")))
    j = kept.join(clicks, "impression_id", "left").join(convs, "impression_id", "left")
    mature = F.lit(sc.as_of_us) >= F.col("__us") + F.lit((w.click_window + w.attribution_window) * US)
    return j.select(
        *raw,
        F.col("first_click_ts").isNotNull().cast("int").alias("click"),
        "first_click_ts",
        F.col("conversion_ts").isNotNull().cast("int").alias("conversion"),
        "conversion_ts",
        mature.alias("label_mature"),
        F.timestamp_micros(F.lit(sc.as_of_us)).alias("as_of"),
        F.lit(sc.day).alias("dt"),
    )


def _record_json(df: DataFrame) -> Column:
    record = F.to_json(F.struct(*[F.col(c) for c in raw_columns(df)]))
    if CORRUPT_COLUMN in df.columns:
        record = F.coalesce(F.col(CORRUPT_COLUMN), record)
    return record


def quarantine_rows(df: DataFrame, source: str, owner: Column) -> DataFrame:
    """Quarantine rows (without run_id/quarantined_at) of ``df``'s records with a ``__reason``.

    The record JSON is ``__record`` when ``df`` carries it (the impressions' narrow
    pass computes it for bad rows only), else built from ``df``'s raw columns.
    """
    record = F.col("__record") if "__record" in df.columns else _record_json(df)
    rid = record_id([ID_COLUMN[source]], record)
    return df.select(F.lit(source).alias("source"), rid.alias("record_id"),
                     F.col("__reason").alias("reason"), record.alias("record"), owner.alias("dt"))


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


def build_labels(impressions: DataFrame, clicks: DataFrame, conversions: DataFrame,
                 day: str, as_of: dt.datetime, w: Windows, persist: bool = False) -> LabelResult:
    """Labels, quarantine rows and per-row fates of one day (no table is written).

    Inputs: the raw sources (contract of :mod:`pipelines.contract`; JSON sources may
    carry ``_corrupt_record``) holding at least the partitions of
    :meth:`Scope.dt_range`; more is fine, the result is the same. ``as_of`` cuts
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


def _build_labels(impressions: DataFrame, clicks: DataFrame, conversions: DataFrame, day: str,
                  as_of: dt.datetime, w: Windows, persist: bool, persisted: list[DataFrame]) -> LabelResult:
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
    imps_ok = imp.where(reason.isNull() & (us <= a) & _between(us, sc.imp_lo, sc.hi))
    # Owned bad records and the day's arrivals after as_of: few, kept with their JSON.
    imp_odd = keep(imp.where((own_dt | day_arrivals) & (owned_bad | after_as_of)).select(
        *[c for c in imp.columns if c.startswith("__") or c in ("impression_id", "dt")],
        F.when(reason.isNotNull(), _record_json(imp)).alias("__record")))
    chk = {s: keep(check_records(df, s, w)) for s, df in (("clicks", clicks), ("conversions", conversions))}
    ok = {s: df.where(reason.isNull() & (us <= a)) for s, df in chk.items()}
    clicks_ranked = keep(rank_copies(ok["clicks"].where(_between(us, sc.click_lo, sc.hi)), "click_id"))
    clicks_kept = clicks_ranked.where(F.col("__rank") == 1)

    copies = keep(fold_copies(day_candidates(imps_ok, sc, w)))
    n_lookup = counts.get(id(clicks_ranked), BROADCAST_MAX_ROWS) + counts.get(id(copies), BROADCAST_MAX_ROWS)
    dup_ids = copies.where(F.col("impression_id").isNotNull())
    # One narrow pass over the scope picks out every impression a later step looks at:
    # the clicked ones (click validity) and the day's duplicated ones (their winner).
    lookup = (clicks_kept.where(_between(us, sc.valid_lo, sc.hi)).select("impression_id")
              .unionByName(dup_ids.select("impression_id")).distinct())
    if n_lookup <= BROADCAST_MAX_ROWS:  # known small: broadcast, rather than shuffle the scope first
        lookup = F.broadcast(lookup)
    on_day, earlier = candidate_conditions(sc, w)
    few = keep(imps_ok.select("impression_id", *IMP_ORDER, "__date", (on_day | earlier).alias("__cand"),
                              on_day.cast("long").alias("__d"))
               .join(lookup, "impression_id", "left_semi"))
    multi = keep(winners(few.where(F.col("__cand")), dup_ids))
    status = keep(click_status(clicks_kept, few, sc, w))
    convs_ranked = keep(rank_copies(ok["conversions"].where(_between(us, sc.conv_lo, sc.hi)),
                                    "conversion_id"))
    attributed = keep(attribute_conversions(convs_ranked.where(F.col("__rank") == 1), clicks_kept,
                                            status, sc, w))

    # The only full-width read: the day's arrivals, checked again (cheap, no shuffle).
    full_day = check_records(impressions.where(day_arrivals), "impressions", w, with_hash=False).where(
        reason.isNull() & is_day & (us <= a))
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
        return df.select(F.lit(source).alias("source"), f.alias("fate"), why.alias("reason"),
                         n.cast("long").alias("n"))

    none = F.lit(None).cast("string")
    checked = {"impressions": imp_odd, **chk}
    rows = [fate(checked[s].where(owned_bad), s, F.lit("quarantined"), reason) for s in SOURCES]
    rows += [fate(checked[s].where(after_as_of), s, F.lit("after_as_of"), none) for s in SOURCES]
    won = F.col("__w_date") == day
    rows.append(fate(copies.where(F.col("impression_id").isNull()), "impressions", F.lit("labelled"), none,
                     F.col("__ids")))  # the ids with a single copy
    rows.append(fate(multi.where(won), "impressions", F.lit("labelled"), none))
    rows.append(fate(multi, "impressions", F.lit("duplicate"), none, F.col("__n_day") - won.cast("long")))
    for source, ranked, decided, ok_fate in (("clicks", clicks_ranked, status, "valid"),
                                             ("conversions", convs_ranked, attributed, "attributed")):
        rows.append(fate(ranked.where(is_day & (F.col("__rank") > 1)), source, F.lit("duplicate"), none))
        detail = F.col("__via") if source == "conversions" else none
        rows.append(fate(decided.where(is_day), source,
                         F.when(reason.isNull(), ok_fate).otherwise("quarantined"),
                         F.coalesce(reason, detail)))
    fates = (_union(rows).groupBy("source", "fate", "reason").agg(F.sum("n").alias("n"))
             .where(F.col("n") > 0))
    return LabelResult(labels, quarantine, fates, persisted)


def _union(dfs: list[DataFrame]) -> DataFrame:
    out = dfs[0]
    for df in dfs[1:]:
        out = out.unionByName(df)
    return out


# --------------------------------------------------------------------------- run report


@dataclass
class SourceCounts:
    source: str
    rows_in: int = 0  # raw rows the day owns (excluding events after as_of)
    duplicates: int = 0
    out: int = 0  # labelled impressions / valid clicks / attributed conversions
    quarantined: dict[str, int] = field(default_factory=dict)
    after_as_of: int = 0
    detail: dict[str, int] = field(default_factory=dict)  # conversions: click_id / last_touch

    @property
    def gated(self) -> int:
        return sum(n for r, n in self.quarantined.items() if REASONS.get(r, (True, ""))[0])

    @property
    def bad_fraction(self) -> float:
        distinct = self.rows_in - self.duplicates
        return self.gated / distinct if distinct > 0 else 0.0


@dataclass
class DayReport:
    day: str
    as_of: dt.datetime
    run_id: str
    sources: dict[str, SourceCounts]
    label_rows: int = 0
    clicks: int = 0
    conversions: int = 0
    mature: int = 0
    seconds: float = 0.0
    written: bool = False
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds

    def lines(self) -> list[str]:
        out = [f"labels {self.day} as of {self.as_of.isoformat()} (run {self.run_id})"]
        for s in SOURCES:
            c = self.sources[s]
            out.append(f"  {s:<12} in {c.rows_in:>11,}  duplicates removed {c.duplicates:>9,}  "
                       f"out {c.out:>11,}  quarantined {sum(c.quarantined.values()):>8,}  "
                       f"gated {c.bad_fraction:7.3%}"
                       + (f"  (after as-of, not counted: {c.after_as_of:,})" if c.after_as_of else "")
                       + ("  [" + ", ".join(f"{k} {v:,}" for k, v in sorted(c.detail.items())) + "]"
                          if c.detail else ""))
        reasons = [(s, r, n) for s in SOURCES for r, n in sorted(self.sources[s].quarantined.items())]
        if reasons:
            out.append("  quarantined by reason: " + ", ".join(
                f"{s}/{r} {n:,}{'' if REASONS.get(r, (True,))[0] else ' (not gated)'}" for s, r, n in reasons))
        if not self.written:
            out.append(f"  curated/labels dt={self.day}: not written "
                       f"({self.sources['impressions'].out:,} impressions would have been labelled)")
            return out
        out.append(f"  curated/labels dt={self.day}: {self.label_rows:,} rows, click {self.clicks:,}, "
                   f"conversion {self.conversions:,}, mature {self.mature:,}"
                   + (f"; {self.seconds:.1f}s, {self.label_rows / self.seconds:,.0f} rows/s"
                      if self.seconds > 0 else ""))
        if self.timings:
            out.append("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in self.timings.items()))
        return out


def count_fates(fates: list) -> dict[str, SourceCounts]:
    """Fold collected ``fates`` rows into per-source counts."""
    out = {s: SourceCounts(s) for s in SOURCES}
    for r in fates:
        c = out[r["source"]]
        if r["fate"] == "after_as_of":
            c.after_as_of += r["n"]
            continue
        c.rows_in += r["n"]
        if r["fate"] == "duplicate":
            c.duplicates += r["n"]
        elif r["fate"] == "quarantined":
            c.quarantined[r["reason"]] = c.quarantined.get(r["reason"], 0) + r["n"]
        else:
            c.out += r["n"]
            if r["reason"]:
                c.detail[r["reason"]] = c.detail.get(r["reason"], 0) + r["n"]
    return out


def check_gate(report: DayReport, max_bad_fraction: float) -> None:
    """Raise :class:`LabelGateError` naming the first source above ``max_bad_fraction``."""
    for s in SOURCES:
        c = report.sources[s]
        if c.bad_fraction > max_bad_fraction:
            top = sorted(((n, r) for r, n in c.quarantined.items() if REASONS.get(r, (True,))[0]),
                         reverse=True)
            raise LabelGateError(
                f"labels {report.day}: {s}: {c.bad_fraction:.2%} of {c.rows_in - c.duplicates:,} "
                f"distinct records quarantined for integrity reasons ("
                + ", ".join(f"{r} {n:,}" for n, r in top)
                + f"), above labels.max_bad_fraction={max_bad_fraction:.2%}; nothing was written "
                f"for {report.day}. Fix the {s} source, or raise labels.max_bad_fraction "
                f"if this is expected.")


# --------------------------------------------------------------------------- job edge


def read_scope(spark: SparkSession, cfg: Config, source: str, first_dt: str, last_dt: str) -> DataFrame:
    """The raw source restricted to arrival partitions [first_dt, last_dt] (plus rows whose
    dt is missing or malformed), so Delta and partitioned folders prune and cost follows
    the window, not the history. A Delta source is pinned to its version at this call:
    the job reads the frame in several passes, and they must all see the same rows."""
    from pipelines.delta_io import read_raw

    df = read_raw(spark, cfg, source, pin=True)
    dt_ = F.col("dt")
    return df.where(((dt_ >= first_dt) & (dt_ <= last_dt)) | dt_.isNull() | ~dt_.rlike(DATE_RE))


def new_run_id(prefix: str = "labels") -> str:
    return f"{prefix}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def run_day(spark: SparkSession, cfg: Config, day: str, as_of: dt.datetime | None = None,
            run_id: str | None = None, log=print) -> DayReport:
    """Label one day: read the scope, compute, report, gate, then write.

    Writes ``curated/quarantine`` (replaceWhere dt IN (day, 'unknown')) and then
    ``curated/labels`` (replaceWhere dt = day), each one atomic Delta commit; a
    failed gate raises :class:`LabelGateError` before either write.
    """
    from pipelines.delta_io import read_delta, write_delta

    t0 = time.time()
    w = Windows.from_config(cfg.labels)
    as_of = as_of or default_as_of(day)
    run_id = run_id or new_run_id()
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
        write_quarantine(stamp(res.quarantine, run_id, dt.datetime.now(dt.timezone.utc)),
                         cfg.lakehouse.path("quarantine"), [day, UNKNOWN_DT], SOURCES)
        lap("quarantine")
        # Written straight from the plan (caching a full-width day costs more than one
        # more read); the summary is read back from the committed partition.
        labels_path = cfg.lakehouse.path("labels")
        write_delta(res.labels, labels_path, ["dt"], replace_where=f"dt = '{day}'")
        report.written = True
        lap("labels")
        summary = read_delta(spark, labels_path).where(F.col("dt") == day).agg(
            F.count(F.lit(1)), F.sum("click"), F.sum("conversion"),
            F.sum(F.col("label_mature").cast("int"))).first()
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


def run(spark: SparkSession, cfg: Config, dates: list[str], as_of: dt.datetime | None = None,
        run_id: str | None = None, log=print) -> list[DayReport]:
    """Label each of ``dates`` in order (each day one atomic unit, as if run alone).

    ``as_of`` applies to every date; by default each date uses its own end of day.
    Stops at the first date whose gate fails (earlier dates stay written).
    """
    run_id = run_id or new_run_id()
    return [run_day(spark, cfg, d, as_of, run_id, log) for d in dates]
