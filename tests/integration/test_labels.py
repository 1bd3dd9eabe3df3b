"""The label job: exact rows for every rule on hand-written events, the job edge
(formats, corrupt lines, the gate, idempotency), and properties on generated logs.

Times: D = 2026-11-02; windows are the defaults (skew 5m, click 1d, attribution
7d, lateness 1d). ``t("10:00")`` is 10:00 UTC on D; ``t("10:00", 7)`` on D+7.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from esmm.config.errors import ConfigError
from esmm.util.timeutil import default_as_of, parse_as_of
from pipelines.labels import job as L
from pipelines.labels.report import count_fates
from pipelines.labels.rules import Windows, scope_of

D = "2026-11-02"
W = Windows()
UTC = dt.timezone.utc


def day(k: int) -> str:
    return (dt.date.fromisoformat(D) + dt.timedelta(days=k)).isoformat()


def t(hhmm: str, k: int = 0) -> dt.datetime:
    h, m, *s = (int(x) for x in hhmm.split(":"))
    return dt.datetime(2026, 11, 2, h, m, s[0] if s else 0, tzinfo=UTC) + dt.timedelta(days=k)


def ts(k_hhmm) -> str:
    """Expected timestamps as strings (the session time zone is UTC)."""
    return None if k_hhmm is None else t(*k_hhmm).strftime("%Y-%m-%d %H:%M:%S")


IMP = T.StructType(
    [
        T.StructField(n, tp)
        for n, tp in [
            ("impression_id", T.StringType()),
            ("ts", T.TimestampType()),
            ("user_id", T.StringType()),
            ("item_id", T.StringType()),
            ("price", T.DoubleType()),
            ("dt", T.StringType()),
        ]
    ]
)
CLK = T.StructType(
    [
        T.StructField(n, tp)
        for n, tp in [
            ("click_id", T.StringType()),
            ("impression_id", T.StringType()),
            ("ts", T.TimestampType()),
            ("dt", T.StringType()),
        ]
    ]
)
CNV = T.StructType(
    [
        T.StructField(n, tp)
        for n, tp in [
            ("conversion_id", T.StringType()),
            ("click_id", T.StringType()),
            ("user_id", T.StringType()),
            ("item_id", T.StringType()),
            ("ts", T.TimestampType()),
            ("value", T.DoubleType()),
            ("dt", T.StringType()),
        ]
    ]
)


def imp(i, when, u, x, dt_=D, price=1.0):
    return (i, when, u, x, price, dt_)


# ---- the hand-written world: one line per rule it exercises
IMPRESSIONS = [
    imp("i1", t("08:00"), "u1", "x1"),
    imp("i1", t("08:00"), "u1", "x1"),  # exact duplicate
    imp("i2", t("09:30"), "u2", "x2"),
    imp("i2", t("09:00"), "u2", "x2", day(1)),  # keep earliest (late copy)
    imp("i3", t("10:00"), "u3", "x3"),  # two clicks, conversion on the second
    imp("i4", t("11:00"), "u4", "x4"),  # click 3 min before: within the skew
    imp("i5", t("11:00"), "u5", "x5"),  # click 10 min before: beyond the skew
    imp("i6", t("12:00", -1), "u6", "x6", day(-1)),  # (day D-1) click 1 s after the click window
    imp("i7", t("13:00"), "u7", "x7", day(1)),  # late arrival; last-touch conversion
    imp("i8a", t("14:00"), "u8", "x8"),
    imp("i8b", t("15:00"), "u8", "x8"),  # last touch picks i8b
    imp("i8c", t("17:00"), "u8", "x8"),  # clicked after the conversion: not a candidate
    imp("i9", t("01:00"), "u9", "x9"),  # conversion 7d + 1s after its click
    imp("i10", t("02:00"), "u10", "x10"),  # conversion exactly 7d after its click
    imp("i11", t("03:00"), "u11", "x11", day(1)),  # late arrival, no click
    imp("i12", t("04:00", -2), "u12", "x12"),  # arrived on D, beyond max_lateness
    imp("i19", t("01:00", -8), "u19", "x19", day(-8)),  # (day D-8) its conversion comes 7d + 1s late
    imp(None, t("05:00"), "u13", "x13"),  # missing impression_id
    imp("i14", t("05:00"), "", "x14"),  # blank user_id
    imp("i15", t("05:00"), "u15", None),  # missing item_id
    imp("i16", None, "u16", "x16"),  # missing ts
    imp("i17", t("06:00"), "u17", "x17", None),  # missing dt
    imp("i18", t("10:00", 3), "u18", "x18"),  # ts three days after it arrived
]
CLICKS = [
    ("c3a", "i3", t("10:01"), day(1)),
    ("c3a", "i3", t("10:01"), day(1)),  # late, duplicated
    ("c3b", "i3", t("10:05"), D),
    ("c4", "i4", t("10:57"), D),
    ("c5", "i5", t("10:50"), D),
    ("c6", "i6", t("12:00:01"), D),
    ("c19", "i19", t("01:01", -8), day(-8)),
    ("c7", "i7", t("13:01"), D),
    ("c8a", "i8a", t("14:01"), D),
    ("c8b", "i8b", t("15:01"), D),
    ("c8c", "i8c", t("17:01"), D),
    ("c9", "i9", t("01:01"), D),
    ("c10", "i10", t("02:01"), D),
    ("c_orphan", "nope", t("09:00"), D),
    (None, "i1", t("08:01"), D),
]
CONVERSIONS = [
    ("v3", "c3b", "u3", "x3", t("12:00"), 5.0, D),
    ("v3", "c3b", "u3", "x3", t("12:00"), 5.0, D),
    ("v7", None, "u7", "x7", t("20:00"), None, day(1)),
    ("v8", "", "u8", "x8", t("16:00"), 1.0, D),  # blank click_id = last touch
    ("v9", "c9", "u9", "x9", t("01:01:01", 8), 1.0, day(8)),
    ("v10", "c10", "u10", "x10", t("02:01", 7), 1.0, day(7)),
    ("v_orphan", "c_orphan", "u0", "x0", t("10:00"), 1.0, D),
    ("v_unknown", "zzz", "u0", "x0", t("11:00"), 1.0, D),
    ("v_before", "c7", "u7", "x7", t("12:59"), 1.0, D),
    ("v_nouser", None, None, "x1", t("12:00"), 1.0, D),
    ("v_none", None, "u1", "x1", t("09:00"), 1.0, D),
    ("v19", "c19", "u19", "x19", t("01:01:01"), 1.0, D),
]
FAR = t("00:00", 10)  # W + T + L after the end of D: every label of D is final


@pytest.fixture(scope="module")
def frames(spark, shuffle_partitions):
    # A handful of rows: one shuffle partition saves ~100 tiny tasks per query.
    with shuffle_partitions(1):
        dfs = [
            spark.createDataFrame(rows, schema).coalesce(1).cache()
            for rows, schema in ((IMPRESSIONS, IMP), (CLICKS, CLK), (CONVERSIONS, CNV))
        ]
        yield dfs
        for df in dfs:
            df.unpersist()


def compute(frames, day_=D, as_of=FAR):
    res = L.build_labels(*frames, day_, as_of, W, persist=True)
    labels = {
        r["impression_id"]: (
            r["click"],
            r["first_click_ts"],
            r["conversion"],
            r["conversion_ts"],
            r["label_mature"],
            r["as_of"],
            r["dt"],
        )
        for r in res.labels.select(
            "impression_id",
            "click",
            F.col("first_click_ts").cast("string").alias("first_click_ts"),
            "conversion",
            F.col("conversion_ts").cast("string").alias("conversion_ts"),
            "label_mature",
            F.col("as_of").cast("string").alias("as_of"),
            "dt",
        ).collect()
    }
    quarantine = {(r["source"], r["record_id"], r["reason"], r["dt"]): r["record"] for r in res.quarantine.collect()}
    fates = {(r["source"], r["fate"], r["reason"]): r["n"] for r in res.fates.collect()}
    res.unpersist()
    return labels, quarantine, fates


@pytest.fixture(scope="module")
def far(frames):
    return compute(frames)


def row(click_at=None, conv_at=None, mature=True, as_of=(("00:00", 10)), day_=D):
    return (int(click_at is not None), ts(click_at), int(conv_at is not None), ts(conv_at), mature, ts(as_of), day_)


def test_labels_exact_rows(far):
    labels, _, _ = far
    assert labels == {
        "i1": row(),
        "i2": row(),
        "i3": row(("10:01",), ("12:00",)),
        "i4": row(("10:57",)),
        "i5": row(),
        "i7": row(("13:01",), ("20:00",)),
        "i8a": row(("14:01",)),
        "i8b": row(("15:01",), ("16:00",)),
        "i8c": row(("17:01",)),
        "i9": row(("01:01",)),
        "i10": row(("02:01",), ("02:01", 7)),
        "i11": row(),
    }


def test_quarantine_exact_rows(far):
    """Every unusable record of D, once, with its reason; owner date D (or 'unknown')."""
    _, quarantine, _ = far
    keys = {(s, "sha256:*" if r.startswith("sha256:") else r, why, d) for s, r, why, d in quarantine}
    assert keys == {
        ("impressions", "sha256:*", "missing_impression_id", D),
        ("impressions", "i14", "missing_user_id", D),
        ("impressions", "i15", "missing_item_id", D),
        ("impressions", "i16", "missing_ts", D),
        ("impressions", "i17", "missing_dt", "unknown"),
        ("impressions", "i18", "ts_after_arrival", D),
        ("impressions", "i12", "arrived_too_late", D),
        ("clicks", "c5", "click_before_impression", D),
        ("clicks", "c6", "click_after_window", D),
        ("clicks", "c_orphan", "orphan_click", D),
        ("clicks", "sha256:*", "missing_click_id", D),
        ("conversions", "v_orphan", "click_not_valid", D),
        ("conversions", "v_unknown", "unknown_click", D),
        ("conversions", "v_before", "conversion_before_click", D),
        ("conversions", "v_nouser", "missing_user_id", D),
        ("conversions", "v_none", "no_click_in_window", D),
        ("conversions", "v19", "conversion_after_window", D),
    }
    # The record travels as JSON; an id-less record is keyed by the hash of that JSON.
    ((rid, rec),) = [(k[1], v) for k, v in quarantine.items() if k[2] == "missing_impression_id"]
    assert json.loads(rec) == {
        "ts": "2026-11-02T05:00:00.000Z",
        "user_id": "u13",
        "item_id": "x13",
        "price": 1.0,
        "dt": D,
    }
    assert rid == "sha256:" + hashlib.sha256(rec.encode()).hexdigest()
    assert json.loads(quarantine[("clicks", "c5", "click_before_impression", D)])["impression_id"] == "i5"


def test_counts_in_out_duplicates_and_reasons(far):
    """What became of each raw row D owns (the numbers the job prints and gates on)."""
    _, _, fates = far
    q = "quarantined"
    assert fates == {
        ("impressions", "labelled", None): 12,
        ("impressions", "duplicate", None): 2,  # i1's exact copy, i2's later copy
        **{
            ("impressions", q, r): 1
            for r in (
                "missing_impression_id",
                "missing_user_id",
                "missing_item_id",
                "missing_ts",
                "missing_dt",
                "ts_after_arrival",
                "arrived_too_late",
            )
        },
        ("clicks", "valid", None): 9,
        ("clicks", "duplicate", None): 1,
        **{
            ("clicks", q, r): 1
            for r in ("click_before_impression", "click_after_window", "orphan_click", "missing_click_id")
        },
        ("conversions", "attributed", "click_id"): 1,
        ("conversions", "attributed", "last_touch"): 2,
        ("conversions", "duplicate", None): 1,
        **{
            ("conversions", q, r): 1
            for r in (
                "click_not_valid",
                "unknown_click",
                "conversion_before_click",
                "missing_user_id",
                "no_click_in_window",
                "conversion_after_window",
            )
        },
    }
    counts = count_fates([{"source": s, "fate": f, "reason": r, "n": n} for (s, f, r), n in fates.items()])
    assert (counts["clicks"].rows_in, counts["clicks"].duplicates, counts["clicks"].out) == (14, 1, 9)
    # Gated: before-skew, orphan, missing id (3 of 13 distinct); after-window is not gated.
    assert counts["clicks"].gated == 3 and counts["clicks"].bad_fraction == pytest.approx(3 / 13)
    assert counts["conversions"].gated == 3  # unknown, before click, missing user


def test_maturity_waits_for_the_lateness_too(frames):
    """label_mature needs as_of >= ts + W + T + L (Windows.horizon_s): at D+9 00:00 the windows
    of every impression of D have closed (W + T = 8 days), but a conversion may still arrive up
    to L = 1 day late, so no row of D is mature yet; at D+10 00:00 all are."""
    assert W.horizon_s == W.click_window + W.attribution_window + W.max_lateness == 9 * 86_400
    early, _, _ = compute(frames, as_of=t("00:00", 9))
    final, _, _ = compute(frames, as_of=FAR)
    assert early.keys() == final.keys() and len(early) > 5
    assert not any(r[4] for r in early.values()) and all(r[4] for r in final.values())


def test_as_of_cuts_events_and_maturity(frames):
    """Only events with ts <= as_of count (inclusive); nothing is mature yet."""
    labels, quarantine, fates = compute(frames, as_of=t("16:00"))
    cut = dict(mature=False, as_of=("16:00",))
    assert labels == {
        "i1": row(**cut),
        "i2": row(**cut),
        "i3": row(("10:01",), ("12:00",), **cut),
        "i4": row(("10:57",), **cut),
        "i5": row(**cut),
        "i7": row(("13:01",), **cut),  # its conversion at 20:00 comes after as_of
        "i8a": row(("14:01",), **cut),
        "i8b": row(("15:01",), ("16:00",), **cut),  # conversion exactly at as_of counts
        "i9": row(("01:01",), **cut),
        "i10": row(("02:01",), **cut),
        "i11": row(**cut),
    }
    assert {k[0]: n for k, n in fates.items() if k[1] == "after_as_of"} == {
        "impressions": 1,
        "clicks": 1,
        "conversions": 1,
    }  # i8c, c8c, v7: not counted, not quarantined
    assert not any(r in ("i8c", "c8c", "v7") for _, r, _, _ in quarantine)


# ---- parameters (no Spark)


def test_scope_reads_the_partitions_the_windows_need():
    sc = scope_of(D, default_as_of(D), W)
    assert default_as_of(D) == t("00:00", 1)
    # Impressions: the day, clicks' impressions back to T + S + W before it; default as-of ends at D+1.
    assert sc.dt_range("impressions", W) == (day(-9), day(2))
    assert sc.dt_range("clicks", W) == (day(-29), day(2))  # conversions' clicks: 4 T back
    assert sc.dt_range("conversions", W) == (day(-1), day(2))
    far = scope_of(D, FAR, W)
    assert far.dt_range("conversions", W) == (day(-1), day(10))  # D + W + T + S, + lateness
    assert parse_as_of("2026-11-10") == t("00:00", 9)
    assert parse_as_of("2026-11-02T16:00:00Z") == parse_as_of("2026-11-02 16:00") == t("16:00")
    with pytest.raises(ConfigError, match="--as-of"):
        parse_as_of("yesterday")


def test_windows_come_from_the_configuration(make_cfg):
    cfg = make_cfg("labels.click_window=2h", "labels.attribution_window=3d", "labels.max_lateness=36h")
    w = Windows.from_config(cfg.labels)
    assert (w.click_skew, w.click_window, w.attribution_window, w.max_lateness) == (300, 7200, 259200, 129600)
    assert w.dedupe_days == 2
