"""Benchmark: the Spark label job for one day vs the same label query in DuckDB.

    python benchmarks/bench_labels.py [--impressions-per-day 1000000 [4000000 ...]] [--days 3] [--reuse]
                                      [--json PATH]

For each ``--impressions-per-day`` size in turn, in one Spark session:

1. Generates (or, with ``--reuse``, keeps) raw Delta tables of ``--days`` days at
   that size under ``--root``/ipd<N> (default root ./lakehouse/bench).
2. Times ``pipelines.labels.job.run_day`` for the middle day with an as-of after all
   its windows closed: read with partition pruning, record checks, deduplication,
   click validity, attribution, quarantine, counts, gate, two Delta commits. It runs
   twice: the first run in a fresh session also pays the JVM's warm-up; the second
   (the same day again) is the steady state of a session labelling several dates.
3. Runs the same labelling rules as one SQL query (``benchmarks/labels_oracle.py``) in
   DuckDB over the Parquet files of the current Delta snapshots (delta-rs lists
   them; DuckDB cannot load its delta extension offline), restricted to the same
   arrival partitions, and materialises the label rows.
4. Runs the same SQL query on Spark SQL, which separates the engine gap from the
   job's own work.
5. Prints rows/s for each, the Spark/DuckDB time ratios and the local Spark JVM's
   peak RSS during the label runs (alone, and with its Python workers), and fails unless all three give the same label
   counts (rows, clicks, conversions). ``--json`` writes every size's numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from benchmarks.rss import PeakRss, write_json  # noqa: E402
from esmm.config.loader import load_config  # noqa: E402
from esmm.util.timeutil import default_as_of  # noqa: E402
from pipelines.io.contract import SOURCES  # noqa: E402
from pipelines.labels.rules import Windows, scope_of  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--impressions-per-day",
        type=int,
        nargs="+",
        default=[1_000_000],
        help="one or more sizes, measured in turn in one Spark session (each under ROOT/ipd<N>)",
    )
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--root", default=str(REPO / "lakehouse" / "bench"))
    p.add_argument("--reuse", action="store_true", help="keep raw tables generated with the same settings")
    p.add_argument("--threads", type=int, default=2, help="DuckDB threads (Spark uses spark.master)")
    p.add_argument("--json", help="also write every size's numbers to this JSON file")
    return p.parse_args(argv)


def ensure_raw(spark, cfg, reuse: bool) -> float:
    """Generate the raw tables unless an identical generation is there; returns seconds spent."""
    from pipelines.sim import generator as generate

    marker = Path(cfg.lakehouse.root) / "bench-generate.json"
    want = json.dumps(cfg.to_dict()["generate"], sort_keys=True)
    if reuse and marker.exists() and marker.read_text() == want:
        print(f"reusing raw tables under {cfg.lakehouse.root}")
        return 0.0
    t0 = time.time()
    counts = generate.run(spark, cfg)
    secs = time.time() - t0
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(want)
    print(f"generated in {secs:.0f}s: " + ", ".join(f"{k}={v:,}" for k, v in counts.items()))
    return secs


def snapshot_files(path: str, first_dt: str, last_dt: str) -> list[str]:
    """Parquet files of the current Delta version within [first_dt, last_dt] (delta-rs)."""
    from deltalake import DeltaTable

    table = DeltaTable(path)
    parts = table.get_add_actions(flatten=True).to_pydict()
    out = []
    for uri, d in zip(table.file_uris(), parts["partition.dt"]):
        if d is not None and first_dt <= d <= last_dt:
            out.append(uri.removeprefix("file://"))
    return out


def duckdb_labels(cfg, day: str, as_of: dt.datetime, threads: int) -> tuple[float, tuple, int]:
    import duckdb

    from benchmarks.labels_oracle import label_sql

    w = Windows.from_config(cfg.labels)
    sc = scope_of(day, as_of, w)
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute("SET TimeZone = 'UTC'")
    t0 = time.time()
    views, n_files = {}, 0
    for s in SOURCES:
        files = snapshot_files(cfg.lakehouse.path(s), *sc.dt_range(s, w))
        n_files += len(files)
        listing = ", ".join(f"'{f}'" for f in files)
        # Delta keeps dt in the folder names only; read it as the string it is.
        con.execute(
            f"CREATE VIEW raw_{s} AS SELECT * REPLACE (CAST(ts AS TIMESTAMP) AS ts) FROM "
            f"read_parquet([{listing}], hive_partitioning = true, hive_types = {{'dt': VARCHAR}})"
        )
        views[s] = f"raw_{s}"
    query = label_sql(views["impressions"], views["clicks"], views["conversions"], day, as_of, w)
    con.execute(f"CREATE TABLE labels AS {query}")
    secs = time.time() - t0
    counts = con.execute("SELECT count(*), count(first_click_ts), count(conversion_ts) FROM labels").fetchone()
    return secs, tuple(int(x) for x in counts), n_files


def measure(spark, cfg, threads: int, reuse: bool) -> dict:
    """One size (``cfg.generate``): the label job cold and warm, the same rules on Spark SQL and
    DuckDB, their counts, and the local Spark JVM's peak RSS during the label runs."""
    from pyspark.sql import functions as F

    from pipelines.io.delta import read_delta
    from pipelines.labels import job as L

    gen_secs = ensure_raw(spark, cfg, reuse)
    day = cfg.generate.dates[len(cfg.generate.dates) // 2]
    as_of = default_as_of(day) + dt.timedelta(days=9)  # every window of the day has closed

    # The first run in a session also pays the JVM's warm-up (class loading, JIT, code
    # generation of each new plan, the Delta logs); a nightly labels several dates in one
    # session, so the second run (the same day again: idempotent) is the steady state.
    with PeakRss("java") as jvm, PeakRss() as tree:
        t0 = time.time()
        L.run_day(spark, cfg, day, as_of, log=lambda m: None)
        cold_secs = time.time() - t0
        t0 = time.time()
        report = L.run_day(spark, cfg, day, as_of, log=lambda m: None)
        spark_secs = time.time() - t0
    got = (
        read_delta(spark, cfg.lakehouse.path("labels"))
        .where(F.col("dt") == day)
        .agg(F.count(F.lit(1)), F.sum("click"), F.sum("conversion"))
        .first()
    )
    spark_counts = tuple(int(x or 0) for x in got)

    # The same reference query on Spark SQL: separates the engine gap from the job's own work
    # (quarantine, per-row fates, the gate, two Delta commits).
    from benchmarks.labels_oracle import count_sql, label_sql

    w = Windows.from_config(cfg.labels)
    sc = scope_of(day, as_of, w)
    for s in SOURCES:
        L.read_scope(spark, cfg, s, *sc.dt_range(s, w)).createOrReplaceTempView(f"raw_{s}")
    t0 = time.time()
    sql_counts = tuple(
        int(x)
        for x in spark.sql(
            count_sql(label_sql("raw_impressions", "raw_clicks", "raw_conversions", day, as_of, w))
        ).first()
    )
    sql_secs = time.time() - t0

    duck_secs, duck_counts, n_files = duckdb_labels(cfg, day, as_of, threads)
    return {
        "impressions_per_day": cfg.generate.impressions_per_day,
        "day": day,
        "generate_s": round(gen_secs, 1),
        "labelled_rows": spark_counts[0],
        "raw_rows_in": sum(c.rows_in for c in report.sources.values()),
        "job_cold_s": cold_secs,
        "job_s": spark_secs,
        "spark_sql_s": sql_secs,
        "duckdb_s": duck_secs,
        "duckdb_files": n_files,
        "job_phases_s": {k: round(v, 2) for k, v in report.timings.items()},
        "jvm_peak_rss_mb": jvm.peak_mb,
        "descendants_peak_rss_mb": tree.peak_mb,
        "counts_match": spark_counts == sql_counts == duck_counts,
        "counts": {"job": spark_counts, "spark_sql": sql_counts, "duckdb": duck_counts},
    }


def print_size(r: dict, master: str, cores: int, threads: int) -> None:
    n, job, duck, sql, cold = r["labelled_rows"], r["job_s"], r["duckdb_s"], r["spark_sql_s"], r["job_cold_s"]
    print(
        f"\nlabel day {r['day']}, {r['impressions_per_day']:,} impressions/day, "
        f"Spark master {master} (parallelism {cores}), DuckDB threads {threads}"
    )
    print(f"  Spark label job, first run in the session: {cold:7.1f}s  {n / cold:10,.0f} labelled impressions/s")
    print(
        f"  Spark label job : {job:7.1f}s  {n / job:10,.0f} labelled impressions/s  "
        f"({r['raw_rows_in'] / job:,.0f} owned raw rows/s; incl. quarantine, counts, 2 Delta commits)"
    )
    print(
        f"  Spark SQL query : {sql:7.1f}s  {n / sql:10,.0f} labelled impressions/s  "
        "(the reference query only, counted)"
    )
    print(
        f"  DuckDB query    : {duck:7.1f}s  {n / duck:10,.0f} labelled impressions/s  "
        f"({r['duckdb_files']} Parquet files; labels materialised in memory)"
    )
    print(f"  Spark job / DuckDB: {job / duck:.2f}x (first run in the session: {cold / duck:.2f}x)")
    print(f"  Spark SQL / DuckDB (same query): {sql / duck:.2f}x")
    print(
        f"  local Spark JVM peak RSS during the label runs: {r['jvm_peak_rss_mb']:,} MB "
        f"(with its Python workers, summed: {r['descendants_peak_rss_mb']:,} MB)"
    )
    c = r["counts"]
    print(
        f"  counts (rows, clicks, conversions): Spark job {c['job']}  Spark SQL {c['spark_sql']}  "
        f"DuckDB {c['duckdb']}"
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    from pipelines.io.session import get_spark

    results = []
    spark = None
    for ipd in args.impressions_per_day:
        cfg = load_config(
            overrides=[
                f"lakehouse.root={Path(args.root) / f'ipd{ipd}'}",
                f"generate.days={args.days}",
                f"generate.impressions_per_day={ipd}",
                f"generate.partitions_per_day={max(1, ipd // 250_000)}",
            ]
        )
        if spark is None:
            spark = get_spark(cfg.spark)
            spark.sparkContext.setLogLevel("ERROR")
        r = measure(spark, cfg, args.threads, args.reuse)
        print_size(r, cfg.spark.master, spark.sparkContext.defaultParallelism, args.threads)
        results.append(r)
    if args.json:
        write_json(args.json, {"sizes": results})
    if not all(r["counts_match"] for r in results):
        print("MISMATCH between the Spark job and the DuckDB query", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
