"""What a training run did: :class:`TrainResult`, and its one JSON form.

``esmm train --result-json PATH`` writes rank 0's result with :meth:`TrainResult.write_json`;
a launcher that ran the training in another process (the nightly under torchrun) reads
it back with :meth:`TrainResult.read_json`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from esmm.util.files import atomic_write_json


@dataclass
class TrainResult:
    """What a run did. Ranks other than 0 return their own counts and no model id."""

    rank: int
    world_size: int
    model_id: Optional[str]
    artifact_dir: Optional[str]
    examples_version: int
    steps: int
    samples: int  # rows this rank trained on (over all epochs, including before a resume)
    seconds: float
    samples_per_s: float
    resumed_from_step: int
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Optional[str] = None
    total_samples: int = 0  # rows trained on by all ranks together
    # Rank 0: one record per ``log_every`` steps (and the last step), the mean loss parts of
    # rank 0's batches since the previous record: {"step", "epoch", "samples", "time",
    # "total", <part>: float ...}; also in the artifact's losses.json.
    history: list[dict[str, float]] = field(default_factory=list)
    mlflow_run_id: Optional[str] = None
    # sha256 of this rank's final parameters: equal on every rank while the replicas stay in sync.
    param_digest: str = ""

    def write_json(self, path: str | Path) -> Path:
        """This result as JSON at ``path``, written whole or not at all (the history is left
        out: it is in the artifact's ``losses.json``)."""
        body = {k: v for k, v in dataclasses.asdict(self).items() if k != "history"}
        return atomic_write_json(path, body, default=float)

    @classmethod
    def read_json(cls, path: str | Path) -> "TrainResult":
        """The result :meth:`write_json` wrote. Raises FileNotFoundError, or ValueError naming
        the file when it is not a training result."""
        body: dict[str, Any] = json.loads(Path(path).read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in body
        )
        if missing:
            raise ValueError(f"{path}: not a training result (missing {missing})")
        return cls(**{k: v for k, v in body.items() if k in names})
