"""The label rules as one plain SQL query: an independent reference for tests and benchmarks.

:mod:`pipelines.labels.job` is the production implementation (DataFrames, quarantine,
ownership of every record). This module writes the *labelling* rules a second
time, as the SQL an analyst would write over the three raw tables, in the common
subset of Spark SQL and DuckDB. The property test compares the two on generated
logs; the benchmark times the same query in DuckDB.

It deduplicates globally (the earliest copy of an id wherever it lies), which
equals the job's scoped deduplication whenever copies share their ``ts`` (as
at-least-once redelivery does). Output: one row per labelled impression of the
day: ``impression_id``, ``ts``, ``first_click_ts``, ``conversion_ts`` (NULL when
no click / conversion).
"""

from __future__ import annotations

import datetime as dt

from pipelines.labels.rules import Windows


def _ok_id(c: str) -> str:
    return f"({c} IS NOT NULL AND trim({c}) <> '')"


def _visible(as_of: str, w: Windows) -> str:
    """ts present, arrived in time (date(ts) <= dt <= date(ts + L)), and ts <= as_of."""
    return (
        f"ts IS NOT NULL AND dt IS NOT NULL AND ts <= TIMESTAMP '{as_of}' "
        f"AND dt >= CAST(CAST(ts AS DATE) AS STRING) "
        f"AND dt <= CAST(CAST(ts + INTERVAL {w.max_lateness} SECOND AS DATE) AS STRING)"
    )


def label_sql(impressions: str, clicks: str, conversions: str, day: str, as_of: dt.datetime, w: Windows) -> str:
    """SQL labelling ``day`` from three table expressions (view names or ``read_parquet(...)``).

    ``as_of`` is an aware or naive-UTC datetime; the session time zone must be UTC.
    """
    a = as_of.astimezone(dt.timezone.utc).replace(tzinfo=None).isoformat(sep=" ")
    vis = _visible(a, w)
    S, W, T = w.click_skew, w.click_window, w.attribution_window
    return f"""
WITH imp AS (
  SELECT impression_id, min(ts) AS ts, min_by(user_id, ts) AS user_id, min_by(item_id, ts) AS item_id
  FROM {impressions}
  WHERE {_ok_id('impression_id')} AND {_ok_id('user_id')} AND {_ok_id('item_id')} AND {vis}
  GROUP BY impression_id
), clk AS (
  SELECT click_id, min(ts) AS ts, min_by(impression_id, ts) AS impression_id
  FROM {clicks}
  WHERE {_ok_id('click_id')} AND {_ok_id('impression_id')} AND {vis}
  GROUP BY click_id
), valid_clk AS (
  SELECT c.click_id, c.ts, c.impression_id, i.user_id, i.item_id
  FROM clk c JOIN imp i ON c.impression_id = i.impression_id
  WHERE c.ts >= i.ts - INTERVAL {S} SECOND AND c.ts <= i.ts + INTERVAL {W} SECOND
), cnv AS (
  SELECT conversion_id, min(ts) AS ts, min_by(click_id, ts) AS click_id,
         min_by(user_id, ts) AS user_id, min_by(item_id, ts) AS item_id
  FROM {conversions}
  WHERE {_ok_id('conversion_id')} AND {vis}
  GROUP BY conversion_id
), by_click_id AS (
  SELECT v.ts, k.impression_id
  FROM cnv v JOIN valid_clk k ON v.click_id = k.click_id
  WHERE v.ts >= k.ts AND v.ts <= k.ts + INTERVAL {T} SECOND
), touch AS (
  SELECT v.ts, k.impression_id,
         row_number() OVER (PARTITION BY v.conversion_id ORDER BY k.ts DESC, k.click_id DESC) AS rn
  FROM cnv v JOIN valid_clk k ON v.user_id = k.user_id AND v.item_id = k.item_id
  WHERE NOT {_ok_id('v.click_id')} AND v.ts >= k.ts AND v.ts <= k.ts + INTERVAL {T} SECOND
), attributed AS (
  SELECT impression_id, ts FROM by_click_id
  UNION ALL SELECT impression_id, ts FROM touch WHERE rn = 1
)
SELECT d.impression_id, d.ts, c.first_click_ts, a.conversion_ts
FROM imp d
LEFT JOIN (SELECT impression_id, min(ts) AS first_click_ts FROM valid_clk GROUP BY impression_id) c
  ON d.impression_id = c.impression_id
LEFT JOIN (SELECT impression_id, min(ts) AS conversion_ts FROM attributed GROUP BY impression_id) a
  ON d.impression_id = a.impression_id
WHERE CAST(CAST(d.ts AS DATE) AS STRING) = '{day}'
"""


def count_sql(label_query: str) -> str:
    """Counts of a :func:`label_sql` result: rows, clicks, conversions."""
    return (
        f"SELECT count(*) AS n, count(first_click_ts) AS clicks, count(conversion_ts) AS conversions "
        f"FROM ({label_query}) q"
    )
