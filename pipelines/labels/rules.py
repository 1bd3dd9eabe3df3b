"""The label job's rules as pure transforms: record checks, duplicates, clicks, conversions, labels.

Each function is DataFrame -> DataFrame (or a Column) with the windows and the
run's scope passed in; :func:`pipelines.labels.job.build_labels` chains them and
the module docstring of :mod:`pipelines.labels.job` states the rules (0-5) they
implement. Working columns carry a ``__`` prefix: ``__us`` (ts in epoch
microseconds), ``__date`` (UTC date of ts), ``__reason`` (NULL: the record
passes), ``__owner`` (the date whose run accounts for the record).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from esmm.config.schema import LabelConfig
from esmm.util.timeutil import DAY_S, DAY_US, US, default_as_of, micros_date, utc_micros
from pipelines.io.contract import CORRUPT_COLUMN, ID_COLUMN, REQUIRED_IDS
from pipelines.io.quarantine import UNKNOWN_DT, is_blank, record_id

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
    "no_click_in_window": (
        False,
        "no click_id and no valid click of the same user_id and " "item_id within attribution_window before it",
    ),
}


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
        return cls(
            c.seconds("click_skew"),
            c.seconds("click_window"),
            c.seconds("attribution_window"),
            c.seconds("max_lateness"),
        )

    @property
    def horizon_s(self) -> int:
        """Seconds after an impression until its label can no longer change: the click window,
        the attribution window, and the lateness with which the last such event may still
        arrive (W + T + L). The one definition of label maturity: the row flag
        ``label_mature``, the nightly plan's ``H`` and the benches' backfill all use it."""
        return self.click_window + self.attribution_window + self.max_lateness

    @property
    def horizon_days(self) -> int:
        """:attr:`horizon_s` in whole days, rounded up (``H`` of the nightly plan)."""
        return math.ceil(self.horizon_s / DAY_S)

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
        day=day,
        as_of_us=a,
        day_lo=day_lo,
        day_hi=day_hi,
        hi=hi,
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


def between(c: Column, lo: int, hi: int) -> Column:
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
        checks += [
            (no_click & is_blank("user_id"), "missing_user_id"),
            (no_click & is_blank("item_id"), "missing_item_id"),
        ]
    checks.append((F.col("dt") < ev, "ts_after_arrival"))
    checks.append((F.col("dt") > date_of_us(us + F.lit(w.max_lateness * US)), "arrived_too_late"))
    reason = F.when(checks[0][0], F.lit(checks[0][1]))
    for cond, name in checks[1:]:
        reason = reason.when(cond, F.lit(name))
    out = df.select("*", us.alias("__us"), ev.alias("__date"), reason.alias("__reason"))
    owner = (
        F.when(F.col("__reason").isNull(), F.col("__date"))
        .when(F.col("__reason") == "missing_dt", F.lit(UNKNOWN_DT))
        .otherwise(F.col("dt"))
    )
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
    return imps_ok.where(on_day | earlier).select(
        "impression_id", *IMP_ORDER, "__date", on_day.cast("long").alias("__d")
    )


def candidate_conditions(sc: Scope, w: Windows) -> tuple[Column, Column]:
    """(a copy of the day, a copy on one of the ``dedupe_days`` days before)."""
    L_us = w.max_lateness * US
    first = micros_date(sc.day_lo - w.dedupe_days * DAY_US)
    date = F.col("__date")
    on_day = arrived_between(sc.day, micros_date(sc.day_hi + L_us)) & (date == sc.day)
    earlier = arrived_between(first, micros_date(sc.day_lo - 1 + L_us)) & (date >= first) & (date < sc.day)
    return on_day, earlier


def fold_copies(cand: DataFrame) -> DataFrame:
    """Copy counts of the ids with a copy on the day, folded to the size of the duplicates.

    Output: one row per id with several candidate copies (``impression_id``, ``__n``
    LONG copies, ``__n_day`` LONG copies on the day, ``__ids`` = 1) and one row with
    ``impression_id`` NULL whose ``__ids`` counts the ids with a single copy (each is
    labelled as it is). Both aggregates keep fixed-width buffers, so Spark runs them as
    hash aggregates, and the second collapses the singles before its shuffle.
    """
    ids = (
        cand.groupBy("impression_id")
        .agg(F.count(F.lit(1)).alias("__n"), F.sum("__d").alias("__n_day"))
        .where(F.col("__n_day") > 0)
    )
    dup_id = F.when(F.col("__n") > 1, F.col("impression_id"))
    return ids.groupBy(dup_id.alias("impression_id")).agg(
        F.count(F.lit(1)).alias("__ids"), F.max("__n").alias("__n"), F.max("__n_day").alias("__n_day")
    )


def winners(cand: DataFrame, multi: DataFrame) -> DataFrame:
    """The winning copy (minimum of :data:`IMP_ORDER`) of each id of ``multi``.

    Output: ``multi``'s columns plus ``__w_us``, ``__w_dt``, ``__w_user``, ``__w_item``,
    ``__w_date``. ``multi`` is small (the duplicated ids), so the join is a broadcast.
    """
    mine = cand.join(multi.select("impression_id"), "impression_id", "left_semi")
    best = rank_copies(mine, "impression_id", IMP_ORDER).where(F.col("__rank") == 1)
    best = best.select(
        "impression_id",
        *[
            F.col(c).alias(a)
            for c, a in zip((*IMP_ORDER, "__date"), ("__w_us", "__w_dt", "__w_user", "__w_item", "__w_date"))
        ],
    )
    return multi.join(best, "impression_id")


def click_status(clicks_kept: DataFrame, imps_ok: DataFrame, sc: Scope, w: Windows) -> DataFrame:
    """Decide each click of the validity range against its (deduplicated) impression.

    Input: kept clicks (one per click_id) and visible good impressions.
    Output: the clicks with ts in [valid_lo, hi], their raw columns plus ``__us``,
    ``__date``, ``__reason`` (NULL = valid, else orphan_click,
    click_before_impression, click_after_window), ``__imp_us``, ``__imp_user``,
    ``__imp_item`` (of the impression; NULL for orphans). ``imps_ok`` may be just the
    impressions of the clicked ids (:func:`pipelines.labels.job.build_labels` passes those, fetched once).
    """
    clicks = clicks_kept.where(between(F.col("__us"), sc.valid_lo, sc.hi)).drop("__reason")
    wanted = clicks.select("impression_id").distinct()
    imp = imps_ok.select("impression_id", "__us", "dt", "user_id", "item_id").join(wanted, "impression_id", "left_semi")
    imp = (
        rank_copies(imp, "impression_id", IMP_ORDER)
        .where(F.col("__rank") == 1)
        .select(
            "impression_id",
            F.col("__us").alias("__imp_us"),
            F.col("user_id").alias("__imp_user"),
            F.col("item_id").alias("__imp_item"),
        )
    )
    j = clicks.drop("__rank").join(imp, "impression_id", "left")
    cus, ius = F.col("__us"), F.col("__imp_us")
    reason = (
        F.when(ius.isNull(), F.lit("orphan_click"))
        .when(cus < ius - F.lit(w.click_skew * US), F.lit("click_before_impression"))
        .when(cus > ius + F.lit(w.click_window * US), F.lit("click_after_window"))
    )
    return j.withColumn("__reason", reason)


def attribute_conversions(
    convs_kept: DataFrame, clicks_kept: DataFrame, status: DataFrame, sc: Scope, w: Windows
) -> DataFrame:
    """Attribute each conversion of the scope to one click, or give the reason why not.

    Output: the kept conversions with ts in [conv_lo, hi], their raw columns plus
    ``__us``, ``__date``, ``__reason`` (NULL = attributed), ``__click`` (the
    attributed click_id), ``__imp`` (its impression_id) and ``__via``
    ('click_id' | 'last_touch').
    """
    Tw = F.lit(w.attribution_window * US)
    convs = convs_kept.where(between(F.col("__us"), sc.conv_lo, sc.hi)).drop("__reason", "__rank")
    cols = convs.columns

    with_id = convs.where(~is_blank("click_id"))
    known = clicks_kept.select("click_id", F.col("__us").alias("__k_us"))
    st = status.select(
        "click_id",
        F.col("__reason").alias("__k_reason"),
        F.col("impression_id").alias("__k_imp"),
        F.lit(True).alias("__k_has"),
    )
    j = with_id.join(known, "click_id", "left").join(st, "click_id", "left")
    cu, ku = F.col("__us"), F.col("__k_us")
    r1 = (
        F.when(ku.isNull(), F.lit("unknown_click"))
        .when(cu < ku, F.lit("conversion_before_click"))
        .when(cu > ku + Tw, F.lit("conversion_after_window"))
        .when(F.col("__k_has").isNull() | F.col("__k_reason").isNotNull(), F.lit("click_not_valid"))
    )
    by_id = j.select(
        *cols,
        r1.alias("__reason"),
        F.when(r1.isNull(), F.col("click_id")).alias("__click"),
        F.when(r1.isNull(), F.col("__k_imp")).alias("__imp"),
        F.lit("click_id").alias("__via"),
    )

    without = convs.where(is_blank("click_id"))
    valid = status.where(F.col("__reason").isNull()).select(
        F.col("click_id").alias("__c_id"),
        F.col("__us").alias("__c_us"),
        F.col("impression_id").alias("__c_imp"),
        F.col("__imp_user").alias("user_id"),
        F.col("__imp_item").alias("item_id"),
    )
    cand = (
        without.select("conversion_id", "user_id", "item_id", "__us")
        .join(valid, ["user_id", "item_id"])
        .where((F.col("__c_us") <= F.col("__us")) & (F.col("__us") <= F.col("__c_us") + Tw))
    )
    latest = Window.partitionBy("conversion_id").orderBy(F.col("__c_us").desc(), F.col("__c_id").desc())
    best = (
        cand.withColumn("__n", F.row_number().over(latest))
        .where(F.col("__n") == 1)
        .select("conversion_id", "__c_id", "__c_imp")
    )
    lt = without.join(best, "conversion_id", "left")
    r2 = F.when(F.col("__c_id").isNull(), F.lit("no_click_in_window"))
    by_touch = lt.select(
        *cols,
        r2.alias("__reason"),
        F.col("__c_id").alias("__click"),
        F.col("__c_imp").alias("__imp"),
        F.lit("last_touch").alias("__via"),
    )
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
        "impression_id", *[F.col(a).alias(c) for a, c in zip(("__w_us", "__w_dt", "__w_user", "__w_item"), IMP_ORDER)]
    )
    tied = full_day.join(winners, ["impression_id", *IMP_ORDER], "left_semi")
    tied = tied.withColumn("__h", record_hash(raw_columns(full_day)))
    first = Window.partitionBy("impression_id").orderBy("__h")
    chosen = tied.withColumn("__r", F.row_number().over(first)).where(F.col("__r") == 1).drop("__r", "__h")
    return single.unionByName(chosen)


def delay_columns(first_click_ts: Column, conversion_ts: Column, as_of: Column) -> list[Column]:
    """``click_elapsed_s`` (as_of - first click; null without a click) and
    ``conversion_delay_s`` (conversion - first click; null without a conversion), DOUBLE
    seconds: what a delayed-feedback trainer weighs an unconverted click by."""

    def seconds(t: Column) -> Column:
        return F.unix_micros(t).cast("double") / F.lit(float(US))

    return [
        (seconds(as_of) - seconds(first_click_ts)).alias("click_elapsed_s"),
        (seconds(conversion_ts) - seconds(first_click_ts)).alias("conversion_delay_s"),
    ]


def label_rows(kept: DataFrame, status: DataFrame, conversions: DataFrame, sc: Scope, w: Windows) -> DataFrame:
    """The ``curated/labels`` rows of the day (schema in the module docstring).

    ``kept``: :func:`kept_impressions`; ``status``: :func:`click_status`;
    ``conversions``: :func:`attribute_conversions`.
    """
    raw = [c for c in raw_columns(kept) if c != "dt"]
    clicks = status.where(F.col("__reason").isNull()).groupBy("impression_id").agg(F.min("ts").alias("first_click_ts"))
    convs = (
        conversions.where(F.col("__reason").isNull())
        .groupBy(F.col("__imp").alias("impression_id"))
        .agg(F.min("ts").alias("conversion_ts"))
    )
    j = kept.join(clicks, "impression_id", "left").join(convs, "impression_id", "left")
    # W + T + L, not W + T: a conversion inside the windows may still arrive up to L late.
    mature = F.lit(sc.as_of_us) >= F.col("__us") + F.lit(w.horizon_s * US)
    as_of = F.timestamp_micros(F.lit(sc.as_of_us))
    return j.select(
        *raw,
        F.col("first_click_ts").isNotNull().cast("int").alias("click"),
        "first_click_ts",
        F.col("conversion_ts").isNotNull().cast("int").alias("conversion"),
        "conversion_ts",
        mature.alias("label_mature"),
        as_of.alias("as_of"),
        *delay_columns(F.col("first_click_ts"), F.col("conversion_ts"), as_of),
        F.lit(sc.day).alias("dt"),
    )


def record_json(df: DataFrame) -> Column:
    record = F.to_json(F.struct(*[F.col(c) for c in raw_columns(df)]))
    if CORRUPT_COLUMN in df.columns:
        record = F.coalesce(F.col(CORRUPT_COLUMN), record)
    return record


def quarantine_rows(df: DataFrame, source: str, owner: Column) -> DataFrame:
    """Quarantine rows (without run_id/quarantined_at) of ``df``'s records with a ``__reason``.

    The record JSON is ``__record`` when ``df`` carries it (the impressions' narrow
    pass computes it for bad rows only), else built from ``df``'s raw columns.
    """
    record = F.col("__record") if "__record" in df.columns else record_json(df)
    rid = record_id([ID_COLUMN[source]], record)
    return df.select(
        F.lit(source).alias("source"),
        rid.alias("record_id"),
        F.col("__reason").alias("reason"),
        record.alias("record"),
        owner.alias("dt"),
    )
