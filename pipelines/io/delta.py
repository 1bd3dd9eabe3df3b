"""Reading and writing tables at the job edges (Delta, JSON lines, Parquet).

Transforms never read or write; jobs call these at their start and end.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from esmm.config.schema import Config, FeatureSpec
from pipelines.io.contract import CORRUPT_COLUMN, RAW_REQUIRED, check_raw, feature_columns
from pipelines.io.errors import reading, reading_log, writing


def read_delta(
    spark: SparkSession, path: str, version: int | None = None, pin: bool = False, name: str = "Delta"
) -> DataFrame:
    """Read a Delta table, with a clear error when the location holds none.

    ``pin``: read the newest version *now* (see :func:`read_raw`) rather than whatever
    is newest at each later action. A log that cannot be loaded (a truncated commit
    file) is a :class:`pipelines.io.errors.TableReadError` naming ``name``, the
    table and the commit file.
    """
    with reading_log(name, path):
        if not is_delta(spark, path):
            raise FileNotFoundError(
                f"no Delta table at {path}; run the job that writes it first " f"(see README: pipeline order)"
            )
        if pin and version is None:
            version = latest_version(spark, path)
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(path)


def latest_version(spark: SparkSession, path: str) -> int:
    """The newest committed version of the Delta table at ``path``."""
    from delta.tables import DeltaTable

    return int(DeltaTable.forPath(spark, path).history(1).select("version").first()[0])


def read_raw(spark: SparkSession, cfg: Config, source: str, pin: bool = False) -> DataFrame:
    """Read a raw source in its configured format and check it against the contract.

    JSON sources are read with ``PERMISSIVE`` mode and a ``_corrupt_record`` column
    so that corrupt lines can be quarantined by the label job rather than dropped.
    ``pin``: a Delta source is read at its newest version *now*, so a job that reads
    the frame several times sees one snapshot even while producers keep appending
    (an unpinned Delta read resolves the newest version at each action). Folders of
    JSON or Parquet files have no snapshots: land files atomically (write, then rename).
    """
    src = getattr(cfg.sources, source)
    path = raw_path(cfg, source)
    if src.format == "delta":
        df = read_delta(spark, path, pin=pin, name=f"raw {source}")
    elif src.format == "parquet":
        df = spark.read.parquet(path)
        # Partition discovery infers dt=yyyy-MM-dd folders as DATE; the contract says STRING.
        # (A filter on the cast column still prunes partitions.)
        if "dt" in df.columns and not isinstance(df.schema["dt"].dataType, T.StringType):
            df = df.withColumn("dt", F.date_format(F.col("dt"), "yyyy-MM-dd"))
    else:
        schema = raw_json_schema(source, cfg.features)
        df = (
            spark.read.schema(schema)
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT_COLUMN)
            .json(path)
        )
    return check_raw(df, source, cfg.features, path)


def raw_path(cfg: Config, source: str) -> str:
    """Where the raw ``source`` (impressions, clicks, conversions) is read from."""
    return getattr(cfg.sources, source).path or cfg.lakehouse.path(source)


def reading_raw(spark: SparkSession, cfg: Config, sources: tuple[str, ...]):
    """A context in which a failure to read one of the raw ``sources`` (a corrupt or
    truncated Parquet file) becomes a :class:`pipelines.io.errors.TableReadError`
    naming the table and the file."""

    def lister(source: str):
        def files() -> list[str]:
            src = getattr(cfg.sources, source)
            if src.format == "json":
                return []  # corrupt lines are quarantined, not failures
            reader = spark.read.format(src.format)
            return list(reader.load(raw_path(cfg, source)).inputFiles())

        return files

    return reading({f"raw {s}": (raw_path(cfg, s), lister(s)) for s in sources})


def raw_json_schema(source: str, spec: FeatureSpec) -> T.StructType:
    """Schema used to parse JSON-lines raw files (features as string/double)."""
    fields = [T.StructField(n, tp, True) for n, tp in RAW_REQUIRED[source]]
    if source == "impressions":
        have = {n for n, _ in RAW_REQUIRED[source]}
        for col, kind in feature_columns(spec):
            if col not in have:
                fields.append(T.StructField(col, T.StringType() if kind == "categorical" else T.DoubleType(), True))
                have.add(col)
    fields.append(T.StructField(CORRUPT_COLUMN, T.StringType(), True))
    return T.StructType(fields)


def write_delta(
    df: DataFrame,
    path: str,
    partition_by: list[str] | None = None,
    replace_where: str | None = None,
    user_metadata: str | None = None,
    merge_schema: bool = False,
) -> None:
    """Atomically write ``df`` as a Delta table (a storage fault: :class:`pipelines.io.errors.TableWriteError`).

    With ``replace_where`` only the matching rows are replaced (one Delta commit:
    a reader sees the old or the new version, never a half-written one);
    without it the whole table is overwritten. The schema may evolve.
    ``user_metadata`` tags the commit (see :func:`commit_metrics`). ``merge_schema``
    lets a ``replace_where`` write add new columns to an existing table.
    """
    w = df.write.format("delta").mode("overwrite")
    if partition_by:
        w = w.partitionBy(*partition_by)
    if replace_where is not None:
        w = w.option("replaceWhere", replace_where)
        if merge_schema:
            w = w.option("mergeSchema", "true")
    else:
        w = w.option("overwriteSchema", "true")
    if user_metadata:
        w = w.option("userMetadata", user_metadata)
    with writing(path):
        w.save(path)


_USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"


def merge_delta(
    df: DataFrame, path: str, on: str, delete_unmatched_where: str | None = None, user_metadata: str | None = None
) -> None:
    """Upsert ``df`` (alias ``s``) into the Delta table at ``path`` (alias ``t``) in one commit.

    Rows matching ``on`` are updated, the others inserted; with
    ``delete_unmatched_where`` the target rows meeting it that ``df`` lacks are
    deleted, so the slice becomes exactly ``df``. ``user_metadata`` tags the
    commit (a MERGE takes it from the session conf only: set for this call).
    """
    from delta.tables import DeltaTable

    spark = df.sparkSession
    merge = (
        DeltaTable.forPath(spark, path)
        .alias("t")
        .merge(df.alias("s"), on)
        .whenMatchedUpdateAll()
        .whenNotMatchedInsertAll()
    )
    if delete_unmatched_where is not None:
        merge = merge.whenNotMatchedBySourceDelete(condition=delete_unmatched_where)
    prev = spark.conf.get(_USER_METADATA, None)
    if user_metadata:
        spark.conf.set(_USER_METADATA, user_metadata)
    try:
        with writing(path):
            merge.execute()
    finally:
        if prev is None:
            spark.conf.unset(_USER_METADATA)
        else:
            spark.conf.set(_USER_METADATA, prev)


def is_delta(spark: SparkSession, path: str) -> bool:
    """Whether ``path`` holds a Delta table."""
    from delta.tables import DeltaTable

    return DeltaTable.isDeltaTable(spark, path)


def commit_metrics(spark: SparkSession, path: str, user_metadata: str, lookback: int = 20) -> dict | None:
    """``operationMetrics`` of the newest of the last ``lookback`` commits tagged
    ``user_metadata``; None when there is none."""
    from delta.tables import DeltaTable

    history = DeltaTable.forPath(spark, path).history(lookback)
    for r in history.select("userMetadata", "operationMetrics").collect():
        if r["userMetadata"] == user_metadata:
            return r["operationMetrics"] or {}
    return None


def delete_where(spark: SparkSession, path: str, condition: str) -> bool:
    """Delete the rows matching the SQL ``condition`` in one commit (none when nothing matches).

    Returns False, deleting nothing, when ``path`` holds no Delta table yet.
    """
    from delta.tables import DeltaTable

    if not is_delta(spark, path):
        return False
    with writing(path):
        DeltaTable.forPath(spark, path).delete(condition)
    return True
