"""The raw table contract, and reading/writing tables at the job edges.

Raw tables (Delta, partitioned by ``dt`` STRING ``yyyy-MM-dd`` = the UTC date
the event *arrived*; ``ts`` is the UTC event time, so a late event has a ``dt``
after the date of its ``ts``)::

    raw/impressions  impression_id STRING, ts TIMESTAMP, user_id STRING, item_id STRING,
                     <feature columns of the feature spec: categorical STRING or integer,
                      numeric DOUBLE>, dt STRING
    raw/clicks       click_id STRING, impression_id STRING, ts TIMESTAMP, dt STRING
    raw/conversions  conversion_id STRING, click_id STRING (NULL: attribute last-touch),
                     user_id STRING, item_id STRING, ts TIMESTAMP, value DOUBLE (nullable),
                     dt STRING

Each record's id column is :data:`ID_COLUMN`; a JSON source's unparseable line
lands in :data:`CORRUPT_COLUMN`. Extra columns are allowed; a missing required column, or one of an incompatible
type, is a :class:`ContractError` naming the table and column.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import types as T

from esmm.config.schema import FeatureSpec

SOURCES = ("impressions", "clicks", "conversions")
ID_COLUMN = {"impressions": "impression_id", "clicks": "click_id", "conversions": "conversion_id"}
# Ids a record of each source cannot be used without (a conversion without a click_id
# also needs user_id and item_id for last-touch attribution).
REQUIRED_IDS = {
    "impressions": ("impression_id", "user_id", "item_id"),
    "clicks": ("click_id", "impression_id"),
    "conversions": ("conversion_id",),
}
CORRUPT_COLUMN = "_corrupt_record"  # the unparseable line of a JSON source (PERMISSIVE mode)

_INTEGRAL = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
_NUMERIC = _INTEGRAL + (T.FloatType, T.DoubleType, T.DecimalType)

RAW_REQUIRED: dict[str, list[tuple[str, T.DataType]]] = {
    "impressions": [
        ("impression_id", T.StringType()),
        ("ts", T.TimestampType()),
        ("user_id", T.StringType()),
        ("item_id", T.StringType()),
        ("dt", T.StringType()),
    ],
    "clicks": [
        ("click_id", T.StringType()),
        ("impression_id", T.StringType()),
        ("ts", T.TimestampType()),
        ("dt", T.StringType()),
    ],
    "conversions": [
        ("conversion_id", T.StringType()),
        ("click_id", T.StringType()),
        ("user_id", T.StringType()),
        ("item_id", T.StringType()),
        ("ts", T.TimestampType()),
        ("value", T.DoubleType()),
        ("dt", T.StringType()),
    ],
}


class ContractError(ValueError):
    """A table lacks a required column or has it with an incompatible type."""


def _compatible(actual: T.DataType, expected: T.DataType) -> bool:
    if isinstance(expected, T.DoubleType):
        return isinstance(actual, _NUMERIC)
    return type(actual) is type(expected)


def feature_columns(spec: FeatureSpec) -> list[tuple[str, str]]:
    """(raw column, kind) for every feature of the spec; kind is 'categorical' or 'numeric'."""
    cols = [(f.source, "categorical") for f in spec.categorical]
    cols += [(f.source, "numeric") for f in spec.numeric]
    return cols


def check_raw(df: DataFrame, source: str, spec: FeatureSpec, where: str) -> DataFrame:
    """Raise :class:`ContractError` unless ``df`` satisfies the ``source`` contract.

    ``where`` names the table or folder in the message, so the user knows what to fix.
    """
    fields = {f.name: f.dataType for f in df.schema.fields}
    required = list(RAW_REQUIRED[source])
    problems = []
    for name, tp in required:
        if name not in fields:
            problems.append(f"missing required column {name!r} ({tp.simpleString()})")
        elif not _compatible(fields[name], tp):
            problems.append(f"column {name!r} is {fields[name].simpleString()}, " f"expected {tp.simpleString()}")
    if source == "impressions":
        for col, kind in feature_columns(spec):
            if col in ("user_id", "item_id"):
                continue
            if col not in fields:
                problems.append(f"missing feature column {col!r} ({kind}) declared in the feature spec")
            elif kind == "categorical" and not isinstance(fields[col], (T.StringType,) + _INTEGRAL):
                problems.append(
                    f"categorical column {col!r} is {fields[col].simpleString()}, " f"expected string or integer"
                )
            elif kind == "numeric" and not isinstance(fields[col], _NUMERIC):
                problems.append(f"numeric column {col!r} is {fields[col].simpleString()}, " f"expected double")
    if problems:
        raise ContractError(
            f"raw {source} table {where}: " + "; ".join(problems) + f". Present columns: {sorted(fields)}"
        )
    return df
