"""Ali-CCP raw-release ingest throughput and memory at two sizes.

    nice -n 10 python benchmarks/bench_ingest.py [--sizes 250000 1000000] [--dir /tmp/bench_ingest] [--json PATH]

For each size N it writes a generated file pair in the exact release layout
(``sample_skeleton_train.csv`` with N lines, ``common_features_train.csv`` with
N/10 user lines, ~12 features per skeleton line including multi-valued ones, ~60 per
common line with 40-id behaviour lists; about 8% of the lines broken in the ways the
ingest quarantines), then runs ``esmm ingest aliccp`` on it in a fresh process (one
local Spark JVM, ``spark.driver.memory`` = ``--driver-memory``) and prints the wall
time, skeleton lines/s, and the peak resident memory of that process tree (JVM +
Python, sampled every 0.2 s). Flat memory: the peak does not grow with N (the plan is
a text scan, a shuffle join and a Delta write; nothing is collected to the driver).
``--json`` writes every size's numbers to a file as well.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

A, B, C = "\x01", "\x02", "\x03"
REPO = Path(__file__).resolve().parents[1]

from benchmarks.rss import PeakRss, write_json  # noqa: E402


def _f(field: str, fid: int) -> str:
    return f"{field}{B}{fid}{C}1.0"


def generate(out: Path, n: int, seed: int = 7) -> tuple[Path, Path]:
    """Write the skeleton (n lines) and common features (n/10 lines) files; return their paths."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    skel, common = out / "sample_skeleton_train.csv", out / "common_features_train.csv"
    n_users = max(1, n // 10)
    with common.open("w") as fh:
        for u in range(n_users):
            feats = [_f("101", u)] + [
                _f(k, rng.randrange(10)) for k in ("121", "122", "124", "125", "126", "127", "128", "129")
            ]
            for k, card in (("109_14", 10_000), ("110_14", 300_000), ("127_14", 200_000), ("150_14", 80_000)):
                feats += [_f(k, rng.randrange(card)) for _ in range(rng.randrange(1, 20))]
            fh.write(f"u{u},{len(feats)},{A.join(feats)}\n")
    with skel.open("w") as fh:
        for i in range(n):
            click = int(rng.random() < 0.04)
            conv = int(click and rng.random() < 0.05)
            feats = [
                _f("205", rng.randrange(4_000_000)),
                _f("206", rng.randrange(8000)),
                _f("207", rng.randrange(400_000)),
                _f("216", rng.randrange(200_000)),
                _f("301", rng.randrange(3)),
            ]
            feats += [_f("210", rng.randrange(100_000)) for _ in range(rng.randrange(1, 4))]
            feats += [
                _f(k, rng.randrange(500_000)) for k in ("508", "509", "702", "853") for _ in range(rng.randrange(0, 2))
            ]
            idx = f"u{rng.randrange(n_users)}"
            r = rng.random()
            if r < 0.02:
                idx = f"missing{i}"
            elif r < 0.04:
                conv, click = 1, 0
            elif r < 0.06:
                fh.write(f"{i};{click};{conv};{idx};{len(feats)};{A.join(feats)}\n")
                continue
            fh.write(f"{i},{click},{conv},{idx},{len(feats)},{A.join(feats)}\n")
    return skel, common


def ingest(skel: Path, common: Path, lakehouse: Path, driver_memory: str) -> tuple[float, int, str]:
    """Run `esmm ingest aliccp` in a child process: (seconds, peak RSS of its tree in MB, its last log line)."""
    # local_conf keys contain dots, so they come from a file (a --set would nest them).
    mem = lakehouse.parent / "bench_spark.yaml"
    mem.write_text(f"spark:\n  master: local[2]\n  local_conf:\n    spark.driver.memory: {driver_memory}\n")
    cmd = [
        sys.executable,
        "-m",
        "jobs.cli",
        "ingest",
        "aliccp",
        "--conf",
        str(REPO / "conf" / "aliccp.yaml"),
        "--conf",
        str(mem),
        "--skeleton",
        str(skel),
        "--common",
        str(common),
        "--split",
        "train",
        "--set",
        f"lakehouse.root={lakehouse}",
        # ~8% of the generated lines are broken on purpose: above the default gate.
        "--set",
        "aliccp.max_bad_fraction=0.2",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    with PeakRss() as peak:  # the child, its JVM and Python workers: all descendants of this process
        p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        out, _ = p.communicate()
    secs = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"ingest failed (exit {p.returncode}): {out[-2000:]}")
    return secs, peak.peak_mb, out.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[250_000, 1_000_000])
    ap.add_argument("--dir", default="/tmp/bench_ingest")
    ap.add_argument("--driver-memory", default="2g")
    ap.add_argument("--json", help="also write every size's numbers to this JSON file")
    a = ap.parse_args()
    sizes = []
    for n in a.sizes:
        d = Path(a.dir) / str(n)
        t0 = time.perf_counter()
        skel, common = generate(d, n)
        mb = (skel.stat().st_size + common.stat().st_size) / 2**20
        print(f"N={n:,}: generated {mb:,.0f} MiB in {time.perf_counter() - t0:.0f}s", flush=True)
        secs, peak, line = ingest(skel, common, d / "lh", a.driver_memory)
        print(
            f"N={n:,}: ingest {secs:.0f}s (incl. JVM start), {n / secs:,.0f} skeleton lines/s, "
            f"peak RSS {peak / 1024:.2f} GiB (driver heap {a.driver_memory})\n  {line}",
            flush=True,
        )
        sizes.append(
            {
                "lines": n,
                "seconds": secs,
                "lines_per_s": n / secs,
                "peak_rss_mb": peak,
                "driver_memory": a.driver_memory,
                "last_line": line,
            }
        )
    if a.json:
        write_json(a.json, {"sizes": sizes})


if __name__ == "__main__":
    main()
