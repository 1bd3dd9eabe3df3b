"""SparkSession factory: local Spark with Delta by default, the cluster's settings under spark-submit.

Delta needs its JVM jars (``io.delta:delta-spark_2.12`` and ``delta-storage``).
``scripts/setup.sh`` fetches them once with Maven into ``ESMM_JARS_DIR``
(default ``~/.cache/esmm/jars``); when they are there we pass them as
``spark.jars`` so no Ivy resolution happens at session start. Otherwise we fall
back to ``configure_spark_with_delta_pip``, which resolves them through Ivy.
Under spark-submit the cluster provides the jars (``--packages`` or an image),
its master and its settings; we only add Delta's SQL extension and catalog.
"""

from __future__ import annotations

import os
from pathlib import Path

from pyspark.sql import SparkSession

from esmm.config.schema import SparkConfig

DELTA_VERSION = "3.3.3"
DELTA_JARS = (f"delta-spark_2.12-{DELTA_VERSION}.jar", f"delta-storage-{DELTA_VERSION}.jar")

_DELTA_SQL = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def jars_dir() -> Path:
    return Path(os.environ.get("ESMM_JARS_DIR", Path.home() / ".cache" / "esmm" / "jars"))


def cached_delta_jars() -> list[str] | None:
    """Paths of the cached Delta jars, or None when any is missing."""
    paths = [jars_dir() / j for j in DELTA_JARS]
    return [str(p) for p in paths] if all(p.is_file() for p in paths) else None


def launched_by_spark_submit() -> bool:
    """True when spark-submit (or the pyspark shell) started this Python process.

    spark-submit launches the JVM first and hands Python its gateway through
    ``PYSPARK_GATEWAY_PORT``; the master and settings it was given are then the
    JVM's, and we must not replace them with local defaults.
    """
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark(cfg: SparkConfig, extra_conf: dict[str, str] | None = None) -> SparkSession:
    """Return a SparkSession configured for Delta.

    Locally: ``cfg.master`` (default ``local[*]``), ``cfg.local_conf`` sized for a
    laptop, Delta jars from the cache. Under spark-submit: the cluster's master
    and settings win; only ``cfg.conf`` and Delta's SQL settings are added.
    """
    builder = SparkSession.builder.appName(cfg.app_name)
    settings: dict[str, str] = dict(_DELTA_SQL)
    if launched_by_spark_submit():
        settings.update(cfg.conf)
        settings.update(extra_conf or {})
        for k, v in settings.items():
            builder = builder.config(k, v)
        return builder.getOrCreate()

    settings.update(cfg.local_conf)
    settings.update(cfg.conf)
    settings.update(extra_conf or {})
    builder = builder.master(cfg.master)
    for k, v in settings.items():
        builder = builder.config(k, v)
    jars = cached_delta_jars()
    if jars:
        builder = builder.config("spark.jars", ",".join(jars))
    else:
        from delta import configure_spark_with_delta_pip

        builder = configure_spark_with_delta_pip(builder)
    return builder.getOrCreate()
