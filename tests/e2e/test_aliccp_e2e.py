"""The 200 real Ali-CCP rows of shared/data/aliccp-sample: ingest -> features -> train -> evaluate -> score."""

import os
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from esmm.config.loader import load_config
from esmm.config.schema import REPO_ROOT
from esmm.training.trainer import train
from pipelines.features import job as features
from pipelines.ingest import aliccp
from pipelines.io.delta import read_delta
from pipelines.scoring import job as score

# shared/ sits beside the clone (CI keeps a copy there); ESMM_SHARED_DIR points elsewhere
# (e.g. from a git worktree).
SHARED = Path(os.environ.get("ESMM_SHARED_DIR") or Path(__file__).resolve().parents[3] / "shared")
SAMPLE = SHARED / "data" / "aliccp-sample"
# clicks / purchases per file, from the sample's README
EXPECTED = {"train": (100, 7, 1), "val": (50, 3, 1), "test": (50, 2, 1)}


@pytest.mark.slow
@pytest.mark.skipif(
    not SAMPLE.is_dir(), reason=f"the real Ali-CCP sample is not at {SAMPLE} " f"(shared/ beside the clone)"
)
def test_real_sample_end_to_end(spark, tmp_path):
    cfg = load_config(
        [REPO_ROOT / "conf" / "aliccp.yaml"],
        [
            f"lakehouse.root={tmp_path / 'lh'}",
            "model.tower=[16]",
            "model.embedding_dim=4",
            "train.batch_size=32",
            "train.epochs=2",
            "train.reader_workers=1",
            "train.progress=false",
            "train.torch_threads=1",
            "score.candidates=labels",
            "score.torch_threads=1",
        ],
    )
    for f in cfg.features.categorical:  # tiny tables: 200 rows need no million-row embeddings
        f.buckets = min(f.buckets, 1000)
    days = {s: cfg.aliccp.date_of(s) for s in EXPECTED}
    counts = aliccp.run_csv(spark, cfg, sorted(str(p) for p in SAMPLE.glob("*.csv")), log=lambda *_: None)
    assert {s: (v["rows"], v["clicks"], v["conversions"]) for s, v in counts.items()} == EXPECTED

    features.run(spark, cfg, list(days.values()), log=lambda *_: None)
    ex = read_delta(spark, cfg.lakehouse.path("examples"))
    got = {
        r.dt: (r.n, r.clicks, r.convs)
        for r in ex.groupBy("dt")
        .agg(F.count(F.lit(1)).alias("n"), F.sum("click").alias("clicks"), F.sum("conversion").alias("convs"))
        .collect()
    }
    assert got == {days[s]: e for s, e in EXPECTED.items()}
    assert dict(ex.dtypes)["f109_14"] == "array<int>" and dict(ex.dtypes)["f205"] == "int"

    cfg.train.train_start = cfg.train.train_end = days["train"]
    cfg.train.eval_dates = [days["val"], days["test"]]
    for kind in ("naive", "esmm"):
        cfg.model.kind = kind
        r = train(cfg)
        assert r.total_samples == 2 * 100 and r.metrics["rows"] == 100
        assert (r.metrics["clicks"], r.metrics["conversions"]) == (5, 2)
        assert 0.0 <= r.metrics["ctcvr_auc"] <= 1.0

    rows = score.run(spark, cfg, days["test"], model_id=r.model_id)
    scores = read_delta(spark, cfg.lakehouse.path("scores")).where(F.col("dt") == days["test"])
    assert scores.count() == 50 and scores.where("pctr IS NULL OR pctcvr > pctr").count() == 0
    assert (rows.scored, rows.model_id, sum(rows.quarantined.values())) == (50, r.model_id, 0)
