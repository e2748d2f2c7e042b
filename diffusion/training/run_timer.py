"""Where a run's time goes: training steps against everything else (validation, sample grids, FID, checkpoints,
the feature network, the final grid).

Everything outside the optimizer steps is overhead a researcher pays on every run, and it grows with the number
of events, not with the data: ``RunTimer`` adds up the time inside training batches and inside validation (grids
and FID run at the end of a validation) and ``summary`` turns them into the share of the run spent outside
training, written to ``metrics.json`` and said in one line when the run ends.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L


class RunTimer(L.Callback):
    """Wall-clock seconds inside training batches and inside validation loops, from the job's start."""

    def __init__(self, started: float | None = None):
        self.started = time.perf_counter() if started is None else started
        self.train_steps = 0.0
        self.validation = 0.0
        self.before_training: float | None = None  # data, model, feature network, sanity check
        self.training_ended: float | None = None
        self._batch_start: float | None = None
        self._validation_start: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.before_training is None:
            self.before_training = time.perf_counter() - self.started

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.training_ended = time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        if self._batch_start is not None:
            self.train_steps += time.perf_counter() - self._batch_start
            self._batch_start = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_validation_end runs after every callback's on_validation_epoch_end: grids and FID are inside
        if self._validation_start is not None:
            self.validation += time.perf_counter() - self._validation_start
            self._validation_start = None

    def summary(self) -> dict[str, float]:
        """``time/total_s`` from the job's start to now; ``time/outside_share`` is the part of it not spent in
        training steps (0.07: 7% of the run went to everything else)."""
        now = time.perf_counter()
        total = now - self.started
        before = self.before_training or 0.0
        after = now - self.training_ended if self.training_ended is not None else 0.0
        return {
            "time/total_s": round(total, 1),
            "time/train_steps_s": round(self.train_steps, 1),
            "time/validation_s": round(self.validation, 1),
            "time/before_training_s": round(before, 1),
            "time/after_training_s": round(after, 1),
            # between batches: loading them, last.ckpt, logging
            "time/between_steps_s": round(total - before - after - self.train_steps - self.validation, 1),
            "time/outside_share": round(1 - self.train_steps / total, 4) if total > 0 else 0.0,
        }


def describe(summary: dict[str, float]) -> str:
    return (
        f"time: {summary['time/total_s']:.0f} s, {100 * summary['time/outside_share']:.1f}% outside training steps "
        f"({summary['time/train_steps_s']:.0f} s); before training {summary['time/before_training_s']:.0f} s, "
        f"validation with grids and FID {summary['time/validation_s']:.0f} s, between steps "
        f"{summary['time/between_steps_s']:.0f} s, after training {summary['time/after_training_s']:.0f} s"
    )


def training_seconds(run_dir: str | Path) -> float | None:
    """A finished run's seconds in training steps (``time/train_steps_s`` of its ``metrics.json``), or None where the
    folder has no readable record (not a run of train.py, or one that has not ended)."""
    try:
        return float(json.loads((Path(run_dir) / "metrics.json").read_text())["time/train_steps_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
