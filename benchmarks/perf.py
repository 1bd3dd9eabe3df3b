"""``esmm bench perf``: the performance suite, one run, one table of ratios against the aims.

Runs the benchmark scripts of ``benchmarks/`` one after the other, each in its own
process (each stays runnable on its own; a fresh process gives each part its own
peak memory and its own Spark JVM) and each writing its numbers as JSON:

1. ``bench_labels.py`` at the fixed-cost day (10k impressions) and the scale curve
   of the size (default 1M -> 4M -> 16M impressions/day): the label job cold and
   warm, the same rules as one Spark SQL query and in DuckDB, the JVM's peak RSS;
2. ``bench_train.py``: training end to end vs the in-memory step, the Petastorm
   loader vs a raw pyarrow scan, torch-rechub's ESMM (with ``--rechub-python``),
   and the trainer's peak RSS at two table sizes;
3. ``bench_score.py`` at two sizes: the scoring job vs in-memory inference;
4. ``bench_ingest.py`` at two sizes: Ali-CCP ingest lines/s and peak RSS.

Writes under ``--out`` (default ``<lakehouse.root>/reports/bench_perf``):
``perf.json`` (``size``, ``machine``, ``seconds`` per part, ``raw`` per part,
``measures``: the rows of :func:`benchmarks.perf_table.measures`), ``perf.md`` (the
table) and one ``<part>.log`` per script. Prints the table. ``--write-readme``
puts the table and the machine line between the markers of README.md's
performance section. Exit 0 when every part ran (aims met or not), 1 otherwise.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import perf_table
from benchmarks.sizes import PERF_SIZES
from esmm.config.schema import Config

REPO = Path(__file__).resolve().parents[1]


def _script(name: str, args: list[str], out: Path, part: str) -> dict:
    """Run ``benchmarks/<name>`` with ``--json``; its JSON, or ``{"error": ...}`` naming the log."""
    js, log = out / f"{part}.json", out / f"{part}.log"
    js.unlink(missing_ok=True)
    cmd = [sys.executable, str(REPO / "benchmarks" / name), *args, "--json", str(js)]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    print(f"esmm bench perf: {part}: {' '.join(cmd[1:])}", flush=True)
    with log.open("w") as fh:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0 or not js.exists():
        tail = log.read_text().strip().splitlines()[-1:] or [""]
        return {"error": f"{name} exited {rc} (see {log}): {tail[0][:200]}"}
    return json.loads(js.read_text())


def run_parts(size: str, out: Path, rechub_python: str | None) -> tuple[dict, dict]:
    """Every part of the suite at ``size``; returns (raw results per part, seconds per part)."""
    s = PERF_SIZES[size]
    work = out / "work"
    raw, secs = {}, {}

    def timed(part: str, fn) -> None:
        t0 = time.time()
        raw[part] = fn()
        secs[part] = round(time.time() - t0, 1)

    sizes = sorted({s["fixed_day"], *s["labels"]})
    timed(
        "labels",
        lambda: _script(
            "bench_labels.py",
            ["--impressions-per-day", *map(str, sizes), "--root", str(work / "labels"), "--reuse"],
            out,
            "labels",
        ),
    )
    train_args = [
        "--workdir",
        str(work / "train"),
        "--ratio-rows",
        str(s["train_rows"]),
        "--steps",
        str(s["train_steps"]),
        "--mem-rows",
        *map(str, s["mem_rows"]),
    ]
    rechub_missing = None
    if rechub_python and Path(rechub_python).exists():
        train_args += ["--rechub-python", rechub_python]
    else:
        rechub_missing = "not measured: no torch-rechub environment" + (
            f" ({rechub_python} does not exist)" if rechub_python else " (give --rechub-python PATH)"
        )
    timed("train", lambda: _script("bench_train.py", train_args, out, "train"))
    if rechub_missing and "error" not in raw["train"]:
        raw["train"]["rechub_missing"] = rechub_missing
    timed(
        "score",
        lambda: _script(
            "bench_score.py", ["--rows", *map(str, s["score"]), "--repeats", str(s["score_repeats"])], out, "score"
        ),
    )
    if s["ingest"]:
        timed(
            "ingest",
            lambda: _script(
                "bench_ingest.py", ["--sizes", *map(str, s["ingest"]), "--dir", str(work / "ingest")], out, "ingest"
            ),
        )
    else:
        raw["ingest"] = {"skipped": f"no ingest sizes at size {size}"}
    return raw, secs


def write_readme(readme: Path, block: str) -> None:
    readme.write_text(perf_table.replace_between_markers(readme.read_text(), block, str(readme)))


def main(cfg: Config, args) -> int:
    size = args.size or "default"
    if size not in PERF_SIZES:
        print(f"esmm bench perf: --size {size} is not a perf size ({', '.join(PERF_SIZES)})", file=sys.stderr)
        return 2
    out = Path(args.out or Path(cfg.lakehouse.path("reports")) / "bench_perf")
    out.mkdir(parents=True, exist_ok=True)
    mach = perf_table.machine()
    started = dt.datetime.now(dt.timezone.utc)
    raw, secs = run_parts(size, out, args.rechub_python)
    rows = perf_table.measures(raw, PERF_SIZES[size]["fixed_day"], PERF_SIZES[size]["labels"])
    when = f"{started:%Y-%m-%d %H:%M} UTC, {sum(secs.values()) / 60:.0f} min"
    block = perf_table.readme_block(rows, mach, size, when)
    (out / "perf.md").write_text(block + "\n")
    body = {
        "size": size,
        "started": started.isoformat(),
        "machine": mach,
        "seconds": secs,
        "raw": raw,
        "measures": rows,
    }
    (out / "perf.json").write_text(json.dumps(body, indent=1, default=float))
    print("\n" + block + f"\n\nJSON: {out / 'perf.json'}")
    if args.write_readme:
        write_readme(REPO / "README.md", block)
        print(
            f"README.md: performance section rewritten between {perf_table.README_BEGIN} and "
            f"{perf_table.README_END}"
        )
    failed = [p for p, r in raw.items() if "error" in r]
    if failed:
        print(f"esmm bench perf: parts failed: {', '.join(failed)} (see their logs under {out})", file=sys.stderr)
        return 1
    return 0
