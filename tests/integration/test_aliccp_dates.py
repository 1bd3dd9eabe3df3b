"""Ali-CCP pseudo-dates: one date per split, the same scheme for the raw and the CSV layouts."""

import pytest

from esmm.config.loader import load_config
from esmm.config.schema import REPO_ROOT
from pipelines.ingest import aliccp
from pipelines.io.delta import read_delta

HEADER = "click,purchase,101,121,122,124,125,126,127,128,129,205,206,207,210,216,508,509,702,853,301,109_14,110_14,127_14,150_14"


def _csv(path, rows):
    """rows: (click, purchase, item id); every other field 1."""
    path.write_text(HEADER + "\n" + "".join(f"{c},{p},1,1,1,1,1,1,1,1,1,{i}" + ",1" * 13 + "\n" for c, p, i in rows))
    return str(path)


@pytest.fixture
def cfg(tmp_path):
    return load_config([REPO_ROOT / "conf" / "aliccp.yaml"], [f"lakehouse.root={tmp_path / 'lh'}"])


def _by_dt(spark, cfg):
    rows = read_delta(spark, cfg.lakehouse.path("labels")).select("dt", "f205", "impression_id").collect()
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r.dt, []).append(r.f205)
    assert len({r.impression_id for r in rows}) == len(rows)
    return {d: sorted(v) for d, v in out.items()}


def test_csv_files_of_one_split_share_its_date_and_never_overlap_another(spark, cfg, tmp_path):
    files = [
        _csv(tmp_path / "ali_ccp_train_part1.csv", [(1, 1, "a"), (0, 0, "b")]),
        _csv(tmp_path / "ali_ccp_train_part2.csv", [(1, 0, "c")]),
        _csv(tmp_path / "ali_ccp_test_sample.csv", [(0, 0, "d")]),
    ]
    counts = aliccp.run_csv(spark, cfg, files, log=lambda *_: None)
    assert {s: c["rows"] for s, c in counts.items()} == {"train": 3, "test": 1}
    # Both train files on train_date (the second no longer replaces the first), test on test_date.
    assert _by_dt(spark, cfg) == {cfg.aliccp.train_date: ["a", "b", "c"], cfg.aliccp.test_date: ["d"]}
    # --split for all files: one split, one date, every file's rows.
    aliccp.run_csv(spark, cfg, files, split="val", log=lambda *_: None)
    assert _by_dt(spark, cfg)[cfg.aliccp.val_date] == ["a", "b", "c", "d"]


def test_a_slice_date_may_not_be_another_splits_date(spark, cfg, tmp_path):
    f = _csv(tmp_path / "ali_ccp_train_sample.csv", [(0, 0, "a")])
    with pytest.raises(ValueError, match="--date 2018-01-03 is aliccp.test_date"):
        aliccp.run_csv(spark, cfg, [f], day=cfg.aliccp.test_date)
    with pytest.raises(ValueError, match="--date 2018-01-03 is aliccp.test_date"):
        aliccp.run(spark, cfg, f, f, "train", day=cfg.aliccp.test_date)
    t = _csv(tmp_path / "ali_ccp_test_sample.csv", [(0, 0, "b")])
    with pytest.raises(ValueError, match="several splits"):
        aliccp.run_csv(spark, cfg, [f, t], day="2018-02-01")
    aliccp.run_csv(spark, cfg, [f], day="2018-02-01", log=lambda *_: None)  # a slice of its own
    assert _by_dt(spark, cfg) == {"2018-02-01": ["a"]}


def test_files_read_together_must_share_a_header(spark, cfg, tmp_path):
    a = _csv(tmp_path / "ali_ccp_train_a.csv", [(0, 0, "a")])
    b = tmp_path / "ali_ccp_train_b.csv"
    b.write_text(HEADER.replace("click,purchase", "purchase,click") + "\n")
    with pytest.raises(ValueError, match="ali_ccp_train_b.csv: its CSV header"):
        aliccp.run_csv(spark, cfg, [a, str(b)])
