"""Ali-CCP ingest: the bad-fraction gate, and the ``\\x03`` feature values (dropped, ids kept)."""

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from esmm.config.loader import load_config
from esmm.config.schema import REPO_ROOT
from pipelines.ingest import aliccp
from pipelines.ingest import gate as ingest_gate
from pipelines.io.delta import read_delta

A, B, C = "\x01", "\x02", "\x03"


def item(field, fid, value):
    return f"{field}{B}{fid}{C}{value}"


def skeleton(sid, click, conv, *items):
    return f"{sid},{click},{conv},c1,{len(items)},{A.join(items)}"


# Weights other than 1.0 in the multi-valued fields (as the release's behaviour fields and
# crosses carry), 1.0 in the single-valued ones.
GOOD = [
    skeleton(i, i % 2, 0, item("205", f"i{i}", "1.0"), item("853", "x1", "0.69315"), item("853", "x2", "2.5"))
    for i in range(1, 20)
]
COMMON = f"c1,3,{A.join([item('101', 'u1', '1.0'), item('109_14', 'a', '1.0986'), item('109_14', 'b', '0.0')])}"
BAD = "20,0,1,c1,1," + item("205", "i20", "1.0")  # conversion without click: 1 of 20 lines = 5%


def _ingest(spark, tmp_path, lines, *overrides):
    skel, common = tmp_path / "sample_skeleton_train.csv", tmp_path / "common_features_train.csv"
    skel.write_text("\n".join(lines) + "\n")
    common.write_text(COMMON + "\n")
    cfg = load_config([REPO_ROOT / "conf" / "aliccp.yaml"], [f"lakehouse.root={tmp_path / 'lh'}", *overrides])
    return cfg, skel, lambda: aliccp.run(spark, cfg, str(skel), str(common), "train", log=lambda *_: None)


def test_over_the_bad_fraction_nothing_reaches_labels(spark, tmp_path):
    cfg, skel, run = _ingest(spark, tmp_path, [*GOOD, BAD])  # default aliccp.max_bad_fraction 0.01
    assert cfg.aliccp.max_bad_fraction == 0.01
    with pytest.raises(aliccp.IngestGateError) as e:
        run()
    msg = str(e.value)
    assert str(skel) in msg and "1 of 20 aliccp_skeleton records (5.00%)" in msg
    assert "conversion_without_click 1" in msg and "max_bad_fraction=1.00%" in msg
    assert f"curated/labels dt={cfg.aliccp.train_date} was not written" in msg
    # No labels table at all (not a half-written one); the quarantine holds the bad line.
    with pytest.raises(Exception):
        DeltaTable(cfg.lakehouse.path("labels"))
    q = read_delta(spark, cfg.lakehouse.path("quarantine")).collect()
    assert [(r.record_id, r.reason, r.record) for r in q] == [("20", "conversion_without_click", BAD)]


def test_under_the_bad_fraction_the_ingest_writes_and_keeps_ids_not_weights(spark, tmp_path):
    cfg, _, run = _ingest(spark, tmp_path, [*GOOD, BAD], "aliccp.max_bad_fraction=0.05")
    counts = run()
    assert counts["rows"] == 19 and counts["quarantined:conversion_without_click"] == 1
    rows = read_delta(spark, cfg.lakehouse.path("labels")).where(F.col("impression_id") == "train-1").collect()
    # Every id survives whatever its \x03 value (0.69315, 2.5, even 0.0); the value itself is dropped.
    assert rows[0].f853 == ["x1", "x2"] and rows[0].f109_14 == ["a", "b"] and rows[0].f205 == "i1"
    assert not any("weight" in c or "value" in c for c in read_delta(spark, cfg.lakehouse.path("labels")).columns)


def test_the_gate_counts_each_source_against_its_own_lines():
    reasons = {"aliccp_skeleton": {"bad_label": 1}, "aliccp_common": {"bad_feature": 3, "malformed_line": 1}}
    read = {"aliccp_skeleton": (1000, "s.csv"), "aliccp_common": (100, "c.csv")}
    ingest_gate.check_bad_fraction(reasons, read, "2018-01-01", 0.04)  # 0.1% and 4.0%: not above
    with pytest.raises(
        ingest_gate.IngestGateError,
        match=r"c\.csv: 4 of 100 aliccp_common records \(4\.00%\).*" r"top reasons: bad_feature 3, malformed_line 1",
    ):
        ingest_gate.check_bad_fraction(reasons, read, "2018-01-01", 0.03)
