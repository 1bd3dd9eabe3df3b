"""The nightly date plan: which dates each step works on, for a run date.

For run date ``D`` (``H`` = ceil((click_window + attribution_window +
max_lateness) / 1 day), 9 days by default): a day ``d`` has final labels once
every click and conversion it can get has arrived, i.e. ``d <= D - H``. So the
label refresh covers ``[D - H, D]`` (``D - H`` just became final), the newest
mature day is ``D - H`` (``nightly.eval_day = mature``), and the candidate trains
on the ``train_days`` days before it. With ``calibration.enabled`` the
``calibration.days`` mature days before the evaluation day are the calibration
days: held out of training (the window is the ``train_days`` days before them),
the maps are fitted on them, and the gate judges the calibrated scores on the
evaluation day, never on a day the maps were fitted on. Several calibration days
because the level of pCTCVR is set by the conversions they hold: a day with N
conversions fixes it only to about +-1/sqrt(N) (100 conversions: +-10%). ``nightly.eval_day = latest`` evaluates on
``D`` itself with whatever labels exist: only for demos on short logs, and the
report says the labels are immature.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Optional

from esmm.config.schema import Config, LabelConfig, NightlyConfig
from esmm.util.timeutil import parse_date


def _days(d: str, n: int) -> str:
    return (parse_date(d) + dt.timedelta(days=n)).isoformat()


def label_horizon_days(labels: LabelConfig) -> int:
    """Days after which an impression day's labels can no longer change (``H``,
    :attr:`pipelines.labels.rules.Windows.horizon_days`)."""
    from pipelines.labels.rules import Windows

    return Windows.from_config(labels).horizon_days


@dataclass(frozen=True)
class NightlyPlan:
    """Which dates each step works on, for run date ``run_date``."""

    run_date: str
    refresh_dates: list[str]  # labels + features
    eval_date: Optional[str]  # None: no usable evaluation day yet
    eval_mature: bool  # False when eval_day = latest (labels still open)
    train_dates: list[str]
    score_dates: list[str]
    calibration_dates: tuple[str, ...] = ()  # empty: no calibration (disabled, or no mature day)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan_dates(
    run_date: str,
    available: list[str],
    labels: LabelConfig,
    nightly: NightlyConfig,
    calibrate: bool = False,
    calibration_days: int = 1,
) -> NightlyPlan:
    """Pure date arithmetic (see the module docstring). ``available``: days with impressions;
    ``calibrate``: hold out up to ``calibration_days`` calibration days (``calibration.enabled``),
    always leaving at least one day to train on."""
    parse_date(run_date, "--date")
    avail = sorted(d for d in set(available) if d <= run_date)
    h = label_horizon_days(labels)
    refresh = [d for d in avail if d >= _days(run_date, -h)]
    if nightly.eval_day == "latest":
        eval_date, mature = (run_date if run_date in avail else None), False
    else:
        eligible = [d for d in avail if d <= _days(run_date, -h)]
        eval_date, mature = (eligible[-1] if eligible else None), True
    train, cal_dates = [], ()
    if eval_date is not None:
        before = [d for d in avail if d < eval_date]
        # Every day before a mature day is mature; keep at least one day to train on.
        if calibrate and mature and len(before) >= 2:
            cal_dates = tuple(before[-min(calibration_days, len(before) - 1) :])
        end = cal_dates[0] if cal_dates else eval_date
        train = [d for d in avail if _days(end, -nightly.train_days) <= d < end]
    score = [_days(run_date, -i) for i in range(nightly.score_days - 1, -1, -1)]
    return NightlyPlan(run_date, refresh, eval_date, mature, train, score, cal_dates)


_DT_IN_PATH = re.compile(r"/dt=(\d{4}-\d{2}-\d{2})/")


def dates_in_paths(files) -> set[str]:
    """The ``dt=yyyy-MM-dd`` partition values named by data file paths."""
    return {m.group(1) for f in files for m in [_DT_IN_PATH.search(f)] if m}


def available_dates(spark, cfg: Config) -> list[str]:
    """Arrival days present in the raw impressions (from file paths: no data is read)."""
    from pipelines.io.delta import read_raw

    df = read_raw(spark, cfg, "impressions")
    found = dates_in_paths(df.inputFiles())
    if not found:  # not laid out by dt= folders: read the column
        found = {r[0] for r in df.select("dt").distinct().collect()}
    return sorted(found)
