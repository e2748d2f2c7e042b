"""The run's progress where stdout is a file (SLURM, nohup, CI): plain lines instead of Rich's bar.

Rich draws its bar for a terminal; written to a file it leaves nothing until the run ends, so a cluster job's log
was silent for minutes between the FID lines. ``ProgressLog`` prints one flushed line every ``every_fraction`` of
the run or every ``every_s`` seconds, whichever is rarer (a short run is not flooded, a long one not silent for
hours), plus a line when training starts, after each validation and at the last step::

    step 356/1780 (20%)  train/loss 0.0412  1234 img/s  elapsed 2m31s  eta 10m04s

``progress_bar`` picks Rich's bar on a terminal and these lines otherwise (``callbacks.progress.style``).
``hide_lightning_noise`` drops two lines every run printed that say nothing about the run.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar

from diffusion.core.errors import ConfigError

STYLES = ("auto", "bar", "lines")


def duration(seconds: float) -> str:
    """45s, 2m31s, 1h02m: the two leading units."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _scalars(metrics: dict[str, Any], keep) -> str:
    shown = []
    for name, value in metrics.items():
        if torch.is_tensor(value) and value.numel() == 1:
            value = float(value)
        if keep(name) and isinstance(value, float) and math.isfinite(value):
            shown.append(f"{name} {value:.4g}")
    return "  ".join(shown)


class ProgressLog(ProgressBar):
    """One line every ``every_fraction`` of ``trainer.max_steps`` or every ``every_s`` seconds, whichever is
    rarer: both must have passed since the last line. Rank zero only; the progress bar Lightning counts as its
    own (so it adds none of its own)."""

    def __init__(self, every_fraction: float = 0.02, every_s: float = 60.0, stream=None):
        super().__init__()
        if not 0 < every_fraction <= 1:
            raise ConfigError(f"callbacks.progress.every_fraction={every_fraction} must be in (0, 1]")
        if every_s < 0:
            raise ConfigError(f"callbacks.progress.every_s={every_s} must be >= 0")
        self.every_fraction, self.every_s, self.stream = every_fraction, every_s, stream
        self._enabled = True
        self.started = self.last_time = 0.0
        self.start_step = self.last_step = 0
        self.images = 0  # since the last line, all processes
        self.validation_s = 0.0  # since the last line: not training, so not in img/s
        self._validation_start: float | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _print(self, line: str) -> None:
        if self._enabled:
            print(line, file=self.stream or sys.stdout, flush=True)

    @staticmethod
    def _total(trainer: L.Trainer) -> int:
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        estimated = trainer.estimated_stepping_batches
        return int(estimated) if math.isfinite(estimated) else 0

    def due(self, step: int, now: float, total: int) -> bool:
        """Whether ``step`` gets a line at time ``now``: the last step always; otherwise once both a share
        ``every_fraction`` of ``total`` steps and ``every_s`` seconds have passed since the last line."""
        if total and step >= total:
            return step > self.last_step
        steps_between = max(math.ceil(self.every_fraction * total), 1) if total else 1
        return step - self.last_step >= steps_between and now - self.last_time >= self.every_s

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = self.last_time = time.monotonic()
        self.start_step = self.last_step = trainer.global_step
        self.images, self.validation_s = 0, 0.0
        total = self._total(trainer)
        every = f"every {self.every_fraction:.0%} of the run or {duration(self.every_s)}, whichever is rarer"
        self._print(f"training from step {trainer.global_step} to {total or '?'}; a line {every}")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
        self.images += len(inputs) * trainer.world_size if hasattr(inputs, "__len__") else 0
        now, step, total = time.monotonic(), trainer.global_step, self._total(trainer)
        if not self.due(step, now, total):
            return
        training_s = now - self.last_time - self.validation_s
        rate = self.images / training_s if training_s > 0 else 0.0
        elapsed, done = now - self.started, step - self.start_step
        parts = [f"step {step}/{total or '?'}" + (f" ({step / total:.0%})" if total else "")]
        parts += [_scalars(self.get_metrics(trainer, pl_module), lambda name: name.startswith("train/")), f"{rate:.0f} img/s"]
        parts.append(f"elapsed {duration(elapsed)}")
        if total and done > 0:
            parts.append(f"eta {duration(elapsed / done * (total - step))}")
        self._print("  ".join(p for p in parts if p))
        self.last_step, self.last_time, self.images, self.validation_s = step, now, 0, 0.0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validation_start = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._validation_start is None:
            return
        seconds = time.monotonic() - self._validation_start
        figures = _scalars(dict(trainer.callback_metrics), lambda name: name.startswith("val/"))
        self._print(f"validation at step {trainer.global_step}: {figures or 'no figures'}  ({duration(seconds)})")
        self.validation_s += seconds
        self._validation_start = None


def progress_bar(style: str = "auto", every_fraction: float = 0.02, every_s: float = 60.0) -> ProgressBar:
    """Rich's bar (``callbacks.StepProgressBar``) when ``style`` is "bar", or "auto" and stdout is a terminal;
    ``ProgressLog`` lines when "lines", or "auto" and stdout is a file or a pipe."""
    if style not in STYLES:
        raise ConfigError(f"callbacks.progress.style={style!r}; choose one of {', '.join(STYLES)}")
    if style == "bar" or (style == "auto" and sys.stdout.isatty()):
        from diffusion.training.callbacks import StepProgressBar

        return StepProgressBar()
    return ProgressLog(every_fraction, every_s)


class _WithoutLitloggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def hide_lightning_noise() -> None:
    """Drop Lightning 2.6's tip to install its litlogger service (logged whenever a Trainer is built without
    one) and torch's FutureWarning about ``LeafSpec``, raised inside Lightning's own pytree helper: neither is
    about the run, and a run's log should show what is."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _WithoutLitloggerTip) for f in logger.filters):
            logger.addFilter(_WithoutLitloggerTip())
