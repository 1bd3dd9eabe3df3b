"""The runs table: one row per (run date, step, attempt) of the nightly pipeline.

``ops/runs`` (Delta, ``cfg.lakehouse.path("runs")``)::

    run_date     STRING     yyyy-MM-dd the nightly run is for (``esmm nightly --date``)
    step         STRING     labels | features | train | evaluate | gate | score | report
    status       STRING     running | succeeded | failed | skipped
    started_at   TIMESTAMP  UTC
    finished_at  TIMESTAMP  UTC, NULL while running
    attempt      INT        1, 2, ... (a failed step is retried as the next attempt)
    message      STRING     why it failed or was skipped, or a one-line summary
    run_id       STRING     the invocation that ran this attempt
    outputs      STRING     JSON the later steps read (model id, metrics, counts)

A row is inserted ``running`` when the step starts and updated in place when
it ends (MERGE on run_date, step, attempt), so a successful night shows each
step once and a killed run leaves a ``running`` row the next run marks
``failed`` before retrying. Only the holder of the nightly lock writes here.

Written with ``deltalake`` (delta-rs), not Spark: a status change is a
millisecond commit instead of a multi-second Spark MERGE, and the runner can
see that a date is already complete without starting a JVM. Spark, DuckDB and
any other Delta reader read the table as usual.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Optional

import pyarrow as pa
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from esmm.util.timeutil import utc_now

_TS = pa.timestamp("us", tz="UTC")
RUNS_SCHEMA = pa.schema(
    [
        pa.field("run_date", pa.string()),
        pa.field("step", pa.string()),
        pa.field("status", pa.string()),
        pa.field("started_at", _TS),
        pa.field("finished_at", _TS),
        pa.field("attempt", pa.int32()),
        pa.field("message", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("outputs", pa.string()),
    ]
)

DONE = ("succeeded", "skipped")


def utcnow() -> dt.datetime:
    return utc_now().replace(microsecond=0)


def latest_attempts(runs: DataFrame) -> DataFrame:
    """Keep each (run_date, step)'s highest attempt. Same schema as the input."""
    w = Window.partitionBy("run_date", "step").orderBy(F.col("attempt").desc())
    return runs.withColumn("_rn", F.row_number().over(w)).where("_rn = 1").drop("_rn")


class RunsTable:
    """Reads and writes ``ops/runs`` at ``path`` (a local path or an object-store URI)."""

    def __init__(self, path: str, storage_options: Optional[dict[str, str]] = None):
        self.path, self.storage_options = path, storage_options

    def _table(self):
        from deltalake import DeltaTable

        return DeltaTable(self.path, storage_options=self.storage_options)

    def ensure(self) -> None:
        from deltalake import DeltaTable

        DeltaTable.create(self.path, RUNS_SCHEMA, mode="ignore", name="runs", storage_options=self.storage_options)

    def rows(self, run_date: Optional[str] = None) -> list[dict[str, Any]]:
        """All rows (of ``run_date``), as dicts, ordered by run_date, step, attempt."""
        filters = [("run_date", "=", run_date)] if run_date else None
        rows = self._table().to_pyarrow_table(filters=filters).to_pylist()
        return sorted(rows, key=lambda r: (r["run_date"], r["step"], r["attempt"]))

    def history(self, run_date: str) -> dict[str, dict[str, Any]]:
        """step -> its latest attempt's row (``outputs`` parsed) for ``run_date``."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.rows(run_date):  # sorted by attempt: the last one wins
            r = dict(r, outputs=json.loads(r["outputs"]) if r["outputs"] else {})
            out[r["step"]] = r
        return out

    def _upsert(self, row: dict[str, Any]) -> None:
        src = pa.Table.from_pylist([row], schema=RUNS_SCHEMA)
        (
            self._table()
            .merge(
                src,
                "t.run_date = s.run_date AND t.step = s.step AND t.attempt = s.attempt",
                source_alias="s",
                target_alias="t",
                large_dtypes=False,
            )
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )

    def start(self, run_date: str, step: str, attempt: int, run_id: str) -> dict[str, Any]:
        row = {
            "run_date": run_date,
            "step": step,
            "status": "running",
            "started_at": utcnow(),
            "finished_at": None,
            "attempt": attempt,
            "message": None,
            "run_id": run_id,
            "outputs": None,
        }
        self._upsert(row)
        return row

    def finish(
        self,
        started: dict[str, Any],
        status: str,
        message: Optional[str] = None,
        outputs: Optional[dict[str, Any]] = None,
    ) -> None:
        assert status in ("succeeded", "failed", "skipped"), status
        row = dict(
            started,
            status=status,
            finished_at=utcnow(),
            message=message,
            outputs=json.dumps(outputs or {}, sort_keys=True, default=str),
        )
        self._upsert(row)

    def abandon_running(self, run_date: str, by_run_id: str) -> int:
        """Mark ``running`` rows of ``run_date`` failed: their run died (we hold the lock)."""
        stuck = [r for r in self.rows(run_date) if r["status"] == "running"]
        for r in stuck:
            self.finish(
                r,
                "failed",
                message=f"abandoned: its run {r['run_id']} ended without "
                f"finishing the step (found by run {by_run_id})",
            )
        return len(stuck)
