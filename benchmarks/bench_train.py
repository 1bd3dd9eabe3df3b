"""Training throughput and memory: Delta -> Petastorm -> model step vs in-memory tensors.

Usage (from the repository root, venv active, PYTHONPATH=.)::

    python benchmarks/bench_train.py                       # 1M-row ratio + 1M/10M memory
    python benchmarks/bench_train.py --ratio-rows 1000000 --steps 300 --mem-rows 1000000 10000000

1. ``ratio``: a synthetic ``curated/examples`` Delta table (the issue-3 contract,
   default feature spec, written with the deltalake writer: no JVM needed) is
   trained on with ``esmm.training.trainer.train`` for ``--steps`` steps (end to end: Delta
   snapshot -> Petastorm batch reader -> BatchedDataLoader -> tensors -> step), then
   the same model and optimizers run the same number of steps on batches already
   in memory. Printed: both rows/s and their ratio (aim >= 0.85).
2. ``memory``: for each ``--mem-rows`` size, one full epoch in a fresh subprocess
   (``--mem-model small``: embedding 4, tower [16], so 10M rows fit the time), and
   that process's peak RSS. It must stay flat as the table grows.

3. ``loader``: one pass of the trainer's reader (Petastorm, shuffled, the trainer's
   buffer and workers) over the ratio table into tensors, against a raw pyarrow scan
   of the same files and columns into the same tensors (no shuffle). Printed: both
   rows/s and their ratio.

4. ``rechub`` (with ``--rechub-python``, a python of a throwaway venv holding
   torch-rechub): the same rows as the ratio run (exported to .npz) trained for one
   epoch by torch-rechub's ESMM and trainer (benchmarks/rechub_esmm.py), same batch
   size, embedding dimension and towers. Printed: our end-to-end rows/s over
   rechub's (aim >= 3).

``--json PATH`` writes every part's numbers to a file as well.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from benchmarks.rss import write_json  # noqa: E402
from esmm.config.loader import load_config  # noqa: E402
from esmm.config.schema import Config  # noqa: E402

DATES = [f"2026-11-{d:02d}" for d in range(1, 11)]


def write_table(path: str, rows: int, cfg: Config, chunk: int = 1_000_000, seed: int = 0) -> None:
    """Synthetic examples rows in ``chunk``-row appends, spread over 10 dates."""
    import pyarrow as pa
    from deltalake import write_deltalake

    rng = np.random.default_rng(seed)
    spec = cfg.features
    done = 0
    while done < rows:
        n = min(chunk, rows - done)
        click = (rng.random(n) < 0.04).astype(np.int32)
        cols = {
            "impression_id": pa.array([f"imp-{done + i}" for i in range(n)]),
            "dt": pa.array(np.array(DATES)[(np.arange(done, done + n) * len(DATES)) // rows]),
            "click": click,
            "conversion": (click * (rng.random(n) < 0.05)).astype(np.int32),
            "label_mature": np.ones(n, dtype=bool),
        }
        for f in spec.categorical:
            cols[f.name] = rng.integers(0, f.buckets, n, dtype=np.int32)
        for f in spec.numeric:
            cols[f.name] = rng.random(n, dtype=np.float32)
        cols["feature_mapping_id"] = pa.array([spec.mapping_id] * n)
        write_deltalake(
            path,
            pa.table(cols),
            mode="append" if done else "overwrite",
            partition_by=["dt"],
            max_rows_per_file=chunk,
            max_rows_per_group=65_536,
            min_rows_per_group=65_536,
        )
        done += n


def _cfg(root: str, extra: list[str]) -> Config:
    return load_config(
        overrides=[
            f"lakehouse.root={root}",
            f"train.train_start={DATES[0]}",
            f"train.train_end={DATES[-1]}",
            "train.progress=false",
            "train.register=false",
            "train.resume=false",
            *extra,
        ]
    )


def in_memory_rows_per_s(cfg: Config, steps: int) -> float:
    """Same model, loss and optimizers as train(), on pre-built batches (no reader)."""
    import torch

    from esmm.model.losses import compute_loss
    from esmm.model.network import build_model
    from esmm.training.trainer import _optimizers

    torch.manual_seed(0)
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    model = build_model(cfg.model, cfg.features)
    dense, emb = _optimizers(model, cfg)
    b = cfg.train.batch_size
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(16):
        cat = torch.stack([torch.randint(0, f.buckets, (b,), generator=g) for f in cfg.features.categorical], 1)
        num = torch.rand(b, len(cfg.features.numeric), generator=g)
        click = (torch.rand(b, generator=g) < 0.04).float()
        batches.append((cat, num, click, click * (torch.rand(b, generator=g) < 0.05).float()))
    model.train()
    t0 = None
    for i in range(steps + 5):
        if i == 5:  # warm-up excluded, as train()'s first steps include reader start-up
            t0 = time.perf_counter()
        cat, num, click, conv = batches[i % len(batches)]
        loss = compute_loss(model(cat, num), click, conv, cfg.model)
        dense.zero_grad(set_to_none=True)
        emb.zero_grad(set_to_none=True)
        loss.total.backward()
        dense.step()
        emb.step()
    return steps * b / (time.perf_counter() - t0)


def ratio(root: str, rows: int, steps: int, extra: list[str]) -> dict:
    from esmm.training.trainer import train

    cfg = _cfg(root, [f"train.max_steps={steps}", *extra])
    if not Path(cfg.lakehouse.path("examples")).exists():
        write_table(cfg.lakehouse.path("examples"), rows, cfg)
    r = train(cfg)
    mem = in_memory_rows_per_s(cfg, steps)
    return {
        "rows": rows,
        "steps": r.steps,
        "e2e_rows_per_s": r.samples_per_s,
        "in_memory_rows_per_s": mem,
        "ratio": r.samples_per_s / mem,
    }


def loader(root: str, extra: list[str]) -> dict:
    """rows/s of the trainer's Petastorm reader vs a pyarrow scan of the same files, both to tensors."""
    import pyarrow.dataset as ds
    import torch

    from esmm.data.examples import _columns, example_batches, resolve_snapshot, to_batch

    cfg = _cfg(root, extra)
    t = cfg.train
    snap = resolve_snapshot(cfg.lakehouse.path("examples"), DATES)
    t0, rows = time.perf_counter(), 0
    with example_batches(
        snap,
        cfg.features,
        t.batch_size,
        mature_only=t.mature_only,
        shuffle=True,
        shuffle_buffer=t.shuffle_buffer,
        workers=t.reader_workers,
    ) as batches:
        for b in batches:
            rows += len(b)
    petastorm_s = time.perf_counter() - t0
    paths = [f.removeprefix("file://") for f in snap.files]
    t0, scanned = time.perf_counter(), 0
    for rb in ds.dataset(paths, format="parquet").to_batches(columns=_columns(cfg.features), batch_size=t.batch_size):
        b = to_batch(
            {c: torch.from_numpy(rb.column(c).to_numpy(zero_copy_only=False)) for c in rb.schema.names},
            cfg.features,
            t.mature_only,
        )
        scanned += len(b)
    arrow_s = time.perf_counter() - t0
    if rows != scanned:
        raise SystemExit(f"loader bench: Petastorm gave {rows:,} rows, the pyarrow scan {scanned:,}")
    return {
        "rows": rows,
        "petastorm_rows_per_s": rows / petastorm_s,
        "pyarrow_rows_per_s": rows / arrow_s,
        "ratio": arrow_s / petastorm_s,
    }


def rechub(root: str, steps: int, rechub_python: str, threads: int, extra: list[str]) -> float:
    """rows/s of torch-rechub's ESMM on the first steps*batch rows of the ratio table."""
    from esmm.data.examples import read_arrow, resolve_snapshot

    cfg = _cfg(root, extra)
    n = steps * cfg.train.batch_size
    snap = resolve_snapshot(cfg.lakehouse.path("examples"), DATES)
    cat_names = [f.name for f in cfg.features.categorical]
    table = read_arrow(snap, ["click", "conversion", *cat_names]).slice(0, n)
    npz = os.path.join(root, "rechub_rows.npz")
    np.savez(
        npz,
        click=table.column("click").to_numpy(),
        conversion=table.column("conversion").to_numpy(),
        buckets=json.dumps({f"cat_{f.name}": f.buckets for f in cfg.features.categorical}),
        **{f"cat_{c}": table.column(c).to_numpy() for c in cat_names},
    )
    out = subprocess.run(
        [
            rechub_python,
            str(REPO / "benchmarks" / "rechub_esmm.py"),
            npz,
            str(cfg.train.batch_size),
            str(threads),
            str(cfg.model.embedding_dim),
            *[str(h) for h in cfg.model.tower],
        ],
        capture_output=True,
        text=True,
        cwd="/tmp",
    )
    if out.returncode != 0:
        raise SystemExit(f"torch-rechub run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["rows_per_s"]


def memory_child(root: str, extra: list[str]) -> None:
    """One full epoch; prints JSON with rows/s and this process's peak RSS."""
    from esmm.training.trainer import train

    r = train(_cfg(root, extra))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"samples": r.samples, "rows_per_s": r.samples_per_s, "peak_rss_mb": peak_mb}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "esmm-bench-train"))
    ap.add_argument("--ratio-rows", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (train.torch_threads)")
    ap.add_argument("--mem-rows", type=int, nargs="*", default=[1_000_000, 10_000_000])
    ap.add_argument("--mem-model", choices=["small", "paper"], default="small")
    ap.add_argument("--rechub-python", help="python of a venv with torch-rechub (e.g. /tmp/rechub-venv/bin/python)")
    ap.add_argument("--no-loader", action="store_true", help="skip the Petastorm vs pyarrow loader pass")
    ap.add_argument("--json", help="also write every part's numbers to this JSON file")
    ap.add_argument("--child", nargs=1, help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args()
    common = [f"train.batch_size={args.batch_size}", f"train.torch_threads={args.threads}", *args.overrides]
    small = ["model.embedding_dim=4", "model.tower=[16]"] if args.mem_model == "small" else []
    if args.child:
        memory_child(args.child[0], common + small)
        return
    out: dict = {"batch_size": args.batch_size, "threads": args.threads, "mem_model": args.mem_model}
    if args.ratio_rows:
        res = out["ratio"] = ratio(
            os.path.join(args.workdir, f"rows{args.ratio_rows}"), args.ratio_rows, args.steps, common
        )
        print(
            f"throughput ({res['steps']} steps x batch {args.batch_size}, paper-size model, "
            f"{args.threads} thread(s)): end-to-end {res['e2e_rows_per_s']:,.0f} rows/s, in-memory "
            f"{res['in_memory_rows_per_s']:,.0f} rows/s, ratio {res['ratio']:.2f} (aim >= 0.85)",
            flush=True,
        )
        if not args.no_loader:
            ld = out["loader"] = loader(os.path.join(args.workdir, f"rows{args.ratio_rows}"), common)
            print(
                f"loader (one pass, {ld['rows']:,} rows, to tensors): Petastorm {ld['petastorm_rows_per_s']:,.0f} "
                f"rows/s, pyarrow scan {ld['pyarrow_rows_per_s']:,.0f} rows/s, ratio {ld['ratio']:.2f}",
                flush=True,
            )
        if args.rechub_python:
            rh = rechub(
                os.path.join(args.workdir, f"rows{args.ratio_rows}"),
                args.steps,
                args.rechub_python,
                args.threads,
                common,
            )
            print(
                f"torch-rechub ESMM (same {args.steps * args.batch_size:,} rows, batch, embedding, towers): "
                f"{rh:,.0f} rows/s; ours end-to-end / rechub = {res['e2e_rows_per_s'] / rh:.2f}x (aim >= 3)",
                flush=True,
            )
            out["rechub"] = {
                "rows": args.steps * args.batch_size,
                "rechub_rows_per_s": rh,
                "ratio": res["e2e_rows_per_s"] / rh,
            }
    out["memory"] = []
    for rows in args.mem_rows:
        root = os.path.join(args.workdir, f"rows{rows}")
        cfg = _cfg(root, [])
        if not Path(cfg.lakehouse.path("examples")).exists():
            t0 = time.time()
            write_table(cfg.lakehouse.path("examples"), rows, cfg)
            print(f"wrote {rows:,} rows in {time.time() - t0:.0f}s", flush=True)
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                root,
                "--batch-size",
                str(args.batch_size),
                "--threads",
                str(args.threads),
                "--mem-model",
                args.mem_model,
                *sum((["--set", o] for o in args.overrides), []),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        if proc.returncode != 0:
            raise SystemExit(f"memory run for {rows:,} rows failed:\n{proc.stderr[-3000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        out["memory"].append({"rows": rows, **res})
        print(
            f"memory ({args.mem_model} model, one epoch): {rows:>12,} rows -> {res['samples']:,} trained at "
            f"{res['rows_per_s']:,.0f} rows/s, peak RSS {res['peak_rss_mb']:,.0f} MB",
            flush=True,
        )
    if args.json:
        write_json(args.json, out)


if __name__ == "__main__":
    main()
