"""Ali-CCP raw-release ingest on a hand-written file in the exact release layout."""

import hashlib
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from esmm.config.loader import load_config
from esmm.config.schema import REPO_ROOT
from pipelines.features import job as features
from pipelines.ingest import aliccp
from pipelines.io.delta import read_delta

A, B, C = "\x01", "\x02", "\x03"
BEHAVIOUR = [f"a{i}" for i in range(300)]  # more than the model reads (max_len 256): all kept in tables


def feats(*pairs):
    return A.join(f"{f}{B}{i}{C}1.0" for f, i in pairs)


def skeleton_line(sid, click, conv, idx, *pairs, num=None):
    return f"{sid},{click},{conv},{idx},{len(pairs) if num is None else num},{feats(*pairs)}"


BAD_SEPARATOR = f"5;1;0;c1;1;205{B}i5{C}1.0"
SKELETON = [
    skeleton_line(
        1,
        0,
        0,
        "c1",
        ("205", "i1"),
        ("206", "k1"),
        ("210", "n1"),
        ("210", "n2"),
        ("853", "x1"),
        ("853", "x2"),
        ("853", "x3"),
    ),
    skeleton_line(2, 1, 1, "c2", ("205", "i2")),
    skeleton_line(3, 0, 1, "c1", ("205", "i3")),  # conversion without click
    skeleton_line(4, 1, 0, "c404", ("205", "i4")),  # common index missing
    BAD_SEPARATOR,  # ';' instead of ','
    f"6,0,0,c1,2,205{B}i6{C}1.0;206{B}k6{C}1.0",  # ';' instead of \x01
    "7,1,0,c2,0,",  # empty feature list: valid
    skeleton_line(8, 0, 0, "c1", ("205", "i8"), ("205", "i9")),  # two ids in single-valued 205
    skeleton_line(9, 0, 0, "c9", ("205", "i9")),  # its common line is duplicated
    skeleton_line(10, 0, 0, "c5", ("205", "i10")),  # its common line is malformed
    skeleton_line(11, 0, 0, "c1", ("205", "i11"), num=2),  # feature_num says 2, list has 1
    skeleton_line(12, 2, 0, "c1", ("205", "i12")),  # click not 0/1
]
COMMON = [
    f"c1,{3 + len(BEHAVIOUR)},{feats(('101', 'u1'), ('124', 'g1'), ('110_14', 's1'), *[('109_14', v) for v in BEHAVIOUR])}",
    f"c2,1,{feats(('101', 'u2'))}",
    f"c5,2,101{B}u5",  # no \x03 value part
    f"c9,1,{feats(('101', 'u9'))}",
    f"c9,1,{feats(('101', 'u9b'))}",
]


def sha(line):
    return "sha256:" + hashlib.sha256(line.encode()).hexdigest()


@pytest.fixture
def ingested(spark, tmp_path):
    skel, common = tmp_path / "sample_skeleton_train.csv", tmp_path / "common_features_train.csv"
    skel.write_text("\n".join(SKELETON) + "\n")
    common.write_text("\r\n".join(COMMON) + "\r\n")  # CRLF line ends are tolerated
    # Most lines are bad on purpose: the bad-fraction gate (tests/integration/test_aliccp_gate.py) is off here.
    cfg = load_config(
        [REPO_ROOT / "conf" / "aliccp.yaml"], [f"lakehouse.root={tmp_path / 'lh'}", "aliccp.max_bad_fraction=1.0"]
    )
    counts = aliccp.run(spark, cfg, str(skel), str(common), "train", log=lambda *_: None)
    return cfg, counts


def test_raw_release_rows_and_quarantine_reasons(spark, ingested):
    cfg, counts = ingested
    day = cfg.aliccp.train_date
    labels = {r.impression_id: r for r in read_delta(spark, cfg.lakehouse.path("labels")).collect()}
    assert sorted(labels) == ["train-1", "train-2", "train-7"]
    r1, r2, r7 = labels["train-1"], labels["train-2"], labels["train-7"]
    assert (r1.click, r1.conversion, r2.click, r2.conversion, r7.click, r7.conversion) == (0, 0, 1, 1, 1, 0)
    assert (r1.f101, r1.f205, r1.f206, r1.f124, r1.user_id, r1.item_id) == ("u1", "i1", "k1", "g1", "u1", "i1")
    assert r1.f210 == ["n1", "n2"] and r1.f853 == ["x1", "x2", "x3"] and r1.f110_14 == ["s1"]
    assert r1.f109_14 == BEHAVIOUR  # every value, in file order
    assert r1.f150_14 == [] and r1.f216 is None
    assert (r7.f101, r7.f205, r7.f210) == ("u2", None, [])  # empty list: only the common side
    assert all(r.dt == day and r.label_mature for r in labels.values())

    q = read_delta(spark, cfg.lakehouse.path("quarantine")).where(F.col("dt") == day)
    got = sorted((r.source, r.record_id, r.reason) for r in q.collect())
    assert got == sorted(
        [
            ("aliccp_skeleton", "3", "conversion_without_click"),
            ("aliccp_skeleton", "4", "common_index_not_found"),
            ("aliccp_skeleton", sha(BAD_SEPARATOR), "malformed_line"),
            ("aliccp_skeleton", "6", "bad_feature"),
            ("aliccp_skeleton", "8", "multiple_values:f205"),
            ("aliccp_skeleton", "9", "common_index_not_found"),
            ("aliccp_skeleton", "10", "common_index_not_found"),
            ("aliccp_skeleton", "11", "feature_num_mismatch"),
            ("aliccp_skeleton", "12", "bad_label"),
            ("aliccp_common", "c5", "bad_feature"),
            ("aliccp_common", "c9", "duplicate_common_index"),
            ("aliccp_common", "c9", "duplicate_common_index"),
        ]
    )
    assert {r.record for r in q.where("record_id = '3'").collect()} == {SKELETON[2]}
    assert counts["rows"] == 3 and counts["clicks"] == 2 and counts["conversions"] == 1
    assert counts["quarantined:common_index_not_found"] == 3


def test_multi_values_survive_into_the_examples_in_full(spark, ingested):
    cfg, _ = ingested
    logged = []
    features.run(spark, cfg, [cfg.aliccp.train_date], log=logged.append)
    # The model reads the first max_len (256) ids of a bag: the one 300-id row is counted, not silently cut.
    assert "rows whose bag the model cuts to max_len: f109_14 1 (> 256 values)" in logged[-1]
    ex = {r.impression_id: r for r in read_delta(spark, cfg.lakehouse.path("examples")).collect()}
    r1 = ex["train-1"]
    assert len(r1.f109_14) == len(BEHAVIOUR) and len(set(r1.f109_14)) > 250 and 0 not in r1.f109_14
    assert len(r1.f853) == 3 and len(set(r1.f853)) == 3 and len(r1.f210) == 2
    assert ex["train-7"].f210 == [0] and ex["train-7"].f205 == 0  # empty -> the NULL row
    spec = {f.name: f for f in cfg.features.categorical}
    assert all(0 <= v < spec["f109_14"].buckets for v in r1.f109_14)
    # The same raw id hashes to the same row in every row (u1 = u1; s1 in f110_14 of both).
    assert isinstance(ex["train-2"].f101, int) and ex["train-2"].f101 == ex["train-7"].f101 != r1.f101


def test_split_from_file_names():
    assert aliccp.split_of("/d/ali_ccp_train_sample.csv") == "train"
    assert aliccp.split_of("ali_ccp_val_sample.csv") == "val"
    with pytest.raises(ValueError, match="cannot tell the split"):
        aliccp.split_of(str(Path("/d/trainval.csv")))


def test_paddlerec_text_layout(spark, tmp_path):
    # PaddleRec's layout: sample_id,click,conversion,field:id,... with repeated fields.
    lines = [
        "1,1,0,210:1,210:2,216:4,301:5,205:6,101:12,150_14:18,150_14:19,150_14:20",
        "2,0,1,205:7,101:12",  # conversion without click
        "3,0,0,205:8,101:12,216",  # an item without ':'
        "4,1,1,205:9,101:13",
    ]
    f = tmp_path / "small.txt"
    f.write_text("\n".join(lines) + "\n")
    cfg = load_config(
        [REPO_ROOT / "conf" / "aliccp.yaml"], [f"lakehouse.root={tmp_path / 'lh'}", "aliccp.max_bad_fraction=1.0"]
    )
    counts = aliccp.run_paddle(spark, cfg, [str(f)], "test", log=lambda *_: None)
    labels = {r.impression_id: r for r in read_delta(spark, cfg.lakehouse.path("labels")).collect()}
    assert sorted(labels) == ["test-1", "test-4"]
    r1 = labels["test-1"]
    assert (r1.click, r1.conversion, r1.f210, r1.f150_14, r1.f216, r1.f205) == (
        1,
        0,
        ["1", "2"],
        ["18", "19", "20"],
        "4",
        "6",
    )
    assert all(r.dt == cfg.aliccp.test_date for r in labels.values())
    q = read_delta(spark, cfg.lakehouse.path("quarantine")).collect()
    assert sorted((r.record_id, r.reason) for r in q) == [("2", "conversion_without_click"), ("3", "bad_feature")]
    assert counts["rows"] == 2 and counts["conversions"] == 1
