"""The table of ``esmm bench perf``: measures from the benchmark scripts' JSON, judged against the aims.

Pure functions over plain dicts (no Spark, no torch), so the table, the verdicts and
the README block can be checked on hand-made numbers.

Input ``raw`` (what :mod:`benchmarks.perf` collects; a part that did not run is absent
or ``{"error": "..."}``)::

    labels: {"sizes": [{impressions_per_day, labelled_rows, job_s, job_cold_s, spark_sql_s, duckdb_s,
                        job_phases_s: {phase: s}, jvm_peak_rss_mb}, ...]}      (benchmarks/bench_labels.py)
    train:  {"ratio": {e2e_rows_per_s, in_memory_rows_per_s, ratio, rows},
             "loader": {petastorm_rows_per_s, pyarrow_rows_per_s, ratio, rows},
             "rechub": {rechub_rows_per_s, ratio, rows},
             "memory": [{rows, peak_rss_mb, rows_per_s}, ...]}                 (benchmarks/bench_train.py)
    score:  {"sizes": [{rows, median_ratio, runs: [{spark_phases_s, ...}], jvm_peak_rss_mb}, ...]}
                                                                               (benchmarks/bench_score.py)
    ingest: {"sizes": [{lines, lines_per_s, peak_rss_mb}, ...]}                (benchmarks/bench_ingest.py)

A measure row: ``{key, measure, aim, measured, value, met, where}`` where ``value`` is
the number judged (None when not measured), ``met`` True / False / None (no aim, or not
measured) and ``where`` a "where the time goes" line, given when an aim is not met.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Callable, Optional

README_BEGIN, README_END = "<!-- perf:begin -->", "<!-- perf:end -->"
FLAT = 1.2  # "flat in data size": peak at the largest size / at the smallest, at most this

# key: (aim text, test on the value or None when the issue sets no aim)
AIMS: dict[str, tuple[str, Optional[Callable[[float], bool]]]] = {
    "labels_vs_spark_sql": ("<= 1.3", lambda v: v <= 1.3),
    "labels_vs_duckdb": ("<= 3", lambda v: v <= 3),
    "labels_scale": ("<= 1.2", lambda v: v <= 1.2),
    "labels_fixed_cost": ("<= 5 s", lambda v: v <= 5),
    "loader_vs_pyarrow": ("none set", None),
    "train_vs_in_memory": (">= 0.85", lambda v: v >= 0.85),
    "train_vs_rechub": (">= 3", lambda v: v >= 3),
    "score_vs_in_memory": (">= 0.5", lambda v: v >= 0.5),
    "score_vs_in_memory_large": ("none set", None),
    "trainer_peak_memory": (f"flat (largest / smallest <= {FLAT})", lambda v: v <= FLAT),
    "spark_peak_memory": ("none set", None),
    "ingest_peak_memory": ("none set", None),
}
MEASURES = tuple(AIMS)


def _n(x: float) -> str:
    """A size for a label: 16M, 400k, 2,500."""
    for div, unit in ((1_000_000, "M"), (1_000, "k")):
        if x >= div and x % (div // 10) == 0:
            return f"{x / div:g}{unit}"
    return f"{x:,}"


def _phases(ph: dict) -> str:
    return ", ".join(f"{k} {v:.1f} s" for k, v in ph.items())


def _row(
    key: str, measure: str, measured: str = "", value: Optional[float] = None, where: str = "", missing: str = ""
) -> dict:
    aim, test = AIMS[key]
    if missing:
        return {
            "key": key,
            "measure": measure,
            "aim": aim,
            "measured": missing,
            "value": None,
            "met": None,
            "where": "",
        }
    met = None if test is None or value is None else bool(test(value))
    return {
        "key": key,
        "measure": measure,
        "aim": aim,
        "measured": measured,
        "value": value,
        "met": met,
        "where": where if met is False else "",
    }


def _missing(part: Optional[dict], name: str) -> str:
    if not part:
        return f"not measured: the {name} part did not run"
    if "error" in part:
        return f"not measured: {part['error']}"
    return ""


def label_rows(labels: Optional[dict], fixed_day: int, scale: tuple[int, ...]) -> list[dict]:
    """Label job vs Spark SQL and DuckDB (at the first ``scale`` size), the per-row time along
    ``scale`` (impressions/day), the fixed cost of a ``fixed_day`` day, the JVM's memory."""
    miss = _missing(labels, "label")
    if miss:
        return [
            _row(k, m, missing=miss)
            for k, m in (
                ("labels_vs_spark_sql", "label job / bare Spark SQL, same rules"),
                ("labels_vs_duckdb", "label job / DuckDB, same rules"),
                ("labels_scale", "label job per-row time"),
                ("labels_fixed_cost", f"one {_n(fixed_day)}-impression day, warm"),
                ("spark_peak_memory", "Spark JVM peak RSS, label job"),
            )
        ]
    by = {r["impressions_per_day"]: r for r in labels["sizes"]}
    curve = [n for n in sorted(scale) if n in by]
    if not curve:
        return label_rows({"error": f"no scale size {scale} among the measured {sorted(by)}"}, fixed_day, scale)
    base, top = by[curve[0]], by[curve[-1]]
    engine, own = base["spark_sql_s"] / base["duckdb_s"], base["job_s"] / base["spark_sql_s"]
    at = f"at {_n(curve[0])}/day"
    rows = [
        _row(
            "labels_vs_spark_sql",
            f"label job / bare Spark SQL, same rules ({at})",
            f"{own:.2f} ({base['job_s']:.1f} s / {base['spark_sql_s']:.1f} s)",
            own,
            f"job phases: {_phases(base['job_phases_s'])}; the same rules as one Spark SQL query "
            f"{base['spark_sql_s']:.1f} s",
        ),
        _row(
            "labels_vs_duckdb",
            f"label job / DuckDB, same rules ({at})",
            f"{base['job_s'] / base['duckdb_s']:.2f} ({base['job_s']:.1f} s / {base['duckdb_s']:.1f} s)",
            base["job_s"] / base["duckdb_s"],
            f"engine (bare Spark SQL / DuckDB) {engine:.2f}x, the job's own work (job / bare Spark SQL) " f"{own:.2f}x",
        ),
    ]
    per_row = {n: by[n]["job_s"] / by[n]["labelled_rows"] for n in curve}
    rate = ", ".join(f"{_n(n)}: {by[n]['labelled_rows'] / by[n]['job_s']:,.0f} rows/s" for n in curve)
    if len(curve) > 1:
        scale = per_row[curve[-1]] / per_row[curve[0]]
        rows.append(
            _row(
                "labels_scale",
                f"label job per-row time at {_n(curve[-1])} / at {_n(curve[0])}",
                f"{scale:.2f} ({rate})",
                scale,
                f"job phases at {_n(curve[-1])}: {_phases(top['job_phases_s'])}",
            )
        )
    else:
        rows.append(_row("labels_scale", "label job per-row time", missing="not measured: one size only"))
    if fixed_day in by:
        d = by[fixed_day]
        rows.append(
            _row(
                "labels_fixed_cost",
                f"one {_n(fixed_day)}-impression day, warm",
                f"{d['job_s']:.1f} s (first in the session {d['job_cold_s']:.1f} s)",
                d["job_s"],
                f"job phases: {_phases(d['job_phases_s'])}; the same rules as one Spark SQL query "
                f"{d['spark_sql_s']:.1f} s, DuckDB {d['duckdb_s']:.2f} s",
            )
        )
    else:
        rows.append(_row("labels_fixed_cost", f"one {_n(fixed_day)}-impression day, warm", missing="not measured"))
    mem = [(n, by[n]["jvm_peak_rss_mb"]) for n in curve]
    rows.append(
        _row(
            "spark_peak_memory",
            "Spark JVM (local mode: driver = executors) peak RSS, label job",
            ", ".join(f"{_n(n)}/day: {mb:,} MB" for n, mb in mem) + f" ({mem[-1][1] / max(mem[0][1], 1):.2f}x)",
            mem[-1][1] / max(mem[0][1], 1),
        )
    )
    return rows


def train_rows(train: Optional[dict]) -> list[dict]:
    """Training end to end vs the in-memory step, loader vs pyarrow, vs torch-rechub, trainer memory."""
    miss = _missing(train, "training")
    names = {
        "train_vs_in_memory": "training end to end / in-memory step",
        "loader_vs_pyarrow": "Petastorm loader / raw pyarrow scan, same files, rows/s",
        "train_vs_rechub": "training end to end / torch-rechub ESMM, equal sizes",
        "trainer_peak_memory": "trainer peak RSS as data grows",
    }
    if miss:
        return [_row(k, m, missing=miss) for k, m in names.items()]
    r, ld, rh, mem = train.get("ratio"), train.get("loader"), train.get("rechub"), train.get("memory") or []
    out = []
    if r:
        out.append(
            _row(
                "train_vs_in_memory",
                names["train_vs_in_memory"],
                f"{r['ratio']:.2f} ({r['e2e_rows_per_s']:,.0f} / {r['in_memory_rows_per_s']:,.0f} rows/s)",
                r["ratio"],
                f"the loader alone reads {ld['petastorm_rows_per_s']:,.0f} rows/s" if ld else "loader not measured",
            )
        )
    else:
        out.append(_row("train_vs_in_memory", names["train_vs_in_memory"], missing="not measured"))
    out.append(
        _row(
            "loader_vs_pyarrow",
            names["loader_vs_pyarrow"],
            f"{ld['ratio']:.2f} ({ld['petastorm_rows_per_s']:,.0f} / {ld['pyarrow_rows_per_s']:,.0f})",
            ld["ratio"],
        )
        if ld
        else _row("loader_vs_pyarrow", names["loader_vs_pyarrow"], missing="not measured")
    )
    out.append(
        _row(
            "train_vs_rechub",
            names["train_vs_rechub"],
            f"{rh['ratio']:.2f} ({r['e2e_rows_per_s']:,.0f} / {rh['rechub_rows_per_s']:,.0f} rows/s)",
            rh["ratio"],
        )
        if rh and r
        else _row(
            "train_vs_rechub",
            names["train_vs_rechub"],
            missing=train.get("rechub_missing") or "not measured: no torch-rechub environment",
        )
    )
    if len(mem) > 1:
        growth = mem[-1]["peak_rss_mb"] / mem[0]["peak_rss_mb"]
        out.append(
            _row(
                "trainer_peak_memory",
                names["trainer_peak_memory"],
                ", ".join(f"{_n(m['rows'])} rows: {m['peak_rss_mb']:,.0f} MB" for m in mem) + f" ({growth:.2f}x)",
                growth,
                "peak RSS per size: " + ", ".join(f"{m['rows']:,}: {m['peak_rss_mb']:,.0f} MB" for m in mem),
            )
        )
    else:
        out.append(_row("trainer_peak_memory", names["trainer_peak_memory"], missing="not measured: one size"))
    return out


def score_rows(score: Optional[dict]) -> list[dict]:
    """Scoring vs in-memory inference at the first size (the aim) and at the second."""
    miss = _missing(score, "scoring")
    if miss:
        return [
            _row("score_vs_in_memory", "scoring / in-memory inference", missing=miss),
            _row("score_vs_in_memory_large", "scoring / in-memory inference, larger", missing=miss),
        ]
    out = []
    for key, s in zip(("score_vs_in_memory", "score_vs_in_memory_large"), score["sizes"]):
        runs = sorted(s["runs"], key=lambda r: r["ratio"])
        mid = runs[len(runs) // 2]
        out.append(
            _row(
                key,
                f"scoring / in-memory inference at {_n(s['rows'])} rows",
                f"{s['median_ratio']:.2f} (median of {len(runs)}; {mid['spark_rows_per_s']:,} / "
                f"{mid['in_memory_rows_per_s']:,} rows/s)",
                s["median_ratio"],
                f"scoring job phases: {_phases(mid['spark_phases_s'])}",
            )
        )
    return out


def ingest_rows(ingest: Optional[dict]) -> list[dict]:
    m = "Ali-CCP ingest peak RSS (JVM + Python) as data grows"
    if ingest and ingest.get("skipped"):
        return [_row("ingest_peak_memory", m, missing=f"not measured: {ingest['skipped']}")]
    miss = _missing(ingest, "ingest")
    if miss:
        return [_row("ingest_peak_memory", m, missing=miss)]
    s = ingest["sizes"]
    growth = s[-1]["peak_rss_mb"] / s[0]["peak_rss_mb"]
    return [
        _row(
            "ingest_peak_memory",
            m,
            "; ".join(
                f"{_n(x['lines'])} lines: {x['peak_rss_mb']:,} MB, " f"{x['lines_per_s']:,.0f} lines/s" for x in s
            )
            + f" ({growth:.2f}x)",
            growth,
        )
    ]


def measures(raw: dict, fixed_day: int, scale: tuple[int, ...]) -> list[dict]:
    """Every measure of :data:`MEASURES`, in that order; ``fixed_day`` and ``scale`` are the
    label sizes of the run (impressions/day) as in :data:`benchmarks.sizes.PERF_SIZES`."""
    rows = {
        r["key"]: r
        for r in (
            label_rows(raw.get("labels"), fixed_day, scale)
            + train_rows(raw.get("train"))
            + score_rows(raw.get("score"))
            + ingest_rows(raw.get("ingest"))
        )
    }
    return [rows[k] for k in MEASURES]


def markdown(rows: list[dict]) -> str:
    """The table (measure | aim | measured | met?), then one "where the time goes" line per unmet aim."""

    def met(r):
        return {True: "yes", False: "**no**", None: "-"}[r["met"]]

    def cell(s: str) -> str:
        return s.replace("|", "/")

    lines = ["| measure | aim | measured | met? |", "|---|---|---|---|"]
    lines += [f"| {cell(r['measure'])} | {cell(r['aim'])} | {cell(r['measured'])} | {met(r)} |" for r in rows]
    where = [f"- {r['measure']}: where the time goes: {r['where']}" for r in rows if r["where"]]
    return "\n".join(lines + ([""] + where if where else []))


def machine() -> dict:
    """Cores, RAM, CPU model, load at the start, and the versions that set the numbers."""
    from importlib import metadata

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "absent"

    cpu = ""
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1).strip() if m else ""
    except OSError:
        pass
    ram = 0.0
    try:
        kb = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M)
        ram = int(kb.group(1)) / 2**20 if kb else 0.0
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(ram, 1),
        "cpu": cpu or platform.processor() or "unknown",
        "load_1min": round(os.getloadavg()[0], 1),
        "python": platform.python_version(),
        "torch": version("torch"),
        "pyspark": version("pyspark"),
        "delta_spark": version("delta-spark"),
    }


def machine_line(m: dict) -> str:
    return (
        f"{m['cores']} cores ({m['cpu']}), {m['ram_gib']:g} GiB RAM, load {m['load_1min']} at the start; "
        f"Python {m['python']}, torch {m['torch']}, pyspark {m['pyspark']}, delta-spark {m['delta_spark']}"
    )


def readme_block(rows: list[dict], m: dict, size: str, when: str) -> str:
    return f"`esmm bench perf --size {size}`, {when}, on {machine_line(m)}.\n\n" + markdown(rows)


def replace_between_markers(text: str, block: str, where: str = "README.md") -> str:
    """``text`` with everything between :data:`README_BEGIN` and :data:`README_END` replaced by ``block``."""
    b, e = text.find(README_BEGIN), text.find(README_END)
    if b < 0 or e < 0 or e < b:
        raise ValueError(
            f"{where}: needs the markers {README_BEGIN} and then {README_END} "
            f"(in its performance section) for esmm bench perf --write-readme"
        )
    return text[: b + len(README_BEGIN)] + "\n" + block.strip() + "\n" + text[e:]
