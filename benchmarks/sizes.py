"""The sizes, world knobs and command-line arguments of ``esmm bench quality|sweep|perf``,
kept apart so the CLI parser lists them without importing the bench's Spark and torch code."""

from __future__ import annotations

SIZES = {  # name: (days, impressions per day); the last day is the evaluation day
    "tiny": (3, 5_000),
    "sweep": (4, 30_000),
    "default": (5, 100_000),
    "large": (8, 250_000),
}
# esmm bench perf: the label job's scale curve (impressions/day; the ratios against DuckDB and
# Spark SQL are taken at the first), scoring at two sizes, training rows for the throughput
# ratio and the loader pass, trainer memory sizes, Ali-CCP ingest sizes (lines; none: skipped);
# score_repeats: interleaved scoring / in-memory measurements per size (the median is judged).
PERF_SIZES = {
    "tiny": {
        "labels": (10_000, 40_000),
        "fixed_day": 10_000,
        "score": (10_000, 40_000),
        "score_repeats": 1,
        "train_rows": 20_000,
        "train_steps": 15,
        "mem_rows": (20_000, 80_000),
        "ingest": (2_000, 4_000),
    },
    "small": {
        "labels": (100_000, 400_000, 1_600_000),
        "fixed_day": 10_000,
        "score": (100_000, 400_000),
        "score_repeats": 3,
        "train_rows": 200_000,
        "train_steps": 100,
        "mem_rows": (200_000, 1_000_000),
        "ingest": (25_000, 100_000),
    },
    "default": {
        "labels": (1_000_000, 4_000_000, 16_000_000),
        "fixed_day": 10_000,
        "score": (1_000_000, 4_000_000),
        "score_repeats": 3,
        "train_rows": 1_000_000,
        "train_steps": 300,
        "mem_rows": (1_000_000, 10_000_000),
        "ingest": (250_000, 1_000_000),
    },
}
BIAS_LEVELS = {"none": 0.0, "default": 0.5, "strong": 0.9, "negative": -0.5}


def add_args(p) -> None:
    """Arguments of ``esmm bench quality|sweep|aliccp|perf`` (argparse parser ``p``)."""
    p.add_argument(
        "which",
        choices=["quality", "sweep", "aliccp", "perf"],
        help="quality: the four models over N seeds; sweep: ESMM vs naive over a grid of worlds; "
        "aliccp: the ESMM paper's Ali-CCP experiment on --data DIR (with --conf conf/aliccp.yaml); "
        "perf: the performance suite (one table of ratios against the aims, and a JSON file)",
    )
    p.add_argument("--data", help="aliccp: folder with the Ali-CCP files (raw release or processed CSV)")
    p.add_argument(
        "--size",
        choices=list(dict.fromkeys([*SIZES, *PERF_SIZES])),
        help="world size (quality: default, sweep: sweep; "
        + "/".join(SIZES)
        + "); perf: "
        + "/".join(PERF_SIZES)
        + " (default: default)",
    )
    p.add_argument("--seeds", type=int, help="worlds (and training seeds) per setting (quality 5, sweep 3)")
    p.add_argument("--cvr", help="generate.cvr; sweep: comma-separated grid (default 0.005,0.02,0.05,0.15)")
    p.add_argument(
        "--bias",
        help="generate.selection_bias: a number or "
        + "/".join(BIAS_LEVELS)
        + "; sweep: comma-separated grid (default none,default,strong)",
    )
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--models", help="comma-separated kinds (quality: all four; sweep: naive,esmm)")
    p.add_argument(
        "--pipeline",
        choices=["direct", "full"],
        default="direct",
        help="direct: examples straight from the simulator; full: generate+labels+features",
    )
    p.add_argument(
        "--calibration-days",
        type=int,
        help="quality: held-out days between training and evaluation on which calibration maps "
        "are fitted and then judged on the evaluation day against sim/truth (default 2; 0: none)",
    )
    p.add_argument("--out", help="output folder (default <lakehouse.root>/reports/bench_<which>)")
    p.add_argument(
        "--rechub-python",
        metavar="PATH",
        help="perf: python of a separate venv holding torch-rechub, to time its ESMM at equal sizes",
    )
    p.add_argument(
        "--write-readme",
        action="store_true",
        help="perf: also write the table and the machine into README.md's performance section",
    )


def bias_value(v: str) -> float:
    return BIAS_LEVELS[v] if v in BIAS_LEVELS else float(v)
