"""Evaluation and calibration score a day in Arrow batches: no whole-day [n, W] matrix."""

import numpy as np
import pyarrow as pa
import pytest
import torch
from deltalake import write_deltalake

from esmm.calibration import fit as calibration_fit
from esmm.config.schema import CategoricalField, FeatureSpec, ModelConfig, NumericField
from esmm.data.examples import pack_categorical, read_arrow, resolve_snapshot
from esmm.evaluation import metrics as ev
from esmm.evaluation.predictions import load_predictions
from esmm.model.network import build_model

SPEC = FeatureSpec(
    categorical=[
        CategoricalField("a", buckets=5),
        CategoricalField("b", buckets=7, multi=True, pooling="sum", max_len=3),
        CategoricalField("c", buckets=4, multi=True, pooling="mean", max_len=2),
    ],
    numeric=[NumericField("x")],
)
DAY, BATCH = "2018-01-03", 8


def _rows(lo, hi):
    rng = np.random.default_rng(lo)
    n = hi - lo
    click = rng.integers(0, 2, n)
    return pa.table(
        {
            "impression_id": [f"r{i}" for i in range(lo, hi)],
            "dt": [DAY] * n,
            "click": pa.array(click, pa.int32()),
            "conversion": pa.array(click * rng.integers(0, 2, n), pa.int32()),
            "label_mature": pa.array(np.arange(lo, hi) % 7 != 3),  # a few immature rows, left out
            "a": pa.array(rng.integers(0, 5, n), pa.int32()),
            "b": pa.array([rng.integers(0, 7, k).tolist() for k in rng.integers(1, 6, n)], pa.list_(pa.int32())),
            "c": pa.array([rng.integers(0, 4, k).tolist() for k in rng.integers(1, 4, n)], pa.list_(pa.int32())),
            "x": pa.array(rng.normal(size=n), pa.float32()),
        }
    )


@pytest.fixture
def day(tmp_path, monkeypatch):
    """A two-file multi-valued day of 60 rows, a model, and the row counts pack_categorical saw."""
    path = str(tmp_path / "examples")
    write_deltalake(path, _rows(0, 35), partition_by=["dt"])
    write_deltalake(path, _rows(35, 60), partition_by=["dt"], mode="append")
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="esmm", embedding_dim=3, tower=[4], dropout=0.0), SPEC)
    packed: list[int] = []

    def spy(columns, spec):
        packed.append(len(next(iter(columns.values()))))
        return pack_categorical(columns, spec)

    monkeypatch.setattr(ev, "pack_categorical", spy)
    return resolve_snapshot(path, [DAY]), model, packed


def _whole_day(model, snap):
    """The former path: the whole day's table packed into one [n, W] matrix at once."""
    t = read_arrow(
        snap, ["impression_id", "click", "conversion", "label_mature", "a", "b", "c", "x"], filter_mature=True
    )
    cat = pack_categorical({f: t.column(f) for f in "abc"}, SPEC)
    pred = ev.predict(model, cat, t.column("x").to_numpy()[:, None].astype(np.float32))
    return t, pred


def test_evaluate_streams_batches_and_matches_the_whole_day_path(day, tmp_path):
    snap, model, packed = day
    metrics = ev.evaluate(model, snap, SPEC, batch_size=BATCH, predictions_path=tmp_path / "p.npz")
    t, old = _whole_day(model, snap)
    n = t.num_rows
    assert n == 60 - len([i for i in range(60) if i % 7 == 3])
    assert max(packed) <= BATCH and sum(packed) == n and len(packed) >= n // BATCH
    got = load_predictions(tmp_path / "p.npz")
    order = {r: i for i, r in enumerate(got["impression_id"])}
    idx = np.array([order[r] for r in t.column("impression_id").to_pylist()])
    for k in ("pctr", "pcvr", "pctcvr"):
        np.testing.assert_allclose(got[k][idx], old[k], rtol=0, atol=1e-6)
    click, conv = t.column("click").to_numpy(), t.column("conversion").to_numpy()
    np.testing.assert_array_equal(got["click"][idx], click)
    expected = ev.compute_metrics(old, click, conv)
    assert metrics["rows"] == n and metrics["clicks"] == click.sum()
    assert metrics["ctcvr_auc"] == pytest.approx(expected["ctcvr_auc"], abs=1e-9)
    assert metrics["cvr_auc_clicked"] == pytest.approx(expected["cvr_auc_clicked"], abs=1e-9)


def test_calibration_predictions_stream_batches_and_match_the_whole_day_path(day):
    snap, model, packed = day
    pred, click, conv, values = calibration_fit.predict_snapshot(model, snap, SPEC, ["a"], batch_size=BATCH)
    t, old = _whole_day(model, snap)
    assert max(packed) <= BATCH and sum(packed) == t.num_rows
    # Same file order as the whole-table read, so rows line up one to one.
    np.testing.assert_array_equal(values["a"], t.column("a").to_numpy())
    np.testing.assert_array_equal(click, t.column("click").to_numpy())
    for k in ("pctr", "pcvr", "pctcvr"):
        np.testing.assert_allclose(pred[k], old[k], rtol=0, atol=1e-6)
