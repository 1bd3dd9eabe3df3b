"""The loss records of a run: the progress bar's running averages and the per-step
history (``TrainResult.history``, checkpoints and the artifact's ``losses.json``)."""

from __future__ import annotations

import time

import torch


class Running:
    """Exponential moving averages of the loss parts (for the progress bar)."""

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha, self.values = alpha, {}

    def update(self, parts: dict[str, torch.Tensor]) -> None:
        for k, v in parts.items():
            x = float(v)
            self.values[k] = x if k not in self.values else (1 - self.alpha) * self.values[k] + self.alpha * x


class History:
    """Per-step loss records: parts are summed as tensors (no device sync per step) and
    averaged into one record every ``log_every`` steps."""

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []
        self._sums: dict[str, torch.Tensor] = {}
        self._n, self._epoch = 0, 0

    def add(self, loss, epoch: int) -> None:
        for k, v in {"total": loss.total.detach(), **loss.parts}.items():
            self._sums[k] = self._sums[k] + v if k in self._sums else v.clone()
        self._n, self._epoch = self._n + 1, epoch

    def record(self, step: int, samples: int) -> None:
        if self._n:
            self.records.append(
                {
                    "step": step,
                    "epoch": self._epoch,
                    "samples": samples,
                    "time": time.time(),
                    **{k: float(v) / self._n for k, v in self._sums.items()},
                }
            )
            self._sums, self._n = {}, 0
