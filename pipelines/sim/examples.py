"""``curated/examples`` straight from a generated world, for model benchmarks.

The production path (generate -> raw logs with duplicates, late events and
click_id-less conversions -> ``esmm labels`` -> ``esmm features``) measures the
label job as well as the models, and costs several Spark jobs per day. A model
benchmark that sweeps worlds needs neither: this module writes, from the
simulator's :attr:`pipelines.sim.generator.GeneratedLogs.outcomes` (every impression
with its click and potential conversion, before any logging mess), exactly the
rows the feature job would write for perfectly logged, fully mature labels:

    click = the generated click, conversion = click * potential_conversion,
    label_mature = true, features through :func:`pipelines.features.job.encode_features`

plus ``sim/truth`` and ``sim/oracle`` as ``esmm generate`` writes them, so
``esmm.training.trainer.train`` and its truth-based evaluation run unchanged. What it leaves
out (deduplication, attribution, lateness) is covered by the label job's tests
and by ``esmm bench quality --pipeline full``.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from esmm.config.schema import Config, FeatureSpec
from pipelines.features.job import EXAMPLE_LABELS, encode_features, feature_names


def examples_from_outcomes(outcomes: DataFrame, spec: FeatureSpec) -> DataFrame:
    """Outcomes rows -> ``curated/examples`` rows (pure; schema of
    :func:`pipelines.features.job.build_examples`)."""
    labelled = outcomes.select(
        "*",
        (F.col("click") * F.col("potential_conversion")).cast("int").alias("conversion"),
        F.lit(True).alias("label_mature"),
    )
    cat, num = feature_names(spec)
    return encode_features(labelled.withColumn("click", F.col("click").cast("int")), spec).select(
        *EXAMPLE_LABELS, *cat, *num, "feature_mapping_id"
    )


def write_world(spark: SparkSession, cfg: Config, log=print) -> dict:
    """Generate ``cfg.generate``'s world and write ``sim/truth``, ``sim/oracle`` and
    ``curated/examples`` (overwrite). Returns the oracle row of dt 'all' as a dict,
    with per-day rows under ``"days"`` ({dt: row})."""
    from pipelines.io.delta import write_delta
    from pipelines.sim.generator import generate_logs
    from pipelines.sim.oracle import format_oracle, world_oracle

    logs = generate_logs(spark, cfg.generate)
    write_delta(logs.truth, cfg.lakehouse.path("truth"), ["dt"])
    write_delta(examples_from_outcomes(logs.outcomes, cfg.features), cfg.lakehouse.path("examples"), ["dt"])
    oracle_path = cfg.lakehouse.path("oracle")
    write_delta(world_oracle(logs.outcomes).coalesce(1), oracle_path)
    rows = {r["dt"]: r.asDict() for r in spark.read.format("delta").load(oracle_path).collect()}
    spark.catalog.clearCache()
    overall = rows.pop("all")
    log(
        f"world seed {cfg.generate.seed}, cvr {cfg.generate.cvr}, selection_bias "
        f"{cfg.generate.selection_bias}: {format_oracle(overall)}"
    )
    return {**overall, "days": rows}
