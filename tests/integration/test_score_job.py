"""The scoring job end to end on a hand-made candidates table: what lands in
serving/scores and curated/quarantine, in both write modes, and the refusals.

Real Delta tables, a real (small, randomly initialised) network run inside the
Python workers; its scores are compared with the same network run in memory.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.scoring_data import (
    BAD,
    DAY,
    EXPECT_QUARANTINE,
    GOOD,
    OTHER_DAY,
    SCHEMA,
    SPEC,
    _candidates,
    _model,
    _quarantine,
    _scores,
)

from esmm.config.schema import CategoricalField, FeatureSpec
from pipelines.features.job import encode_features, feature_names
from pipelines.scoring import job as score
from pipelines.scoring.model import ScoringInputError, resolve_model

pytestmark = pytest.mark.integration  # whole jobs on real tables


@pytest.mark.parametrize("mode", ["replace", "merge"])
def test_score_job_scores_each_key_once_and_quarantines_the_rest(spark, make_cfg, tmp_path, mode):
    cand = str(tmp_path / "candidates")
    _candidates(spark, cand, GOOD + BAD + OTHER_DAY)
    cfg = make_cfg(f"score.candidates={cand}", f"score.write_mode={mode}", "score.batch_size=7")
    net, model = _model(cfg)

    rep = score.run(spark, cfg, DAY, model=model, log=lambda m: None)
    assert rep.scored == len(GOOD) and rep.quarantined == EXPECT_QUARANTINE, rep

    got = _scores(spark, cfg)
    assert sorted(got) == sorted(r[0] for r in GOOD)
    # The same network in memory, on the same rows encoded by the same mapping.
    enc = encode_features(spark.createDataFrame(GOOD, SCHEMA), SPEC).toPandas().set_index("impression_id")
    cat_names, num_names = feature_names(SPEC)
    with torch.inference_mode():
        ref = net(
            torch.from_numpy(enc[cat_names].to_numpy(np.int64)), torch.from_numpy(enc[num_names].to_numpy(np.float32))
        )
    for i, key in enumerate(enc.index):
        r = got[key]
        assert (r["pctr"], r["pcvr"]) == pytest.approx((float(ref["pctr"][i]), float(ref["pcvr"][i])), rel=1e-5)
        assert math.isclose(r["pctcvr"], r["pctr"] * r["pcvr"], rel_tol=1e-5)
        assert r["model_id"] == "m-test" and r["dt"] == DAY
    missing_id = [rid for rid, reason in _quarantine(spark, cfg) if reason == "missing_key"]
    assert _quarantine(spark, cfg) == sorted(
        [
            ("dupkey", "conflicting_duplicate_key"),
            ("dupkey", "conflicting_duplicate_key"),
            ("imp_cheap", "unparseable:price"),
        ]
        + [(rid, "missing_key") for rid in missing_id]
    )
    assert len(missing_id) == 2 and all(rid.startswith("sha256:") for rid in missing_id)

    # Again: the day is replaced, not appended to, in both tables.
    before = _scores(spark, cfg)
    rep2 = score.run(spark, cfg, DAY, model=model, log=lambda m: None)
    assert (rep2.scored, rep2.quarantined) == (rep.scored, rep.quarantined)
    after = _scores(spark, cfg)
    assert sorted(after) == sorted(before)
    # _scores keys by impression id, which would hide appended copies: count the rows too.
    day_rows = spark.read.format("delta").load(cfg.lakehouse.path("scores")).where(f"dt = '{DAY}'").count()
    assert day_rows == len(GOOD)
    assert all(after[k]["pctr"] == before[k]["pctr"] for k in after)
    assert len(_quarantine(spark, cfg)) == sum(EXPECT_QUARANTINE.values())


@pytest.mark.parametrize(
    "bad, expect",
    [
        ([], {}),
        ([BAD[-1]], {"unparseable:price": 1}),
        (BAD[3:], {"missing_key": 2, "unparseable:price": 1}),  # two NULL-key copies quarantine once
    ],
    ids=["clean", "unparseable", "blank-keys"],
)
def test_score_job_without_repeated_keys(spark, make_cfg, tmp_path, bad, expect):
    # No key repeats: the counts come from the check's observation, not from a recount.
    cand = str(tmp_path / "candidates")
    _candidates(spark, cand, GOOD + bad)
    cfg = make_cfg(f"score.candidates={cand}")
    _, model = _model(cfg)
    rep = score.run(spark, cfg, DAY, model=model, log=lambda m: None)
    assert (rep.scored, rep.quarantined) == (len(GOOD), expect)
    assert sorted(_scores(spark, cfg)) == sorted(r[0] for r in GOOD)
    assert len(_quarantine(spark, cfg)) == sum(expect.values())


def test_score_job_refuses_candidates_without_the_models_columns(spark, make_cfg, tmp_path):
    cand = str(tmp_path / "candidates")
    _candidates(spark, cand, GOOD)
    cfg = make_cfg(f"score.candidates={cand}")
    other = FeatureSpec(categorical=[CategoricalField("item_shop", buckets=8)], numeric=[])
    _, model = _model(cfg, spec=other)
    with pytest.raises(ScoringInputError, match=r"raw feature column\(s\) \['item_shop'\]"):
        score.run(spark, cfg, DAY, model=model, log=lambda m: None)


def test_score_job_refuses_a_model_whose_spec_is_not_its_mapping(spark, make_cfg, tmp_path):
    from pathlib import Path

    from esmm.registry import artifacts as registry

    cfg = make_cfg()
    net, model = _model(cfg)
    # Not in the registry: --model MODEL_ID then looks in the models folder.
    registry.save_artifact(
        Path(cfg.lakehouse.path("models")) / "m-test", net, {**model.meta, "feature_mapping_id": "fm-other"}
    )
    with pytest.raises(ScoringInputError, match=r"hashes to .* but it was trained on feature mapping fm-other"):
        resolve_model(cfg, "m-test")
