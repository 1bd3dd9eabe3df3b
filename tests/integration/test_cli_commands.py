"""Every command of the README's job table, called through ``main()`` in its documented form.

One tiny lakehouse (3 days x 2,500 impressions, a tiny model) is built by the commands
themselves; each stage is a module fixture that runs one documented command line on top
of the previous stage, and a test per command checks what it did:

    generate -> summary -> labels --date / --start --end -> features --start --end
    -> train --model --train-start --train-end --eval-date -> models -> promote ID
    -> score --date D --model ID -> nightly --date D (training under torchrun -m jobs.cli)
    -> report --date D -> bench quality --skip-prepare

Label windows are short (labels are final after one day) so that a 3-day world has a
training day, a mature evaluation day and a run date.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from esmm.config.loader import load_config
from esmm.registry import artifacts as registry
from jobs.cli import main
from pipelines.io.delta import read_delta
from pipelines.nightly.runs import RunsTable

pytestmark = [pytest.mark.slow, pytest.mark.integration]
D1, D2, D3 = "2026-11-01", "2026-11-02", "2026-11-03"
OVERRIDES = [
    "generate.n_users=2000",
    "generate.n_items=500",
    "generate.cvr=0.3",
    "labels.click_window=1h",
    "labels.attribution_window=12h",
    "labels.max_lateness=1h",
    "labels.max_bad_fraction=0.05",
    "nightly.train_days=1",
    "nightly.train_launcher=torchrun",
    "nightly.torchrun_nproc=2",
    "model.embedding_dim=4",
    "model.tower=[16]",
    "train.batch_size=256",
    "train.epochs=1",
    "train.reader_workers=1",
    "train.shuffle_buffer=1000",
    "train.device=cpu",
    "train.torch_threads=1",
    "train.progress=false",
    "score.batch_size=500",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli") / "lakehouse"


@pytest.fixture(scope="module")
def esmm(root):
    """``esmm(*argv)`` -> (exit code, stdout) of ``main(argv + --set <the tiny world>)``."""
    sets = [x for o in [f"lakehouse.root={root}", "generate.start_date=" + D1, *OVERRIDES] for x in ("--set", o)]

    def _run(*argv: str) -> tuple[int, str]:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main([*argv, *sets])
        return rc, buf.getvalue()

    return _run


@pytest.fixture(scope="module")
def cfg(root):
    return load_config(overrides=[f"lakehouse.root={root}", "generate.start_date=" + D1, *OVERRIDES])


@pytest.fixture(scope="module")
def generated(spark, esmm):
    return esmm("generate", "--days", "3", "--impressions-per-day", "2500")


@pytest.fixture(scope="module")
def labelled(generated, esmm):
    one = esmm("labels", "--date", D1)
    rng = esmm("labels", "--start", D1, "--end", D3, "--as-of", "2026-11-05")
    return one, rng


@pytest.fixture(scope="module")
def featured(labelled, esmm):
    return esmm("features", "--start", D1, "--end", D3)


@pytest.fixture(scope="module")
def trained(featured, esmm, root):
    result = root.parent / "train-result.json"
    rc, out = esmm(
        "train",
        "--model",
        "esmm",
        "--train-start",
        D1,
        "--train-end",
        D2,
        "--eval-date",
        D3,
        "--result-json",
        str(result),
    )
    return rc, out, json.loads(result.read_text()) if result.exists() else None


@pytest.fixture(scope="module")
def promoted(trained, esmm):
    return esmm("promote", trained[2]["model_id"])


@pytest.fixture(scope="module")
def scored(promoted, esmm, trained):
    return esmm("score", "--date", D3, "--model", trained[2]["model_id"])


@pytest.fixture(scope="module")
def night(scored, esmm):
    return esmm("nightly", "--date", D3)


def test_generate(spark, cfg, generated):
    rc, out = generated
    assert rc == 0 and "generated 7,500 impressions over 3 day(s)" in out
    dts = {r[0] for r in read_delta(spark, cfg.lakehouse.path("impressions")).select("dt").distinct().collect()}
    assert {D1, D2, D3} <= dts


def test_summary(generated, esmm):
    rc, out = esmm("summary")
    assert rc == 0 and all(d in out for d in (D1, D2, D3))


def test_labels_one_date_and_a_range(spark, cfg, labelled):
    (rc1, _), (rc2, _) = labelled
    assert (rc1, rc2) == (0, 0)
    lab = read_delta(spark, cfg.lakehouse.path("labels"))
    assert sorted(r[0] for r in lab.select("dt").distinct().collect()) == [D1, D2, D3]


def test_features(spark, cfg, featured):
    assert featured[0] == 0
    ex = read_delta(spark, cfg.lakehouse.path("examples"))
    assert sorted(r[0] for r in ex.select("dt").distinct().collect()) == [D1, D2, D3]


def test_train_registers_a_candidate_and_reports_its_id(cfg, trained):
    rc, out, result = trained
    assert rc == 0 and result is not None and result["model_id"]
    assert f"model {result['model_id']} ->" in out
    row = {r["model_id"]: r for r in registry.list_models(cfg.lakehouse.path("registry"))}[result["model_id"]]
    assert row["kind"] == "esmm" and row["status"] == "candidate"
    assert (row["train_start"], row["train_end"]) == (D1, D2)
    assert result["metrics"] == pytest.approx(registry.read_meta(result["artifact_dir"])["metrics"], nan_ok=True)


def test_models_lists_it(trained, esmm):
    rc, out = esmm("models")
    assert rc == 0 and trained[2]["model_id"] in out


def test_promote(cfg, trained, promoted):
    rc, out = promoted
    assert rc == 0 and out.strip() == f"{trained[2]['model_id']} is the champion"
    assert registry.champion(cfg.lakehouse.path("registry"))["model_id"] == trained[2]["model_id"]


def test_score_with_a_registry_id(spark, cfg, trained, scored):
    assert scored[0] == 0
    rows = read_delta(spark, cfg.lakehouse.path("scores")).where(F.col("dt") == D3)
    imps = read_delta(spark, cfg.lakehouse.path("impressions")).where(F.col("dt") == D3)
    assert rows.count() == imps.select("impression_id").distinct().count() > 0
    assert {r[0] for r in rows.select("model_id").distinct().collect()} == {trained[2]["model_id"]}


def test_unknown_ids_are_refused_with_exit_2(scored, esmm, capsys):
    assert esmm("score", "--date", D3, "--model", "no-such-model")[0] == 2
    assert "no-such-model" in capsys.readouterr().err
    assert esmm("promote", "no-such-model")[0] == 2
    assert "no model 'no-such-model'" in capsys.readouterr().err


def test_nightly_trains_under_torchrun(cfg, trained, night):
    rc, out = night
    assert rc == 0 and f"esmm nightly {D3}: ok" in out
    hist = RunsTable(cfg.lakehouse.path("runs")).history(D3)
    assert {s: h["status"] for s, h in hist.items()} == {
        s: "succeeded" for s in ("labels", "features", "train", "evaluate", "gate", "score", "report")
    }
    new_id = hist["train"]["outputs"]["model_id"]  # reported by rank 0's --result-json
    models = {r["model_id"]: r for r in registry.list_models(cfg.lakehouse.path("registry"))}
    assert new_id != trained[2]["model_id"] and new_id in models
    assert (models[new_id]["train_start"], models[new_id]["train_end"]) == (D1, D1)
    assert json.loads(Path(models[new_id]["artifact_dir"], "meta.json").read_text())["training"]["world_size"] == 2


def test_report(night, esmm):
    rc, out = esmm("report", "--date", D3)
    page = Path(out.strip().splitlines()[-1])
    assert rc == 0 and page.name == "index.html" and page.exists()


def test_bench_quality(night, esmm, root):
    # The bench writes its own world (direct from the simulator) into this lakehouse: the last test.
    rc, out = esmm(
        "bench",
        "quality",
        "--size",
        "tiny",
        "--seeds",
        "1",
        "--models",
        "naive",
        "--epochs",
        "1",
        "--out",
        str(root.parent / "bench"),
    )
    assert rc == 0 and "bench quality: size=tiny" in out and "naive" in out
    assert (root.parent / "bench" / "bench_quality.json").exists()
