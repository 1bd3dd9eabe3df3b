"""ESCM2 ablation on the simulator: which loss settings cut ESMM's entire-space pCVR bias.

Three steps, each a subcommand, so a world is prepared once and reused by every
setting and training seed (what docs/model.md's ablation table was made with)::

    # 1. one world, 7 days x 60k: examples straight from the simulator
    #    (pipelines.sim.examples.write_world; --pipeline full: generate + label + features)
    python benchmarks/ablate_escm2.py prepare --root /tmp/escm2/w42 \\
        --set generate.cvr=0.025 --set generate.seed=42
    # 2. train every setting for every seed on days 1..n-1, evaluate on day n (esmm.training.trainer.train)
    python benchmarks/ablate_escm2.py run --root /tmp/escm2/w42 --set generate.cvr=0.025 \\
        --set generate.seed=42 --seeds 5 --out /tmp/escm2/res.jsonl \\
        --setting "esmm:model.kind=esmm" \\
        --setting "ips-sn:model.kind=escm2-ips;model.ips_normalization=self"
    # 3. the table (mean ± sample std over seeds; paired difference against the baseline)
    python benchmarks/ablate_escm2.py table /tmp/escm2/res.jsonl --baseline esmm

``--set`` overrides go to every step (they must describe the same world in
``prepare`` and ``run``: the generator's settings are read back for the truth).
A setting is ``NAME:key=value;key=value`` (config overrides). ``run`` appends one
JSON line per (setting, seed) to ``--out``: world, seed, setting, the metrics of
:func:`esmm.evaluation.metrics.compute_metrics`, ``mean_true_cvr`` (eval day, all
impressions) and ``pcvr_ratio_all`` = mean pCVR / mean true CVR over all impressions.

``table`` prints, per setting: pCVR/true over all impressions, |mean pCVR - mean
true CVR| (``abs_bias``), entire-space CVR AUC against the truth, CTCVR AUC, each
as mean ± std over (world, seed) runs, and for abs_bias and the AUCs the paired
difference against the baseline on the same (world, seed) with its t statistic
(mean / (std / sqrt(n))).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np

BASE = [
    "train.resume=false",
    "train.progress=false",
    "train.register=false",
    "train.torch_threads=1",
    "train.reader_workers=1",
    "generate.days=7",
    "generate.impressions_per_day=60000",
]


def _cfg(root: str, sets: list[str], extra: list[str] = ()):
    from esmm.config.loader import load_config

    return load_config([], [f"lakehouse.root={root}", *BASE, *sets, *extra])


def cmd_prepare(a: argparse.Namespace) -> None:
    from benchmarks.quality import prepare
    from pipelines.io.session import get_spark
    from pipelines.sim.examples import write_world

    cfg = _cfg(a.root, a.set)
    t0 = time.time()
    spark = get_spark(cfg.spark)
    # direct: examples straight from the simulator (perfect logging, mature labels);
    # full: generate -> label job -> feature job
    counts = write_world(spark, cfg) if a.pipeline == "direct" else prepare(spark, cfg)
    print(f"prepared {a.root} in {time.time() - t0:.0f}s: {counts}", flush=True)


def _parse_setting(s: str) -> tuple[str, list[str]]:
    name, _, body = s.partition(":")
    return name, [kv.strip() for kv in body.split(";") if kv.strip()]


def cmd_run(a: argparse.Namespace) -> None:
    from esmm.evaluation.metrics import read_truth
    from esmm.training.trainer import train

    cfg = _cfg(a.root, a.set)
    dates = cfg.generate.dates
    truth = read_truth(cfg.lakehouse.path("truth"), [dates[-1]])
    mean_true = float(truth["true_cvr"].mean())
    window = [
        f"train.train_start={dates[0]}",
        f"train.train_end={dates[-2]}",
        f"train.eval_dates=[{dates[-1]}]",
        f"train.epochs={a.epochs}",
        f"train.checkpoint_dir={a.root}/ckpt-ablation",
    ]
    for seed in range(a.seed_offset, a.seed_offset + a.seeds):
        for spec in a.setting:
            name, overrides = _parse_setting(spec)
            run_cfg = _cfg(a.root, a.set, [*window, f"train.seed={1000 + seed}", *overrides])
            t0 = time.time()
            r = train(run_cfg)
            m = r.metrics
            ratio = (m["pcvr_bias_all"] + mean_true) / mean_true
            row = {
                "world": a.root,
                "seed": seed,
                "setting": name,
                "overrides": overrides,
                "epochs": a.epochs,
                "mean_true_cvr": mean_true,
                "pcvr_ratio_all": ratio,
                "seconds": time.time() - t0,
                **m,
            }
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"{name:22s} seed {seed}: pcvr/true all {ratio:.3f}  bias {m['pcvr_bias_all']:+.4f}  "
                f"cvr_auc_all {m['cvr_auc_all_truth']:.4f}  ctcvr_auc {m['ctcvr_auc']:.4f}  "
                f"ctr_cal {m['ctr_calibration']:.3f}  ({time.time() - t0:.0f}s)",
                flush=True,
            )


def cmd_ceiling(a: argparse.Namespace) -> None:
    """What the IPS risk can reach with a trained model's pCTR as propensity.

    For a CVR tower that cannot rank (a constant c), the IPS risk's minimiser is
    c = sum_O r / p / sum_O 1 / p, whose expectation over clicks on the evaluation
    day is sum_D ctr cvr / p / sum_D ctr / p (true ctr, cvr from sim/truth). With
    p = true ctr it is mean(cvr) (unbiased); with the model's pCTR it shows how
    much of the selection gap (click-weighted mean cvr / mean cvr) the propensity
    can undo at all. Prints that ratio to mean(true cvr) for several clips.
    """
    from deltalake import DeltaTable

    from esmm.evaluation.metrics import predict
    from esmm.registry.artifacts import load_model

    cfg = _cfg(a.root, a.set)
    day = cfg.generate.dates[-1]
    model, meta = load_model(a.artifact)
    cat_names = [f["name"] for f in meta["features"]["categorical"]]
    num_names = [f["name"] for f in meta["features"]["numeric"]]
    ex = DeltaTable(cfg.lakehouse.path("examples")).to_pandas(
        partitions=[("dt", "=", day)], columns=["impression_id", *cat_names, *num_names]
    )
    tr = DeltaTable(cfg.lakehouse.path("truth")).to_pandas(
        partitions=[("dt", "=", day)], columns=["impression_id", "true_ctr", "true_cvr"]
    )
    df = ex.merge(tr, on="impression_id")
    pred = predict(model, df[cat_names].to_numpy(np.int64), df[num_names].to_numpy(np.float32))
    ctr, cvr = df["true_ctr"].to_numpy(), df["true_cvr"].to_numpy()
    m = cvr.mean()
    print(
        f"{day}: {len(df):,} impressions, mean true cvr {m:.5f}; click-weighted {np.sum(ctr * cvr) / ctr.sum() / m:.3f}x"
    )
    for name, p in [("true ctr", ctr), *[(f"pCTR clip {c:g}", np.clip(pred["pctr"], c, 1)) for c in a.clips]]:
        c_ips = np.sum(ctr * cvr / p) / np.sum(ctr / p)
        print(f"  IPS target with {name:16s}: {c_ips / m:.3f}x mean true cvr")


def _ms(v: list[float], fmt: str = ".4f") -> str:
    if not v:
        return "n/a"
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return f"{np.mean(v):{fmt}} ± {sd:{fmt}}"


def _paired(d: list[float]) -> str:
    if len(d) < 2:
        return "n/a"
    sd = float(np.std(d, ddof=1))
    t = float(np.mean(d)) / (sd / math.sqrt(len(d))) if sd > 0 else math.inf
    return f"{np.mean(d):+.4f} (t={t:+.1f})"


def summarise(rows: list[dict], baseline: str) -> str:
    """Markdown table of the module docstring from the JSON lines of ``run``."""
    by: dict[str, dict[tuple, dict]] = {}
    for r in rows:
        r = {**r, "abs_bias": abs(r["pcvr_bias_all"])}
        by.setdefault(r["setting"], {})[(r["world"], r["seed"])] = r
    base = by.get(baseline, {})
    head = (
        "| setting | n | pCVR/true all | abs bias | CVR AUC all (truth) | CTCVR AUC | "
        f"Δ abs bias vs {baseline} | Δ CVR AUC | Δ CTCVR AUC |"
    )
    out = [head, "|" + "---|" * 9]
    for name, runs in by.items():
        keys = sorted(runs)
        col = lambda k: [runs[x][k] for x in keys]  # noqa: E731
        paired = [x for x in keys if x in base]
        diff = lambda k: [runs[x][k] - base[x][k] for x in paired]  # noqa: E731
        d = (
            ["", "", ""]
            if name == baseline
            else [_paired(diff("abs_bias")), _paired(diff("cvr_auc_all_truth")), _paired(diff("ctcvr_auc"))]
        )
        out.append(
            f"| {name} | {len(keys)} | {_ms(col('pcvr_ratio_all'), '.3f')} | {_ms(col('abs_bias'))} | "
            f"{_ms(col('cvr_auc_all_truth'))} | {_ms(col('ctcvr_auc'))} | {d[0]} | {d[1]} | {d[2]} |"
        )
    return "\n".join(out)


def cmd_table(a: argparse.Namespace) -> None:
    rows = []
    for path in a.results:
        with open(path) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    if a.only:
        rows = [r for r in rows if r["setting"] in a.only or r["setting"] == a.baseline]
    print(summarise(rows, a.baseline))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("prepare", "run"):
        s = sub.add_parser(name)
        s.add_argument("--root", required=True, help="lakehouse root of this world")
        s.add_argument("--set", action="append", default=[], help="config override, key=value")
    sub.choices["prepare"].add_argument("--pipeline", choices=["direct", "full"], default="direct")
    r = sub.choices["run"]
    r.add_argument("--setting", action="append", required=True, help="NAME:key=v;key=v")
    r.add_argument("--seeds", type=int, default=3)
    r.add_argument("--seed-offset", type=int, default=0)
    r.add_argument("--epochs", type=int, default=2)
    r.add_argument("--out", required=True)
    c = sub.add_parser("ceiling")
    c.add_argument("--root", required=True)
    c.add_argument("--set", action="append", default=[])
    c.add_argument("--artifact", required=True, help="a trained model's artifact folder")
    c.add_argument("--clips", type=float, nargs="*", default=[0.02, 0.001, 1e-6])
    t = sub.add_parser("table")
    t.add_argument("results", nargs="+")
    t.add_argument("--baseline", default="esmm")
    t.add_argument("--only", nargs="*")
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    {"prepare": cmd_prepare, "run": cmd_run, "ceiling": cmd_ceiling, "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    main()
