"""Dates, durations, as-of times and run ids: the one home of the project's time parsing.

Days are ``yyyy-MM-dd`` strings (UTC); durations are strings such as ``"90s"``,
``"5m"``, ``"2h"``, ``"7d"``; an *as-of* time is an aware UTC datetime (a
record counts when ``ts <= as_of``). Bad values raise :class:`ConfigError`
naming the key or option they came from.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid

from esmm.config.errors import ConfigError

US = 1_000_000  # microseconds per second
DAY_S = 86_400
DAY_US = DAY_S * US

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": DAY_S}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def parse_duration(value: str, key: str = "duration") -> int:
    """``"90s"``, ``"5m"``, ``"2h"``, ``"7d"`` -> whole seconds (>= 0)."""
    m = _DURATION.match(str(value))
    if not m:
        raise ConfigError(
            f"{key}: {value!r} is not a duration; write a non-negative number with a unit, "
            f"e.g. '30s', '5m', '2h', '7d'"
        )
    return int(float(m.group(1)) * _UNIT_SECONDS[m.group(2)])


def parse_date(value: str, key: str = "date") -> dt.date:
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError as e:
        raise ConfigError(f"{key}: {value!r} is not a date in yyyy-MM-dd form") from e


def date_range(start: str, end: str) -> list[str]:
    """Inclusive list of ``yyyy-MM-dd`` strings; raises if end < start."""
    d0, d1 = parse_date(start, "start"), parse_date(end, "end")
    if d1 < d0:
        raise ConfigError(f"end date {end} is before start date {start}")
    return [(d0 + dt.timedelta(days=i)).isoformat() for i in range((d1 - d0).days + 1)]


def default_as_of(day: str) -> dt.datetime:
    """The end of the day: the next midnight UTC (``ts <= as_of`` counts)."""
    d = parse_date(day, "date")
    return dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone.utc) + dt.timedelta(days=1)


def parse_as_of(value: str) -> dt.datetime:
    """``2026-11-09`` (end of that day) or an ISO time (naive = UTC) -> aware UTC datetime."""
    s = str(value).strip()
    try:
        if len(s) == 10:
            return default_as_of(s)
        t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except (ValueError, ConfigError) as e:
        raise ConfigError(
            f"--as-of: {value!r} is not a date (yyyy-MM-dd) or an ISO time " f"(yyyy-MM-ddTHH:MM:SS[Z])"
        ) from e
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


def utc_micros(t: dt.datetime) -> int:
    """Epoch microseconds of ``t`` (a naive datetime is taken as UTC)."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return (t - _EPOCH) // dt.timedelta(microseconds=1)


def micros_date(us: int) -> str:
    """The UTC ``yyyy-MM-dd`` of epoch microseconds ``us``."""
    return (dt.date(1970, 1, 1) + dt.timedelta(days=us // DAY_US)).isoformat()


def new_run_id(prefix: str) -> str:
    """A run id: ``<prefix>-<UTC yyyyMMddTHHmmssZ>-<6 hex>``, e.g. ``labels-20261102T031500Z-1a2b3c``.

    Sorts by start time within a prefix; the random tail tells apart runs started
    in the same second.
    """
    return f"{prefix}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def utc_now() -> dt.datetime:
    """Now, timezone-aware in UTC: the one clock of registry rows, locks, runs and quarantine stamps."""
    return dt.datetime.now(dt.timezone.utc)
