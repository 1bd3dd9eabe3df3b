"""GPU report: training-step samples/s on 1 GPU and on all of them (torchrun, NCCL), fp32 and bf16 AMP.

Usage (from the repository root, venv active)::

    python benchmarks/gpu_check.py --out gpu_check.json      # or: benchmarks/gpu_check.sh

Each run is one ``benchmarks/bench_ddp.py`` process (or one torchrun of it over
every visible GPU) on the paper-size model (327,570 x 18 table, towers 360-200-80)
with batches generated in memory, so no data or Spark is needed:

* 1 GPU: embedding gradients sparse (what ``model.sparse_embedding=auto`` picks in
  one process) and dense, each without and with ``--amp``;
* N > 1 GPUs: ``auto`` (dense under NCCL), without and with ``--amp``.

Writes ``--out``: {"cuda": bool, "torch", "devices": [names], "runs": [bench_ddp
records: world_size, grads, amp, batch, steps, seconds, samples_per_s,
allreduce_bytes, ...]} and prints one line per run. Each run has a time limit
(``--run-timeout``); the whole check stays under 5 minutes. Without CUDA it says
so, writes {"cuda": false, "runs": []} and exits 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "bench_ddp.py"


def plan(n_gpus: int) -> list[tuple[int, str, bool]]:
    """(processes, grads, amp) of every run, single GPU first."""
    runs = [(1, grads, amp) for grads in ("sparse", "dense") for amp in (False, True)]
    if n_gpus > 1:
        runs += [(n_gpus, "auto", amp) for amp in (False, True)]
    return runs


def command(procs: int, grads: str, amp: bool, batch: int, steps: int, out: str) -> list[str]:
    args = [
        str(BENCH),
        "--grads",
        grads,
        "--batch",
        str(batch),
        "--steps",
        str(steps),
        "--warmup",
        "20",
        "--out",
        out,
    ] + (["--amp"] if amp else [])
    if procs == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *args]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--batch", type=int, default=4096, help="rows per GPU per step")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--run-timeout", type=int, default=45, help="seconds per run (6 runs at most)")
    a = ap.parse_args(argv)

    import torch

    report: dict = {"cuda": torch.cuda.is_available(), "runs": []}
    if not report["cuda"]:
        print(f"gpu_check: no CUDA device visible to torch {torch.__version__}; nothing to measure")
        Path(a.out).write_text(json.dumps(report) + "\n")
        return 0
    n = torch.cuda.device_count()
    report.update(
        torch=torch.__version__,
        cuda_version=torch.version.cuda,
        devices=[torch.cuda.get_device_name(i) for i in range(n)],
    )
    print(f"gpu_check: {n} x {report['devices'][0]}, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for procs, grads, amp in plan(n):
            rec_file = str(Path(tmp) / f"{procs}-{grads}-{amp}.jsonl")
            what = f"{procs} GPU(s), grads {grads}, amp {amp}"
            try:
                p = subprocess.run(
                    command(procs, grads, amp, a.batch, a.steps, rec_file),
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                    timeout=a.run_timeout,
                )
            except subprocess.TimeoutExpired:
                report["runs"].append({"world_size": procs, "grads": grads, "amp": amp, "error": "timeout"})
                print(f"{what}: timed out after {a.run_timeout}s", flush=True)
                continue
            if p.returncode != 0 or not Path(rec_file).exists():
                report["runs"].append({"world_size": procs, "grads": grads, "amp": amp, "error": p.stderr[-2000:]})
                print(f"{what}: failed (exit {p.returncode})\n{p.stderr[-2000:]}", flush=True)
                continue
            rec = json.loads(Path(rec_file).read_text().splitlines()[-1])
            report["runs"].append(rec)
            print(
                f"{what}: {rec['samples_per_s']:,.0f} samples/s, "
                f"all-reduce {rec['allreduce_bytes'] / 1e6:.1f} MB/step/rank",
                flush=True,
            )
            Path(a.out).write_text(json.dumps(report, indent=1) + "\n")  # partial results survive a kill
    Path(a.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
