"""The averages of the weights a run samples with: Lightning's EMA weight averaging with EDM2's power-function
profile (the default) or a decay with a warm-up, and the power-function EMAs of post-hoc EMA.

With a constant decay the average keeps decay^n of the random initial weights after n steps (10% after
450 steps at 0.995), and a diffusion model's noise prediction shrinks accordingly: samples keep some
of their noise. The warm-up decay min(decay, (1 + n) / (10 + n)) (as in TensorFlow's
ExponentialMovingAverage with num_updates) forgets the initial weights within the first steps, but reaches
0.999 only after 8,991 steps: in a run of a few thousand steps the decay is the warm-up's, not the config's.
The power EMA (Karras et al. 2024, sec. 3) has no such gap: its width is a share of the run (``sigma_rel``)
at every step, whatever the run's length.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import Tensor

from diffusion.core.errors import ConfigError


def ema_with_warmup(decay: float):
    """An ``AveragedModel`` averaging function: EMA whose decay ramps up as (1 + n) / (10 + n)."""

    def average(averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        n = num_averaged.to(averaged.dtype)
        step_decay = torch.clamp((1 + n) / (10 + n), max=decay)
        return torch.lerp(averaged, current, 1 - step_decay)

    return average


def power_ema(gamma: float):
    """An ``AveragedModel`` averaging function: the power-function EMA, beta(t) at the t-th update (EDM2, eq. 3
    with t the step; ``training.power_ema.power_ema_beta``), computed on the device without a host round trip."""
    from diffusion.training.power_ema import power_ema_beta

    def average(averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        # the first update (t = 1, beta = 0) is AveragedModel's copy; float64 where the device has it (not MPS)
        t = num_averaged.to(torch.float32 if averaged.device.type == "mps" else torch.float64) + 1
        return torch.lerp(averaged, current, (1 - power_ema_beta(t, gamma)).to(averaged.dtype))

    return average


class PowerEMA(EMAWeightAveraging):
    """``EMAWeightAveraging`` (update schedule, checkpointing, validation swap) with EDM2's power-function EMA of
    relative width ``sigma_rel``: at step t the average weighs step tau as tau^gamma (sec. 3 of Karras et al.
    2024, "Analyzing and improving the training dynamics of diffusion models"), so it spans the last ~sigma_rel
    share of the run at every step. Updates every optimizer step from the first."""

    def __init__(self, sigma_rel: float = 0.10, **kwargs):
        from diffusion.training.power_ema import SIGMA_REL_MAX, sigma_rel_to_gamma

        if isinstance(sigma_rel, bool) or not isinstance(sigma_rel, (int, float)) or not 0 < sigma_rel < SIGMA_REL_MAX:
            raise ConfigError(f"callbacks.ema.sigma_rel={sigma_rel} must be a number in (0, {SIGMA_REL_MAX:.3f}) "
                              "(EDM2's range; 0.05-0.10 are typical)")
        for key in ("update_every_n_steps", "update_starting_at_step", "update_starting_at_epoch"):
            if kwargs.get(key) not in (None, 1 if key == "update_every_n_steps" else None):
                raise ConfigError(f"callbacks.ema.{key} does not apply to the power EMA: its profile counts every "
                                  "step from the first; drop the key")
        super().__init__(**kwargs)
        self.sigma_rel, self.gamma = float(sigma_rel), sigma_rel_to_gamma(sigma_rel)
        self._kwargs["avg_fn"] = power_ema(self.gamma)


class EMA(EMAWeightAveraging):
    """``EMAWeightAveraging`` (update schedule, checkpointing, validation swap) with a constant decay, or with the
    warm-up decay min(decay, (1 + n) / (10 + n)) (``warmup: true``; it reaches 0.999 at step 8,991)."""

    def __init__(self, decay: float = 0.999, warmup: bool = True, **kwargs):
        if not 0 < decay < 1:
            raise ConfigError(f"callbacks.ema.decay={decay} must be in (0, 1)")
        super().__init__(decay=decay, **kwargs)
        if warmup:
            self._kwargs["avg_fn"] = ema_with_warmup(decay)


class PostHocEMA(L.Callback):
    """Power-function EMAs of the weights, one per ``sigma_rel``, saved as snapshots for post-hoc EMA (Karras et
    al. 2024, sec. 3; the math is in ``training.power_ema``).

    Every ``every_n_steps`` optimizer steps (default: the run's steps / ``num_snapshots``) and when training
    ends, each average is written to ``<dirpath>/step_XXXXXXXX-sigma_rel_S.safetensors`` with the checkpoint
    info, so a snapshot loads like ``final.safetensors``; ``python -m diffusion.tools.posthoc_ema RUN_DIR`` rebuilds
    the average for any other sigma_rel from them. The averages live in the checkpoints too (resuming continues
    them), each a float32 copy of the weights.
    """

    def __init__(self, dirpath: str, sigma_rels: tuple[float, ...] = (0.05, 0.10), num_snapshots: int = 16,
                 every_n_steps: int | None = None):
        from diffusion.training.power_ema import sigma_rel_to_gamma

        if not sigma_rels:
            raise ConfigError("callbacks.posthoc_ema.sigma_rels is empty; give two, e.g. [0.05, 0.10]")
        if every_n_steps is None and not (isinstance(num_snapshots, int) and num_snapshots >= 1):
            raise ConfigError(f"callbacks.posthoc_ema.num_snapshots={num_snapshots} must be an integer >= 1")
        if every_n_steps is not None and not (isinstance(every_n_steps, int) and every_n_steps >= 1):
            raise ConfigError(f"callbacks.posthoc_ema.every_n_steps={every_n_steps} must be null or an integer >= 1")
        self.dirpath = Path(dirpath)
        self.sigma_rels = [float(s) for s in sigma_rels]
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        self.num_snapshots, self.every_n_steps = num_snapshots, every_n_steps
        self.step = 0
        self.averages: list[dict[str, Tensor]] | None = None
        self.saved_at = -1

    def _interval(self, trainer: L.Trainer) -> int:
        if self.every_n_steps is not None:
            return self.every_n_steps
        return max(math.ceil(trainer.estimated_stepping_batches / self.num_snapshots), 1)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.averages is None:
            self.averages = [_float_copy(pl_module.state_dict()) for _ in self.gammas]
        else:  # restored from a checkpoint: follow the module to its device
            self.averages = [{k: v.to(pl_module.device) for k, v in avg.items()} for avg in self.averages]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        from diffusion.training.power_ema import power_ema_update

        if trainer.global_step == self.step:  # no optimizer step (gradient accumulation)
            return
        self.step = trainer.global_step
        current = pl_module.state_dict()
        for gamma, average in zip(self.gammas, self.averages):
            for key, value in average.items():
                if value.is_floating_point():
                    power_ema_update(value, current[key], self.step, gamma)
                else:
                    value.copy_(current[key])
        if self.step % self._interval(trainer) == 0:
            self._save(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.averages is not None and self.step > 0 and self.saved_at != self.step:
            self._save(trainer, pl_module)

    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from diffusion.training.checkpoints import export_safetensors
        from diffusion.training.power_ema import snapshot_name

        self.saved_at = self.step
        if not trainer.is_global_zero:
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        info = pl_module.checkpoint_info() if hasattr(pl_module, "checkpoint_info") else {}
        for sigma_rel, gamma, average in zip(self.sigma_rels, self.gammas, self.averages):
            meta = {**info, "posthoc_ema": {"step": self.step, "gamma": gamma, "sigma_rel": sigma_rel}}
            export_safetensors(average, meta, self.dirpath / snapshot_name(self.step, sigma_rel))

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "saved_at": self.saved_at, "gammas": self.gammas, "averages": self.averages}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if [round(g, 9) for g in state_dict["gammas"]] != [round(g, 9) for g in self.gammas]:
            raise ConfigError("the checkpoint's post-hoc EMA has other sigma_rels than callbacks.posthoc_ema.sigma_rels; "
                              "resume with the sigma_rels the run started with")
        self.step, self.saved_at, self.averages = state_dict["step"], state_dict["saved_at"], state_dict["averages"]


def _float_copy(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A detached copy, floating-point tensors in float32 (the averages accumulate tiny increments)."""
    return {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone() for k, v in state.items()}
