"""The sizes, world knobs and command-line arguments of ``esmm bench quality|sweep``,
kept apart so the CLI parser lists them without importing the bench's Spark and torch code."""
from __future__ import annotations

SIZES = {  # name: (days, impressions per day); the last day is the evaluation day
    "tiny": (3, 5_000),
    "sweep": (4, 30_000),
    "default": (5, 100_000),
    "large": (8, 250_000),
}
BIAS_LEVELS = {"none": 0.0, "default": 0.5, "strong": 0.9, "negative": -0.5}


def add_args(p) -> None:
    """Arguments of ``esmm bench quality|sweep`` (argparse parser ``p``)."""
    p.add_argument("which", choices=["quality", "sweep", "aliccp"],
                   help="quality: the four models over N seeds; sweep: ESMM vs naive over a grid of worlds; "
                        "aliccp: the ESMM paper's Ali-CCP experiment on --data DIR (with --conf conf/aliccp.yaml)")
    p.add_argument("--data", help="aliccp: folder with the Ali-CCP files (raw release or processed CSV)")
    p.add_argument("--size", choices=list(SIZES), help="world size (quality: default, sweep: sweep)")
    p.add_argument("--seeds", type=int, help="worlds (and training seeds) per setting (quality 5, sweep 3)")
    p.add_argument("--cvr", help="generate.cvr; sweep: comma-separated grid (default 0.005,0.02,0.05,0.15)")
    p.add_argument("--bias", help="generate.selection_bias: a number or " + "/".join(BIAS_LEVELS)
                   + "; sweep: comma-separated grid (default none,default,strong)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--models", help="comma-separated kinds (quality: all four; sweep: naive,esmm)")
    p.add_argument("--pipeline", choices=["direct", "full"], default="direct",
                   help="direct: examples straight from the simulator; full: generate+labels+features")
    p.add_argument("--calibration-days", type=int,
                   help="quality: held-out days between training and evaluation on which calibration maps "
                        "are fitted and then judged on the evaluation day against sim/truth (default 2; 0: none)")
    p.add_argument("--out", help="output folder (default <lakehouse.root>/reports/bench_<which>)")


def bias_value(v: str) -> float:
    return BIAS_LEVELS[v] if v in BIAS_LEVELS else float(v)
