"""The label job's per-day report: what became of each source's raw rows, and the log lines.

:func:`count_fates` folds the ``fates`` rows of :func:`pipelines.labels.job.build_labels`
(source, fate, reason, n) into one :class:`SourceCounts` per source;
:class:`DayReport` adds the written partition's totals and prints them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pipelines.io.contract import SOURCES
from pipelines.labels.rules import REASONS


@dataclass
class SourceCounts:
    source: str
    rows_in: int = 0  # raw rows the day owns (excluding events after as_of)
    duplicates: int = 0
    out: int = 0  # labelled impressions / valid clicks / attributed conversions
    quarantined: dict[str, int] = field(default_factory=dict)
    after_as_of: int = 0
    detail: dict[str, int] = field(default_factory=dict)  # conversions: click_id / last_touch

    @property
    def gated(self) -> int:
        return sum(n for r, n in self.quarantined.items() if REASONS.get(r, (True, ""))[0])

    @property
    def bad_fraction(self) -> float:
        distinct = self.rows_in - self.duplicates
        return self.gated / distinct if distinct > 0 else 0.0


@dataclass
class DayReport:
    day: str
    as_of: dt.datetime
    run_id: str
    sources: dict[str, SourceCounts]
    label_rows: int = 0
    clicks: int = 0
    conversions: int = 0
    mature: int = 0
    seconds: float = 0.0
    written: bool = False
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds

    def lines(self) -> list[str]:
        out = [f"labels {self.day} as of {self.as_of.isoformat()} (run {self.run_id})"]
        for s in SOURCES:
            c = self.sources[s]
            out.append(
                f"  {s:<12} in {c.rows_in:>11,}  duplicates removed {c.duplicates:>9,}  "
                f"out {c.out:>11,}  quarantined {sum(c.quarantined.values()):>8,}  "
                f"gated {c.bad_fraction:7.3%}"
                + (f"  (after as-of, not counted: {c.after_as_of:,})" if c.after_as_of else "")
                + ("  [" + ", ".join(f"{k} {v:,}" for k, v in sorted(c.detail.items())) + "]" if c.detail else "")
            )
        reasons = [(s, r, n) for s in SOURCES for r, n in sorted(self.sources[s].quarantined.items())]
        if reasons:
            out.append(
                "  quarantined by reason: "
                + ", ".join(
                    f"{s}/{r} {n:,}{'' if REASONS.get(r, (True,))[0] else ' (not gated)'}" for s, r, n in reasons
                )
            )
        if not self.written:
            out.append(
                f"  curated/labels dt={self.day}: not written "
                f"({self.sources['impressions'].out:,} impressions would have been labelled)"
            )
            return out
        out.append(
            f"  curated/labels dt={self.day}: {self.label_rows:,} rows, click {self.clicks:,}, "
            f"conversion {self.conversions:,}, mature {self.mature:,}"
            + (f"; {self.seconds:.1f}s, {self.label_rows / self.seconds:,.0f} rows/s" if self.seconds > 0 else "")
        )
        if self.timings:
            out.append("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in self.timings.items()))
        return out


def count_fates(fates: list) -> dict[str, SourceCounts]:
    """Fold collected ``fates`` rows into per-source counts."""
    out = {s: SourceCounts(s) for s in SOURCES}
    for r in fates:
        c = out[r["source"]]
        if r["fate"] == "after_as_of":
            c.after_as_of += r["n"]
            continue
        c.rows_in += r["n"]
        if r["fate"] == "duplicate":
            c.duplicates += r["n"]
        elif r["fate"] == "quarantined":
            c.quarantined[r["reason"]] = c.quarantined.get(r["reason"], 0) + r["n"]
        else:
            c.out += r["n"]
            if r["reason"]:
                c.detail[r["reason"]] = c.detail.get(r["reason"], 0) + r["n"]
    return out
