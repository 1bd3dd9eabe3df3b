"""Raw vs calibrated scores on the next day, per model kind and seed (docs/model.md, Calibration).

    python benchmarks/bench_calibration.py LAKEHOUSE_ROOT SEEDS KINDS [TRAIN_DAYS] [OUT.jsonl] [EPOCHS]

LAKEHOUSE_ROOT holds a 7-day world with ``curated/examples`` (all labels mature) and
``sim/truth``, e.g. one prepared by ``esmm bench quality --cvr 0.02``. Days 1..5 train
(the last TRAIN_DAYS of them), day 6 is the calibration day, day 7 the next day measured.
Models and the registry go to ``<root>/models-measure`` and ``<root>/reg-measure``.
Prints (and appends to OUT) one JSON line per model: the trainer's calibration metrics
(``*_raw`` / ``*_cal`` against the next day's labels) and
:func:`benchmarks.calibration_truth.truth_calibration` against ``sim/truth``.
"""

import json
import sys
import time

from benchmarks.calibration_truth import truth_calibration
from esmm.config.loader import load_config
from esmm.training.trainer import train


def main(argv: list[str]) -> None:
    root, seeds, kinds = argv[1], int(argv[2]), argv[3].split(",")
    train_days = int(argv[4]) if len(argv) > 4 else 4
    out_path = argv[5] if len(argv) > 5 else "/tmp/calib/measure.jsonl"
    epochs = int(argv[6]) if len(argv) > 6 else 2
    base = load_config([], [f"lakehouse.root={root}", "generate.days=7", "generate.cvr=0.02"])
    dates = base.generate.dates
    train_dates, cal, nxt = dates[5 - train_days : 5], dates[5], dates[6]
    for seed in range(seeds):
        for kind in kinds:
            t0 = time.time()
            cfg = load_config(
                [],
                [
                    f"lakehouse.root={root}",
                    f"model.kind={kind}",
                    f"train.seed={1000 + seed}",
                    f"train.train_start={train_dates[0]}",
                    f"train.train_end={train_dates[-1]}",
                    f"train.eval_dates=[{nxt}]",
                    f"calibration.dates=[{cal}]",
                    f"train.epochs={epochs}",
                    "train.resume=false",
                    "train.progress=false",
                    "train.torch_threads=1",
                    "train.reader_workers=1",
                    f"lakehouse.tables.registry={root}/reg-measure",
                    f"lakehouse.tables.models={root}/models-measure",
                ],
            )
            r = train(cfg)
            # Against sim/truth: the one definition the quality bench also uses.
            truth = truth_calibration(
                r.artifact_dir,
                r.model_id,
                cfg.lakehouse.path("examples"),
                r.examples_version,
                cfg.lakehouse.path("truth"),
                nxt,
            )
            res = {
                "kind": kind,
                "seed": seed,
                "model_id": r.model_id,
                "secs": round(time.time() - t0),
                **{
                    k: r.metrics[k]
                    for k in r.metrics
                    if k.startswith(("ctcvr_", "ctr_")) and k.endswith(("_raw", "_cal"))
                },
                "ctcvr_auc_raw": r.metrics.get("ctcvr_auc"),
                **truth,
            }
            print(json.dumps(res), flush=True)
            with open(out_path, "a") as f:
                f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main(sys.argv)
