"""The feature job: curated/labels -> curated/examples, per date, with the shared mapping."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from jobs.cli import main
from pipelines.features import job as features
from pipelines.io.delta import read_delta

pytestmark = pytest.mark.integration  # whole jobs on real tables

D, D1 = "2026-11-02", "2026-11-03"
# The spec of tests/integration/test_features.py, whose golden indices are pinned there.
SPEC = [
    "features.categorical=[{name: user_city, buckets: 50}, {name: position, buckets: 8}]",
    "features.numeric=[{name: price, transform: log1p, clip_min: 0.0, clip_max: 3.0, fill: -1.0}]",
]
GOLDEN_CITY7, GOLDEN_POS3 = 39, 4
LABELS = (
    "impression_id string, ts timestamp, user_id string, item_id string, user_city string, "
    "position bigint, price double, click int, first_click_ts timestamp, conversion int, "
    "conversion_ts timestamp, label_mature boolean, as_of timestamp, dt string"
)


def ts(d: str, h: int = 0) -> dt.datetime:
    return dt.datetime.fromisoformat(d).replace(hour=h, tzinfo=dt.timezone.utc)


@pytest.fixture
def cfg(spark, make_cfg):
    cfg = make_cfg(*SPEC)
    rows = [
        ("a", ts(D, 8), "u1", "x1", "city7", 3, 1.0, 1, ts(D, 9), 1, ts(D, 10), True, ts(D1), D),
        ("b", ts(D, 9), "u2", "x2", None, None, float("nan"), 0, None, 0, None, False, ts(D1), D),
        ("c", ts(D1, 1), "u3", "x3", "", 3, 100.0, 1, ts(D1, 2), 0, None, False, ts(D1), D1),
    ]
    spark.createDataFrame(rows, LABELS).write.format("delta").partitionBy("dt").save(cfg.lakehouse.path("labels"))
    return cfg


def test_examples_follow_the_contract_per_date(spark, cfg):
    lines: list[str] = []
    assert features.run(spark, cfg, [D], log=lines.append) == {D: 2}
    ex = read_delta(spark, cfg.lakehouse.path("examples"))
    assert [(f.name, f.dataType.simpleString()) for f in ex.schema.fields] == [
        ("impression_id", "string"),
        ("dt", "string"),
        ("click", "int"),
        ("conversion", "int"),
        ("label_mature", "boolean"),
        ("click_elapsed_s", "double"),
        ("conversion_delay_s", "double"),
        ("user_city", "int"),
        ("position", "int"),
        ("price", "float"),
        ("feature_mapping_id", "string"),
    ]
    got = {r.impression_id: tuple(r) for r in ex.collect()}
    mid = cfg.features.mapping_id
    # These labels predate the delay columns: they are derived from the labels' timestamps
    # (click 09:00, conversion 10:00, as-of next midnight).
    assert got["a"][:10] == (
        "a", D, 1, 1, True, 15 * 3600.0, 3600.0, GOLDEN_CITY7, GOLDEN_POS3, pytest.approx(math.log1p(1.0))
    )  # fmt: skip
    assert got["b"] == ("b", D, 0, 0, False, None, None, 0, 0, 0.0, mid)  # NULLs -> row 0; NaN -> fill -> log1p(0)
    assert got["a"][10] == mid and set(got) == {"a", "b"}  # D only
    assert lines == [f"curated/examples dt={D}: 2 rows (feature mapping {mid})"]


def test_ranges_replace_exactly_their_dates_and_the_cli(spark, cfg):
    root = ["--set", f"lakehouse.root={cfg.lakehouse.root}", *[x for s in SPEC for x in ("--set", s)]]
    assert main(["features", "--start", D, "--end", D1, *root]) == 0
    path = cfg.lakehouse.path("examples")
    before = sorted(tuple(r) for r in read_delta(spark, path).collect())
    assert [r[0] for r in before] == ["a", "b", "c"]
    assert before[2][7:10] == (0, GOLDEN_POS3, pytest.approx(3.0))  # '' -> 0; log1p(100) clipped to 3
    # Re-running one date replaces only that date, with the same rows.
    assert main(["features", "--date", D1, *root]) == 0
    assert sorted(tuple(r) for r in read_delta(spark, path).collect()) == before
    from delta.tables import DeltaTable

    ops = [
        r["operationParameters"].get("predicate", "")
        for r in DeltaTable.forPath(spark, path).history().orderBy("version").collect()
    ]
    assert "2026-11-03" in ops[-1] and "2026-11-02" not in ops[-1]
    # A date without labels is an error naming it; nothing is written.
    assert main(["features", "--date", "2026-11-04", *root]) == 1
    with pytest.raises(FileNotFoundError, match=r"no rows for dt \['2026-11-04'\]; run `esmm labels"):
        features.run(spark, cfg, ["2026-11-04"])


def test_job_and_scorer_share_the_mapping(spark, cfg):
    """build_examples is encode_features on the label rows: the scorer's mapping, exactly."""
    labels = read_delta(spark, cfg.lakehouse.path("labels"))
    ex = features.build_examples(labels, cfg.features).drop(*features.DELAY_COLUMNS)
    direct = features.encode_features(labels, cfg.features).select(*ex.columns)
    assert sorted(map(tuple, ex.collect())) == sorted(map(tuple, direct.collect()))
    with pytest.raises(ValueError, match=r"lacks columns \['user_city'\]"):
        features.build_examples(labels.drop("user_city"), cfg.features)
