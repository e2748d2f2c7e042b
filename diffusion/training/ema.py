"""Lightning's EMA weight averaging with a decay warm-up.

With a constant decay the average keeps decay^n of the random initial weights after n steps (10% after
450 steps at 0.995), and a diffusion model's noise prediction shrinks accordingly: samples keep some
of their noise. The warm-up decay min(decay, (1 + n) / (10 + n)) (as in TensorFlow's
ExponentialMovingAverage with num_updates) forgets the initial weights within the first steps.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import Tensor


def ema_with_warmup(decay: float):
    """An ``AveragedModel`` averaging function: EMA whose decay ramps up as (1 + n) / (10 + n)."""

    def average(averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        n = num_averaged.to(averaged.dtype)
        step_decay = torch.clamp((1 + n) / (10 + n), max=decay)
        return torch.lerp(averaged, current, 1 - step_decay)

    return average


class EMA(EMAWeightAveraging):
    """``EMAWeightAveraging`` (update schedule, checkpointing, validation swap) with the warm-up decay."""

    def __init__(self, decay: float = 0.999, warmup: bool = True, **kwargs):
        if not 0 < decay < 1:
            from diffusion.core.errors import ConfigError

            raise ConfigError(f"callbacks.ema.decay={decay} must be in (0, 1)")
        super().__init__(decay=decay, **kwargs)
        if warmup:
            self._kwargs["avg_fn"] = ema_with_warmup(decay)
