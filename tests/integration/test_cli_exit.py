"""`esmm promote` and `esmm score` as a scheduler runs them (promote 12 times: the abort at exit
it guards against came 1 in 3-8; score 3 times): a fresh process, no terminal, stdin closed.

Each call must print its line and exit 0; an abort at interpreter exit (a native thread
alive at shutdown) shows up here as exit 134 with a `terminate called ...` line.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esmm.registry import artifacts as registry

pytestmark = pytest.mark.integration  # several fresh interpreters

REPO = Path(__file__).resolve().parents[2]


def _artifact(root: Path, model_id: str) -> Path:
    """A registrable artifact: the registry reads meta.json only."""
    d = root / "models" / "artifacts" / model_id
    d.mkdir(parents=True)
    (d / "meta.json").write_text(
        json.dumps(
            {
                "format": registry.META_FORMAT,
                "model_id": model_id,
                "kind": "esmm",
                "feature_mapping_id": "f",
                "examples": {"version": 0},
                "window": {"train_start": "2026-11-01", "train_end": "2026-11-02", "eval_dates": ["2026-11-03"]},
                "metrics": {},
            }
        )
    )
    return d


def test_promote_repeatedly_without_a_terminal(tmp_path):
    root = tmp_path / "lakehouse"
    reg = str(root / "models" / "registry")
    ids = ["m-a", "m-b"]
    for m in ids:
        registry.register(reg, _artifact(root, m))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    for i in range(12):
        m = ids[i % 2]
        p = subprocess.run(
            [sys.executable, "-m", "jobs.cli", "promote", m, "--set", f"lakehouse.root={root}"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=120,
        )
        assert (p.returncode, p.stdout) == (0, f"{m} is the champion\n"), p.stderr[-2000:]
        assert registry.champion(reg)["model_id"] == m


@pytest.mark.slow
def test_score_repeatedly_without_a_terminal(spark, tmp_path):
    """Two scoring runs of one day (the re-run replaces, never adds) and one with an unknown
    model id, which must end with its documented code 2."""
    from helpers.faults_data import DAYS, PER_DAY, save_champion, score_cmd, write_raw_world

    from esmm.config.loader import load_config

    raw = write_raw_world(spark, tmp_path / "raw")
    root = tmp_path / "lakehouse"
    save_champion(load_config(overrides=[f"lakehouse.root={root}"]))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    calls = [(score_cmd(root, raw, DAYS[0]), 0)] * 2
    calls.append(([*score_cmd(root, raw, DAYS[0]), "--model", "nope"], 2))
    for args, code in calls:
        p = subprocess.run(
            [sys.executable, "-m", "jobs.cli", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=900,
        )
        assert p.returncode == code, p.stderr[-3000:]
        assert "terminate called" not in p.stderr
    rows = spark.read.format("delta").load(str(root / "serving" / "scores"))
    assert rows.count() == rows.select("impression_id", "dt").distinct().count() == PER_DAY
