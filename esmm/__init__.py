"""esmm: entire-space CVR estimation (ESMM, ESCM2) on Spark, Delta, Petastorm and PyTorch.

The few functions a user calls from Python, as Petastorm's ``__init__`` offers its readers::

    from esmm import load_config, train, run_labels, run_features, run_scoring, run_nightly

    cfg = load_config(["my.yaml"], ["train.epochs=2"])
    result = train(cfg)                       # esmm.training.trainer.train
    run_scoring(spark, cfg, "2026-11-03")     # pipelines.scoring.job.run

Each is imported on first use, so ``import esmm`` starts neither torch nor Spark.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> (module, attribute)
_EXPORTS = {
    "load_config": ("esmm.config.loader", "load_config"),
    "train": ("esmm.training.trainer", "train"),
    "TrainResult": ("esmm.training.result", "TrainResult"),
    "run_labels": ("pipelines.labels.job", "run"),
    "run_features": ("pipelines.features.job", "run"),
    "run_scoring": ("pipelines.scoring.job", "run"),
    "run_nightly": ("pipelines.nightly", "run"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'esmm' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # resolved once
    return value
