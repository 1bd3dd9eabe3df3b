"""Spark scoring throughput against in-memory inference of the same model on the same cores.

    python benchmarks/bench_score.py [--rows 200000 [800000 ...]] [--cores 2] [--batch 4096] [--repeats 3]
                                     [--json PATH]

Builds a model of the configured architecture (random weights: throughput does not
depend on their values), registers nothing, and measures on ``--rows`` synthetic
candidates with the raw feature columns:

* in-memory: the encoded features already in NumPy, ``torch.set_num_threads(cores)``,
  forward passes over batches of ``--batch`` rows (the ceiling: no I/O, no encoding);
* Spark: ``local[cores]``, the scoring job's own path (encode_features -> mapInArrow
  with broadcast weights, ``torch`` threads = spark.task.cpus = 1 per task) up to a
  Delta write of serving/scores-shaped rows.

Each of ``--repeats`` Spark runs is compared with the mean of in-memory runs just
before and after it (the machine may be shared: similar load on both sides).
Reports rows/s of each, the ratios (aim >= 0.5; the median is the headline), the
Spark job's seconds per step, the peak RSS of the JVM during the Spark runs of each
size, and lifetime peaks of the driver process and of its
children. Several ``--rows`` sizes run in turn in one Spark session; ``--json``
writes the printed JSON to a file too.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import resource
import statistics
import tempfile
import time

from benchmarks.rss import PeakRss, descendant_peaks_mb, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[200_000])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved in-memory / Spark measurements")
    ap.add_argument("--json", help="also write the result to this JSON file")
    args = ap.parse_args()

    from esmm.config.loader import load_config
    from pipelines.io.session import get_spark

    cfg = load_config(overrides=[f"spark.master=local[{args.cores}]"])
    spark = get_spark(cfg.spark)
    spark.sparkContext.setLogLevel("ERROR")
    sizes = [measure(spark, n, args.cores, args.batch, args.repeats) for n in args.rows]
    body = {
        "cores": args.cores,
        "batch": args.batch,
        "sizes": sizes,
        "peak_rss_mb": {
            "driver_python": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            **descendant_peaks_mb(),
        },
    }
    print(json.dumps(body, indent=1))
    if args.json:
        write_json(args.json, body)


def measure(spark, n: int, cores: int, batch: int, repeats: int) -> dict:
    """In-memory inference vs the scoring job on ``n`` synthetic candidates."""
    import numpy as np
    import torch
    from pyspark.sql import functions as F

    from esmm.config.loader import load_config
    from esmm.model.network import build_model
    from pipelines.features.job import encode_features, feature_names
    from pipelines.scoring import job as score
    from pipelines.scoring.model import ScoringModel

    root = tempfile.mkdtemp(prefix="bench_score_")
    cfg = load_config(overrides=[f"lakehouse.root={root}", f"spark.master=local[{cores}]", f"score.batch_size={batch}"])
    spec = cfg.features
    torch.manual_seed(0)
    net = build_model(cfg.model, spec).eval()
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    meta = {
        "model_id": "bench",
        "model": dataclasses.asdict(cfg.model),
        "features": dataclasses.asdict(spec),
        "feature_mapping_id": spec.mapping_id,
    }
    model = ScoringModel("bench", json.loads(json.dumps(meta)), buf.getvalue())
    # Raw candidates with the generator's column types, from a hash of the row id.
    h = lambda tag, m: F.pmod(F.xxhash64(F.lit(tag), F.col("id")), F.lit(m))  # noqa: E731
    cand = spark.range(n).select(
        F.concat(F.lit("imp"), F.col("id").cast("string")).alias("impression_id"),
        F.concat(F.lit("u"), h("u", 100000).cast("string")).alias("user_id"),
        F.concat(F.lit("i"), h("i", 50000).cast("string")).alias("item_id"),
        h("g", 3).alias("user_gender"),
        h("a", 8).alias("user_age"),
        F.concat(F.lit("city"), h("c", 1500).cast("string")).alias("user_city"),
        h("cat", 300).alias("item_category"),
        F.concat(F.lit("b"), h("b", 3000).cast("string")).alias("item_brand"),
        F.concat(F.lit("s"), h("s", 12000).cast("string")).alias("item_shop"),
        (h("p", 10) + 1).alias("position"),
        F.element_at(F.array(*[F.lit(d) for d in ("ios", "android", "pc", "mweb")]), (h("d", 4) + 1).cast("int")).alias(
            "device"
        ),
        h("h", 24).alias("hour"),
        (h("pr", 100000) / 100.0).alias("price"),
        (h("r", 50) / 10.0).alias("item_rating"),
        h("ua", 200).cast("double").alias("user_activity"),
        F.lit("2026-11-01").alias("dt"),
    )
    cand_path = f"{root}/candidates"
    cand.repartition(cores * 2).write.format("delta").save(cand_path)

    # In-memory reference: the same encoded rows, in NumPy.
    cat_names, num_names = feature_names(spec)
    enc = encode_features(spark.read.format("delta").load(cand_path), spec).toPandas()
    cat = enc[cat_names].to_numpy(np.int64)
    num = enc[num_names].to_numpy(np.float32)
    torch.set_num_threads(cores)

    def in_memory_rps() -> float:
        with torch.inference_mode():
            net(torch.from_numpy(cat[:batch]), torch.from_numpy(num[:batch]))  # warm-up
            t0 = time.perf_counter()
            for i in range(0, n, batch):
                net(torch.from_numpy(cat[i : i + batch]), torch.from_numpy(num[i : i + batch]))
            return n / (time.perf_counter() - t0)

    # Spark: the scoring job's path, end to end from the Delta candidates to a Delta write.
    cfg = load_config(
        overrides=[
            f"lakehouse.root={root}",
            f"spark.master=local[{cores}]",
            f"score.batch_size={batch}",
            f"score.candidates={cand_path}",
        ]
    )
    score.run(spark, cfg, "2026-11-01", model=model, log=lambda m: None)  # warm-up (JIT, workers)
    # The box is shared: interleave the two sides so each Spark run is compared with
    # in-memory runs taken just before and after it, under the same load.
    runs = []
    jvm = PeakRss("java")
    for _ in range(repeats):
        before = in_memory_rps()
        with jvm:
            t0 = time.perf_counter()
            rep = score.run(spark, cfg, "2026-11-01", model=model, log=lambda m: None)
            spark_s = time.perf_counter() - t0
        after = in_memory_rps()
        assert rep.scored == n, rep
        mem = (before + after) / 2
        runs.append(
            {
                "in_memory_rows_per_s": round(mem),
                "in_memory_before_after": [round(before), round(after)],
                "spark_rows_per_s": round(n / spark_s),
                "spark_seconds": round(spark_s, 1),
                "ratio": round(n / spark_s / mem, 3),
                "spark_phases_s": rep.phases,
            }
        )
    ratios = sorted(r["ratio"] for r in runs)
    return {
        "rows": n,
        "model": f"{cfg.model.kind} dim {cfg.model.embedding_dim} tower {cfg.model.tower}",
        "median_ratio": round(statistics.median(ratios), 3),
        "runs": runs,
        "jvm_peak_rss_mb": jvm.peak_mb,
    }


if __name__ == "__main__":
    main()
