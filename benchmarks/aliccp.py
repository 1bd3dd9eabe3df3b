"""``esmm bench aliccp --data DIR``: the ESMM paper's Ali-CCP experiment (its Table 2), one command.

Steps, all the production jobs:

1. ingest ``DIR`` into ``curated/labels``: the raw release when DIR holds
   ``sample_skeleton_{train,test}.csv`` and ``common_features_{train,test}.csv``
   (:func:`pipelines.ingest.aliccp.run`), else every ``*train*.csv`` / ``*test*.csv`` of the
   processed CSV layout (:func:`pipelines.ingest.aliccp.run_csv`); train -> ``aliccp.train_date``,
   test -> ``aliccp.test_date``;
2. ``pipelines.features.job.run`` for both dates;
3. ``esmm.training.trainer.train`` per model kind and seed: train on the train date, evaluate on the
   test date;
4. print CVR AUC on clicked impressions and CTCVR AUC on all impressions (mean ± sample
   std over seeds, in %) beside the paper's Table 2.

Nothing is downloaded: DIR must already hold the files (README: where to get them).
Run with ``--conf conf/aliccp.yaml`` (the Ali-CCP feature spec).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
from pyspark.sql import SparkSession

from esmm.config.loader import load_config

# Ma et al. 2018, Table 2 (Ali-CCP public dataset): AUC in %.
PAPER = {"BASE": ("66.00", "62.07"), "ESMM": ("68.56 ± 0.37", "65.32 ± 0.49")}
OURS = {"naive": "BASE", "esmm": "ESMM"}


def raw_files(data: Path) -> Optional[dict[str, tuple[Path, Path]]]:
    """{split: (skeleton, common)} when ``data`` holds the raw release, else None."""
    files = {s: (data / f"sample_skeleton_{s}.csv", data / f"common_features_{s}.csv") for s in ("train", "test")}
    return files if all(p.is_file() for pair in files.values() for p in pair) else None


def ingest(spark: SparkSession, cfg, data: Path, log=print) -> None:
    from pipelines.ingest import aliccp

    raw = raw_files(data)
    if raw:
        for split, (skel, common) in raw.items():
            aliccp.run(spark, cfg, str(skel), str(common), split, log=log)
        return
    csvs = [str(p) for p in sorted(data.glob("*.csv")) if aliccp.split_of_or_none(str(p)) in ("train", "test")]
    if not csvs:
        raise FileNotFoundError(
            f"{data}: neither the raw release (sample_skeleton_train.csv, "
            f"common_features_train.csv and the test pair) nor processed "
            f"*train*.csv / *test*.csv files; see README (Ali-CCP) for the download"
        )
    aliccp.run_csv(spark, cfg, csvs, log=log)


def _pct(values: list[float]) -> str:
    v = [100 * x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return "n/a"
    return f"{np.mean(v):.2f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.2f}"


def run(
    spark: Optional[SparkSession],
    conf_files: list[str],
    overrides: list[str],
    data: str,
    models: tuple[str, ...] = ("naive", "esmm", "escm2-ips", "escm2-dr"),
    seeds: int = 3,
    epochs: int = 1,
    skip_prepare: bool = False,
) -> str:
    """Ingest, build examples, train and evaluate; returns the printed table."""
    from esmm.training.trainer import train
    from pipelines.features import job as features
    from pipelines.ingest import aliccp

    cfg = load_config(conf_files, overrides)
    aliccp.field_id(cfg.features.categorical[0])  # fails with the fix unless conf/aliccp.yaml is in use
    train_day, test_day = cfg.aliccp.train_date, cfg.aliccp.test_date
    t0 = time.time()
    if not skip_prepare:
        ingest(spark, cfg, Path(data))
        features.run(spark, cfg, [train_day, test_day])
        print(f"bench aliccp: data ready in {time.time() - t0:.0f}s", flush=True)
    results: dict[str, list[dict[str, float]]] = {m: [] for m in models}
    for seed in range(seeds):
        for kind in models:
            r = train(
                load_config(
                    conf_files,
                    [
                        *overrides,
                        f"model.kind={kind}",
                        f"train.seed={1000 + seed}",
                        f"train.train_start={train_day}",
                        f"train.train_end={train_day}",
                        f"train.eval_dates=[{test_day}]",
                        f"train.epochs={epochs}",
                        "train.resume=false",
                        "train.progress=false",
                    ],
                )
            )
            results[kind].append(r.metrics)
            print(
                f"  seed {seed} {kind:9s} {r.samples:,} rows in {r.seconds:.0f}s: "
                f"cvr_auc_clicked={r.metrics.get('cvr_auc_clicked', math.nan):.4f} "
                f"ctcvr_auc={r.metrics.get('ctcvr_auc', math.nan):.4f}",
                flush=True,
            )
    first = next(iter(results.values()))[0]
    lines = [
        f"bench aliccp: train dt={train_day}, eval dt={test_day} (rows={first.get('rows', 0):,.0f} "
        f"clicks={first.get('clicks', 0):,.0f} conversions={first.get('conversions', 0):,.0f}); "
        f"{seeds} seed(s), {epochs} epoch(s); {time.time() - t0:.0f}s",
        f"{'model':12s} {'CVR AUC (clicked)':>18s} {'CTCVR AUC (all)':>18s}   paper Table 2 (CVR / CTCVR)",
    ]
    for kind, rs in results.items():
        paper = PAPER.get(OURS.get(kind, ""))
        lines.append(
            f"{kind:12s} {_pct([r.get('cvr_auc_clicked') for r in rs]):>18s} "
            f"{_pct([r.get('ctcvr_auc') for r in rs]):>18s}   "
            + (f"{OURS[kind]}: {paper[0]} / {paper[1]}" if paper else "-")
        )
    out = "\n".join(lines)
    print(out, flush=True)
    return out
