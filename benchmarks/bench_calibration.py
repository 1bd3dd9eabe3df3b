"""Raw vs calibrated scores on the next day, per model kind and seed (docs/model.md, Calibration).

    python benchmarks/bench_calibration.py LAKEHOUSE_ROOT SEEDS KINDS [TRAIN_DAYS] [OUT.jsonl] [EPOCHS]

LAKEHOUSE_ROOT holds a 7-day world with ``curated/examples`` (all labels mature) and
``sim/truth``, e.g. one prepared by ``esmm bench quality --cvr 0.02``. Days 1..5 train
(the last TRAIN_DAYS of them), day 6 is the calibration day, day 7 the next day measured.
Models and the registry go to ``<root>/models-measure`` and ``<root>/reg-measure``.
Prints (and appends to OUT) one JSON line per model: the trainer's calibration metrics
(``*_raw`` / ``*_cal`` against the next day's labels) and the same against ``sim/truth``.
"""
import json, sys, time, math
import numpy as np
from deltalake import DeltaTable
from esmm.config.loader import load_config
from esmm.training.trainer import train
from esmm.registry import artifacts as registry
from esmm.calibration import maps as calibration
from esmm.data.examples import resolve_snapshot, read_arrow
from esmm.evaluation.metrics import predict
from esmm.calibration.metrics import field_rce, pcoc

def main(argv: list[str]) -> None:
    root, seeds, kinds = argv[1], int(argv[2]), argv[3].split(",")
    train_days = int(argv[4]) if len(argv) > 4 else 4
    out_path = argv[5] if len(argv) > 5 else "/tmp/calib/measure.jsonl"
    epochs = int(argv[6]) if len(argv) > 6 else 2
    base = load_config([], [f"lakehouse.root={root}", "generate.days=7", "generate.cvr=0.02"])
    dates = base.generate.dates
    train_dates, cal, nxt = dates[5 - train_days:5], dates[5], dates[6]
    truth = DeltaTable(base.lakehouse.path("truth")).to_pyarrow_table(
        partitions=[("dt", "=", nxt)], columns=["impression_id", "true_ctr", "true_cvr"]).to_pandas()
    for seed in range(seeds):
        for kind in kinds:
            t0 = time.time()
            cfg = load_config([], [f"lakehouse.root={root}", f"model.kind={kind}", f"train.seed={1000 + seed}",
                                   f"train.train_start={train_dates[0]}", f"train.train_end={train_dates[-1]}",
                                   f"train.eval_dates=[{nxt}]", f"calibration.dates=[{cal}]", f"train.epochs={epochs}",
                                   "train.resume=false", "train.progress=false", "train.torch_threads=1",
                                   "train.reader_workers=1", f"lakehouse.tables.registry={root}/reg-measure",
                                   f"lakehouse.tables.models={root}/models-measure"])
            r = train(cfg)
            model, meta = registry.load_model(r.artifact_dir)
            maps = calibration.load(r.artifact_dir, r.model_id)
            spec = registry.spec_of(meta)
            snap = resolve_snapshot(cfg.lakehouse.path("examples"), [nxt], r.examples_version)
            cat_names = [f.name for f in spec.categorical]; num_names = [f.name for f in spec.numeric]
            df = read_arrow(snap, ["impression_id", "click", "conversion", "label_mature", *cat_names, *num_names],
                            filter_mature=True).to_pandas()
            pred = predict(model, df[cat_names].to_numpy(np.int64), df[num_names].to_numpy(np.float32))
            pos = df["position"].to_numpy(np.int64)
            c_ctr, c_cvr, c_ctcvr = calibration.apply(maps, pred["pctr"], pred["pctcvr"], {"position": pos})
            j = df[["impression_id"]].assign(_r=np.arange(len(df))).merge(truth, on="impression_id")
            rows = j["_r"].to_numpy(); t_ctcvr = (j["true_ctr"] * j["true_cvr"]).to_numpy()
            t_cvr = j["true_cvr"].to_numpy(); t_ctr = j["true_ctr"].to_numpy()
            y = (df["click"] * df["conversion"]).to_numpy(np.float64)
            res = {"kind": kind, "seed": seed, "model_id": r.model_id, "secs": round(time.time() - t0),
                   "rows": len(df), "conv_next": float(y.sum()), "truth_cov": len(rows) / len(df),
                   **{k: r.metrics[k] for k in r.metrics if k.startswith(("ctcvr_", "ctr_")) and k.endswith(("_raw", "_cal"))},
                   "ctcvr_auc_raw": r.metrics.get("ctcvr_auc"),
                   "truth_pcoc_ctcvr_raw": pcoc(pred["pctcvr"][rows], t_ctcvr),
                   "truth_pcoc_ctcvr_cal": pcoc(c_ctcvr[rows], t_ctcvr),
                   "truth_pcoc_ctr_raw": pcoc(pred["pctr"][rows], t_ctr),
                   "truth_pcoc_ctr_cal": pcoc(c_ctr[rows], t_ctr),
                   "truth_pcvr_ratio_raw": float(pred["pcvr"][rows].mean() / t_cvr.mean()),
                   "truth_pcvr_ratio_cal": float(c_cvr[rows].mean() / t_cvr.mean()),
                   "truth_frce_pos_raw": field_rce(pred["pctcvr"][rows], t_ctcvr, pos[rows]),
                   "truth_frce_pos_cal": field_rce(c_ctcvr[rows], t_ctcvr, pos[rows])}
            print(json.dumps(res), flush=True)
            open(out_path, "a").write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main(sys.argv)
