"""The nightly pipeline: the one command a scheduler calls, ``esmm nightly --date D``.

* :mod:`.runner`: the run loop, its context, result and exit codes; it is given its steps;
* :mod:`.plan`: which dates each step works on;
* :mod:`.steps`: the steps (labels, features, train, evaluate, gate, score, report);
* :mod:`.lock`: the one-run-at-a-time file lock;
* :mod:`.runs`: the runs table (one row per date, step and attempt).

Importing this package imports none of them (the CLI's parser stays light);
:func:`run` is the entry the CLI calls.
"""

from __future__ import annotations

from typing import Any, Callable


def run(cfg, run_date: str, get_spark: Callable[[], Any], **kwargs):
    """:func:`runner.run_nightly` with :func:`steps.default_steps`; returns its ``NightlyResult``."""
    from pipelines.nightly.runner import run_nightly
    from pipelines.nightly.steps import default_steps

    return run_nightly(cfg, run_date, get_spark, default_steps(), **kwargs)
