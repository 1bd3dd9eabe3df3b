"""The ingest's bad-fraction gate: too many quarantined records fail the ingest.

A file whose quarantined share is above the limit is more likely the wrong file,
a truncated download or a changed layout than a few bad lines, and its good
rows would train a model on a biased remainder. The caller writes the quarantine
first (so the bad records can be inspected), calls :func:`check_bad_fraction`,
and writes its output table only when it returns.
"""

from __future__ import annotations


class IngestGateError(RuntimeError):
    """A source's quarantined share exceeds the limit; the output table was not written."""


def check_bad_fraction(
    reasons: dict[str, dict[str, int]],
    read: dict[str, tuple[int, str]],
    day: str,
    max_bad_fraction: float,
    key: str = "aliccp.max_bad_fraction",
) -> None:
    """Raise :class:`IngestGateError` for the first source whose quarantined share is above
    ``max_bad_fraction`` (the config ``key``).

    ``reasons``: source -> reason -> quarantined records; ``read``: source -> (records
    read, the file(s) they came from). A source with no record read never fails.
    """
    for source, (n_read, files) in read.items():
        bad = sum(reasons.get(source, {}).values())
        if n_read and bad / n_read > max_bad_fraction:
            top = sorted(reasons[source].items(), key=lambda kv: (-kv[1], kv[0]))[:3]
            raise IngestGateError(
                f"esmm ingest {files}: {bad:,} of {n_read:,} {source} records ({bad / n_read:.2%}) "
                f"quarantined, above {key}={max_bad_fraction:.2%}; top reasons: "
                + ", ".join(f"{r} {n:,}" for r, n in top)
                + f". curated/labels dt={day} was not written (an earlier ingest of that date, if any, "
                f"is untouched); this run's quarantine rows of dt={day} were written, to inspect. "
                f"Fix the file, or raise {key} if this is expected."
            )
