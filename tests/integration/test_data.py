"""The trainer's data path: one Delta version, never the folder; immature labels filtered."""

from pathlib import Path

from helpers.examples_data import TINY_SPEC, examples_df, write_examples

from esmm.data.examples import example_batches, resolve_snapshot

DATES = ["2026-11-01", "2026-11-02", "2026-11-03"]


def test_immature_rows_are_not_trained_on(spark, tmp_path):
    path = str(tmp_path / "lh" / "curated" / "examples")
    write_examples(examples_df(spark, DATES, 300, immature_last_day=True), path)
    snap = resolve_snapshot(path, DATES)

    def rows(mature_only):
        with example_batches(snap, TINY_SPEC, 100, mature_only=mature_only, workers=1) as bs:
            return sum(len(b) for b in bs)

    assert rows(False) == 900 and rows(True) == 600


def test_loader_reads_exactly_one_delta_version(spark, tmp_path):
    path = str(tmp_path / "curated" / "examples")
    day = "2026-11-02"
    write_examples(examples_df(spark, ["2026-11-01", day], 200, seed=1, id_prefix="old"), path, files_per_day=2)
    new = examples_df(spark, [day], 150, seed=9, id_prefix="new")
    write_examples(new, path, files_per_day=2, replace_where=f"dt = '{day}'")
    # The folder still holds the overwritten files: a folder read would see both versions.
    assert len(list((Path(path) / f"dt={day}").glob("*.parquet"))) > len(resolve_snapshot(path, [day], 1).files)

    def xs(version):
        snap = resolve_snapshot(path, [day], version)
        with example_batches(snap, TINY_SPEC, 64, shuffle=False, workers=1) as bs:
            return sorted(round(v, 6) for b in bs for v in b.num[:, 0].tolist())

    expect_new = sorted(
        round(r.x, 6)
        for r in spark.read.format("delta")
        .option("versionAsOf", 1)
        .load(path)
        .where(f"dt = '{day}'")
        .select("x")
        .collect()
    )
    expect_old = sorted(
        round(r.x, 6)
        for r in spark.read.format("delta")
        .option("versionAsOf", 0)
        .load(path)
        .where(f"dt = '{day}'")
        .select("x")
        .collect()
    )
    assert len(expect_new) == 150 and len(expect_old) == 200
    assert xs(1) == expect_new
    assert xs(0) == expect_old
    assert xs(None) == expect_new  # latest


def test_shards_partition_the_rows_even_with_fewer_row_groups_than_shards(spark, tmp_path):
    """2 files of one row group each, read by 3 and by 2 shards: every row exactly once."""
    path = str(tmp_path / "curated" / "examples")
    write_examples(examples_df(spark, ["2026-11-01"], 300, seed=3), path, files_per_day=2)
    snap = resolve_snapshot(path, ["2026-11-01"])
    assert len(snap.files) == 2
    every = sorted(r.x for r in spark.read.format("delta").load(path).select("x").collect())
    for shards in (3, 2):
        seen = []
        for k in range(shards):
            with example_batches(snap, TINY_SPEC, 64, cur_shard=k, shard_count=shards, workers=1) as bs:
                seen += [v for b in bs for v in b.num[:, 0].tolist()]
        assert sorted(seen) == every
