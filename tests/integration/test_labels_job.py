"""The label job edge: raw Delta / Parquet / JSON-lines in, Delta out; corrupt lines,
the bad-fraction gate, atomic idempotent re-runs, late conversions, the CLI."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest
from pyspark.sql import functions as F

from esmm.util.timeutil import parse_as_of
from jobs.cli import main
from pipelines.io.contract import SOURCES
from pipelines.io.delta import read_delta
from pipelines.labels import job as L

pytestmark = pytest.mark.integration  # whole jobs on real tables

D = "2026-11-02"
UTC = dt.timezone.utc
FAR = "2026-11-11"  # as-of: every window of D has closed
RAW_IMP = (
    "impression_id string, ts timestamp, user_id string, item_id string, user_gender bigint, "
    "user_age bigint, user_city string, item_category bigint, item_brand string, item_shop string, "
    "position bigint, device string, hour bigint, price double, item_rating double, "
    "user_activity double, dt string"
)
RAW_CLK = "click_id string, impression_id string, ts timestamp, dt string"
RAW_CNV = (
    "conversion_id string, click_id string, user_id string, item_id string, ts timestamp, " "value double, dt string"
)


def t(hhmm: str, k: int = 0) -> dt.datetime:
    h, m = (int(x) for x in hhmm.split(":"))
    return dt.datetime(2026, 11, 2, h, m, tzinfo=UTC) + dt.timedelta(days=k)


def day(k: int) -> str:
    return (dt.date.fromisoformat(D) + dt.timedelta(days=k)).isoformat()


def imp(i, when, u, x, dt_=D):
    return (i, when, u, x, 1, 2, "city1", 3, "b1", "s1", 1, "ios", when.hour, 10.0, 4.5, 3.0, dt_)


def labels_of(spark, cfg, day_=D):
    """Label rows of a date as sorted tuples (timestamps as UTC strings)."""
    df = read_delta(spark, cfg.lakehouse.path("labels")).where(F.col("dt") == day_)
    return sorted(
        tuple(r)
        for r in df.select(
            "impression_id",
            "click",
            F.col("first_click_ts").cast("string"),
            "conversion",
            F.col("conversion_ts").cast("string"),
            "label_mature",
            F.col("as_of").cast("string"),
            "dt",
        ).collect()
    )


DELAYS = ("click_elapsed_s", "conversion_delay_s")


def quarantine_of(spark, cfg):
    df = read_delta(spark, cfg.lakehouse.path("quarantine"))
    return sorted(tuple(r) for r in df.select("source", "record_id", "reason", "record", "dt").collect())


def version(spark, path):
    from delta.tables import DeltaTable

    return DeltaTable.forPath(spark, path).history(1).first()["version"]


@pytest.fixture
def few_partitions(shuffle_partitions):
    with shuffle_partitions(1):
        yield


def test_parquet_and_json_sources_corrupt_lines_and_the_gate(spark, make_cfg, tmp_path, few_partitions):
    land = tmp_path / "landing"
    spark.createDataFrame(
        [
            imp("a", t("08:00"), "u1", "x1"),
            imp("b", t("09:00"), "u2", "x2"),
            imp("c", t("23:00", -1), "u3", "x3", D),
        ],  # late arrival of D-1
        RAW_IMP,
    ).write.partitionBy("dt").parquet(str(land / "impressions"))
    corrupt = '{"click_id": "kz", "impression_id": "b", "ts": '  # truncated by the producer
    (land / "clicks" / f"dt={D}").mkdir(parents=True)
    (land / "clicks" / f"dt={D}" / "part-0.json").write_text(
        "\n".join(
            [
                json.dumps({"click_id": "ka", "impression_id": "a", "ts": "2026-11-02T08:01:00Z"}),
                json.dumps({"click_id": "kb", "impression_id": "b", "ts": "2026-11-02T09:02:00Z"}),
                corrupt,
            ]
        )
        + "\n"
    )
    (land / "conversions" / f"dt={D}").mkdir(parents=True)
    (land / "conversions" / f"dt={D}" / "part-0.json").write_text(
        json.dumps(
            {
                "conversion_id": "va",
                "click_id": None,
                "user_id": "u1",
                "item_id": "x1",
                "ts": "2026-11-02T10:00:00Z",
                "value": 3.5,
            }
        )
        + "\n"
    )
    srcs = [
        "sources.impressions.format=parquet",
        f"sources.impressions.path={land / 'impressions'}",
        "sources.clicks.format=json",
        f"sources.clicks.path={land / 'clicks'}",
        "sources.conversions.format=json",
        f"sources.conversions.path={land / 'conversions'}",
    ]
    cfg = make_cfg(*srcs, "labels.max_bad_fraction=0.5")
    lines: list[str] = []
    (report,) = L.run(spark, cfg, [D], log=lines.append)
    assert report.written and report.sources["clicks"].quarantined == {"corrupt_record": 1}
    assert any(
        s.startswith("  clicks       in           3  duplicates removed         0  out           2") for s in lines
    )
    end = "2026-11-03 00:00:00"
    assert labels_of(spark, cfg) == [  # c arrived in D's partition but is D-1's impression
        ("a", 1, "2026-11-02 08:01:00", 1, "2026-11-02 10:00:00", False, end, D),
        ("b", 1, "2026-11-02 09:02:00", 0, None, False, end, D),
    ]
    # The corrupt line is kept verbatim, keyed by its hash, in the partition it arrived in.
    q = quarantine_of(spark, cfg)
    assert q == [("clicks", "sha256:" + hashlib.sha256(corrupt.encode()).hexdigest(), "corrupt_record", corrupt, D)]

    # With the default 1% the gate fails, names the source and share, and writes nothing.
    paths = [cfg.lakehouse.path(n) for n in ("labels", "quarantine")]
    versions = [version(spark, p) for p in paths]
    with pytest.raises(
        L.LabelGateError,
        match=r"labels 2026-11-02: clicks: 33\.33% of 3 distinct records quarantined "
        r"for integrity reasons \(corrupt_record 1\), above "
        r"labels.max_bad_fraction=1\.00%; nothing was written",
    ):
        L.run(spark, make_cfg(*srcs), [D], log=lines.append)
    assert [version(spark, p) for p in paths] == versions
    assert quarantine_of(spark, cfg) == q


def test_json_impression_with_a_bad_feature_value_is_corrupt_in_every_pass(spark, make_cfg, tmp_path, few_partitions):
    """Spark's JSON reader parses only the columns a query reads. The job's narrow passes
    (deduplication, click lookups) must still see a line with an unparseable feature value
    as corrupt, or one raw row would be both quarantined and labelled, and its valid copy
    (arrived a day later, same ts) would lose to it and go unlabelled."""
    land = tmp_path / "landing"
    good = {"impression_id": "i1", "ts": "2026-11-02T10:00:00Z", "user_id": "u1", "item_id": "x1", "price": 9.5}
    bad = dict(good, price="abc")  # the producer's bug: a string in a DOUBLE column
    other = {"impression_id": "i2", "ts": "2026-11-02T11:00:00Z", "user_id": "u2", "item_id": "x2", "price": 1.0}
    for d, rows in ((D, [bad, other]), (day(1), [good])):
        (land / "impressions" / f"dt={d}").mkdir(parents=True)
        (land / "impressions" / f"dt={d}" / "part-0.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (land / "clicks" / f"dt={D}").mkdir(parents=True)
    (land / "clicks" / f"dt={D}" / "part-0.json").write_text(
        json.dumps({"click_id": "k1", "impression_id": "i1", "ts": "2026-11-02T10:01:00Z"}) + "\n"
    )
    (land / "conversions" / f"dt={D}").mkdir(parents=True)
    (land / "conversions" / f"dt={D}" / "part-0.json").write_text(
        json.dumps(
            {
                "conversion_id": "v1",
                "click_id": "k1",
                "user_id": "u1",
                "item_id": "x1",
                "ts": "2026-11-02T12:00:00Z",
                "value": 2.0,
            }
        )
        + "\n"
    )
    cfg = make_cfg(
        *[f"sources.{s}.{k}={v}" for s in SOURCES for k, v in (("format", "json"), ("path", land / s))],
        "labels.max_bad_fraction=0.5",
    )
    (report,) = L.run(spark, cfg, [D], as_of=parse_as_of(FAR), log=lambda m: None)
    imps = report.sources["impressions"]
    assert (imps.rows_in, imps.duplicates, imps.out, imps.quarantined) == (3, 0, 2, {"corrupt_record": 1})
    end = "2026-11-12 00:00:00"  # as-of FAR = the end of that day
    assert labels_of(spark, cfg) == [
        ("i1", 1, "2026-11-02 10:01:00", 1, "2026-11-02 12:00:00", True, end, D),
        ("i2", 0, None, 0, None, True, end, D),
    ]
    (q,) = quarantine_of(spark, cfg)
    assert (q[0], q[2], q[4]) == ("impressions", "corrupt_record", D) and json.loads(q[3])["price"] == "abc"


def test_reruns_are_idempotent_and_late_conversions_flip_only_their_rows(spark, make_cfg, few_partitions):
    cfg = make_cfg("labels.max_bad_fraction=0.9")
    root = cfg.lakehouse.root
    spark.createDataFrame(
        [
            imp("a", t("08:00"), "u1", "x1"),
            imp("b", t("09:00"), "u2", "x2"),
            imp("c", t("10:00"), "u3", "x3"),
            imp("d", t("11:00"), "u4", "x4"),
            imp("d", t("11:00"), "u4", "x4"),  # duplicate delivery
            imp("e", t("11:00", 1), "u5", "x5", day(1)),  # another day
        ],
        RAW_IMP,
    ).write.format("delta").partitionBy("dt").save(cfg.lakehouse.path("impressions"))
    spark.createDataFrame(
        [
            ("ka", "a", t("08:01"), D),
            ("kb", "b", t("09:01"), D),
            ("kc", "c", t("10:01"), day(1)),
        ],
        RAW_CLK,
    ).write.format("delta").partitionBy("dt").save(cfg.lakehouse.path("clicks"))
    spark.createDataFrame(
        [
            ("va", "ka", "u1", "x1", t("12:00"), 1.0, D),
            ("vx", "k-missing", "u9", "x9", t("12:00"), 1.0, D),  # unknown click: quarantined
        ],
        RAW_CNV,
    ).write.format("delta").partitionBy("dt").save(cfg.lakehouse.path("conversions"))

    args = [
        "labels",
        "--date",
        D,
        "--as-of",
        FAR,
        "--set",
        f"lakehouse.root={root}",
        "--set",
        "labels.max_bad_fraction=0.9",
    ]
    assert main(args) == 0
    first, q1 = labels_of(spark, cfg), quarantine_of(spark, cfg)
    as_of = "2026-11-12 00:00:00"
    assert first == [
        ("a", 1, "2026-11-02 08:01:00", 1, "2026-11-02 12:00:00", True, as_of, D),
        ("b", 1, "2026-11-02 09:01:00", 0, None, True, as_of, D),
        ("c", 1, "2026-11-02 10:01:00", 0, None, True, as_of, D),
        ("d", 0, None, 0, None, True, as_of, D),
    ]
    assert [r[:3] for r in q1] == [("conversions", "vx", "unknown_click")]
    # Seconds from the first click to the as-of (2026-11-12 00:00) and to the conversion.
    delays = read_delta(spark, cfg.lakehouse.path("labels")).where(F.col("dt") == D)
    assert {r[0]: (r[1], r[2]) for r in delays.select("impression_id", *DELAYS).collect()} == {
        "a": (9 * 86400 + 15 * 3600 + 59 * 60, 3 * 3600 + 59 * 60),
        "b": (9 * 86400 + 14 * 3600 + 59 * 60, None),
        "c": (9 * 86400 + 13 * 3600 + 59 * 60, None),
        "d": (None, None),
    }

    # Same date, same as-of: a new version with identical contents, no duplicated quarantine rows.
    v = version(spark, cfg.lakehouse.path("labels"))
    assert main(args) == 0
    assert version(spark, cfg.lakehouse.path("labels")) == v + 1
    assert labels_of(spark, cfg) == first and quarantine_of(spark, cfg) == q1

    # Late conversions land (one by click_id, one last-touch); only b and c change.
    spark.createDataFrame(
        [
            ("vb", "kb", "u2", "x2", t("09:00", 3), 2.0, day(4)),
            ("vc", None, "u3", "x3", t("18:00", 1), 2.0, day(1)),
        ],
        RAW_CNV,
    ).write.format("delta").mode("append").save(cfg.lakehouse.path("conversions"))
    assert main(args) == 0
    after = labels_of(spark, cfg)
    assert sorted(set(after) - set(first)) == [
        ("b", 1, "2026-11-02 09:01:00", 1, "2026-11-05 09:00:00", True, as_of, D),
        ("c", 1, "2026-11-02 10:01:00", 1, "2026-11-03 18:00:00", True, as_of, D),
    ]
    assert len(after) == len(first) and quarantine_of(spark, cfg) == q1
