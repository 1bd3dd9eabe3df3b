"""The package surface: ``esmm`` re-exports the functions a user calls, lazily, and one home
per shared rule (atomic files, the UTC clock, the trainer's JSON result)."""

import json
import subprocess
import sys

import pytest

import esmm
from esmm.training.result import TrainResult
from esmm.util.files import atomic_write_json, atomic_write_text


def test_import_esmm_starts_neither_torch_nor_spark():
    code = "import sys, esmm; print(any(m in sys.modules for m in ('torch', 'pyspark')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_reexports_are_the_library_functions():
    from esmm.config.loader import load_config
    from pipelines.scoring.job import run

    assert esmm.load_config is load_config and esmm.run_scoring is run
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        esmm.nope  # noqa: B018


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "sub" / "a.json"
    atomic_write_json(p, {"x": 1.5})
    atomic_write_text(p, '{"x": 2}')
    assert json.loads(p.read_text()) == {"x": 2}
    assert sorted(f.name for f in p.parent.iterdir()) == ["a.json"]


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_text(p, "old")
    with pytest.raises(TypeError):
        atomic_write_json(p, {"x": object()}, default=None)
    assert p.read_text() == "old" and sorted(f.name for f in tmp_path.iterdir()) == ["a.json"]


def test_train_result_json_round_trip_and_a_foreign_file(tmp_path):
    r = TrainResult(
        rank=0,
        world_size=2,
        model_id="m-1",
        artifact_dir="/a",
        examples_version=3,
        steps=10,
        samples=500,
        seconds=1.5,
        samples_per_s=333.3,
        resumed_from_step=0,
        metrics={"ctcvr_auc": 0.7},
        total_samples=1000,
        history=[{"step": 1.0}],
    )
    back = TrainResult.read_json(r.write_json(tmp_path / "r.json"))
    assert back == TrainResult(**{**r.__dict__, "history": []})  # the history stays in losses.json
    (tmp_path / "other.json").write_text('{"model_id": "m"}')
    with pytest.raises(ValueError, match=r"other.json: not a training result \(missing \['artifact_dir'"):
        TrainResult.read_json(tmp_path / "other.json")
