"""train() with each ``train.delayed_feedback`` on a window whose newest labels are as of the
next midnight, and evaluation on a day whose labels are not mature (it used to crash in the
calibration report). The examples are written by delta-rs: the trainer's real Petastorm path."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
from helpers.examples_data import TINY_OVERRIDES, TINY_SPEC

from esmm.config.loader import load_config
from esmm.training.trainer import train

pytestmark = pytest.mark.integration  # whole training runs

MATURE = [f"2026-10-{d:02d}" for d in range(20, 32)]  # the delay curve's days
FRESH = ["2026-11-01", "2026-11-02", "2026-11-03"]
AS_OF = dt.datetime(2026, 11, 4, tzinfo=dt.timezone.utc).timestamp()  # the midnight after FRESH
HORIZON_S = 3 * 86400
ROWS = 500


def write_delayed_examples(path: str, seed: int = 0) -> None:
    """Examples with conversions that arrive with a delay (log-normal, median 6 h, at most
    2 days): a conversion counts only once clicked ts + delay <= as-of; a row is mature once
    as-of >= ts + 3 days."""
    import pyarrow as pa
    from deltalake import write_deltalake

    rng = np.random.default_rng(seed)
    dates = MATURE + FRESH
    n = len(dates) * ROWS
    day0 = np.array([dt.datetime.fromisoformat(d + "T00:00:00+00:00").timestamp() for d in dates])
    ts = np.repeat(day0, ROWS) + rng.uniform(0, 86400, n)
    a = (np.arange(n) * 7 % 49 + 1).astype("int32")
    b = (np.arange(n) * 13 % 19 + 1).astype("int32")
    click = rng.random(n) < np.where(a % 3 == 0, 0.5, 0.2)
    click_ts = ts + rng.uniform(0, 600, n)
    delay = np.minimum(np.exp(rng.normal(np.log(6 * 3600), 1.0, n)), 2 * 86400)
    converts = click & (rng.random(n) < np.where(b % 2 == 0, 0.6, 0.2))
    seen = converts & (click_ts + delay <= AS_OF)
    table = pa.table(
        {
            "impression_id": [f"imp-{i}" for i in range(n)],
            "dt": np.repeat(dates, ROWS).tolist(),
            "click": click.astype("int32"),
            "conversion": seen.astype("int32"),
            "label_mature": AS_OF >= ts + HORIZON_S,
            "click_elapsed_s": pa.array(np.where(click, AS_OF - click_ts, np.nan), from_pandas=True),
            "conversion_delay_s": pa.array(np.where(seen, delay, np.nan), from_pandas=True),
            "a": a,
            "b": b,
            "x": rng.random(n).astype("float32"),
            "feature_mapping_id": [TINY_SPEC.mapping_id] * n,
        }
    )
    write_deltalake(path, table, partition_by=["dt"])


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("delayed")
    write_delayed_examples(str(root / "curated" / "examples"))
    return root


def make(root: Path, method: str, start: str, end: str, *extra: str):
    return load_config(
        overrides=[
            f"lakehouse.root={root}",
            *TINY_OVERRIDES,
            f"train.delayed_feedback={method}",
            f"train.train_start={start}",
            f"train.train_end={end}",
            f"train.eval_dates=[{FRESH[-1]}]",
            "train.device=cpu",
            "train.torch_threads=1",
            "train.resume=false",
            f"train.checkpoint_dir={root / 'ck' / method}",
            *extra,
        ]
    )


def _meta(result) -> dict:
    return json.loads((Path(result.artifact_dir) / "meta.json").read_text())


@pytest.mark.parametrize("method", ["vanilla", "dfm", "esdfm"])
def test_fresh_window_trains_with_every_method_and_evaluates_an_immature_day(lake, method):
    r = train(make(lake, method, FRESH[0], FRESH[-1]))
    assert r.samples == len(FRESH) * ROWS  # every row of the window: none is mature
    meta = _meta(r)
    assert meta["metrics"]["eval_label_mature_share"] == 0.0
    assert meta["train"]["delayed_feedback"] == method
    curve = meta["delay_curve"]
    if method == "vanilla":
        assert curve is None
    else:
        # fitted on the mature conversions of the 28 days up to train_end (October's days here)
        assert curve["conversions"] > 100 and curve["dates"] == ["2026-10-07..2026-11-03"]
        assert 3 * 3600 < curve["median_s"] < 12 * 3600  # the world's median is 6 h
        assert curve["max_s"] <= 2 * 86400 + 1


def test_wait_evaluates_an_immature_day_without_crashing(lake, capsys):
    """The bug: ``esmm train --eval-date D`` with an immature D raised CalibrationError
    ("no label-mature row on [D]") after training, even with no calibration.dates."""
    r = train(make(lake, "wait", MATURE[0], MATURE[-1]))
    assert r.samples == len(MATURE) * ROWS
    metrics = _meta(r)["metrics"]
    assert metrics["eval_label_mature_share"] == 0.0 and metrics["rows"] == ROWS
    said = capsys.readouterr()
    assert f"evaluation on {FRESH[-1]}: no label is mature yet" in said.out + said.err


def test_a_delay_method_without_mature_conversions_says_how_to_fix_it(lake):
    with pytest.raises(ValueError, match="train.delay_fit_days"):
        train(make(lake, "dfm", FRESH[0], FRESH[-1], "train.delay_fit_days=3"))
