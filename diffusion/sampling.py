"""A sampler choice as a config object: which function, how many noise levels, which spacing."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from diffusion.denoiser import Denoiser, conditioned
from diffusion.errors import ConfigError
from diffusion.samplers import SAMPLERS, Callback, model_evaluations
from diffusion.schedules import Schedule

SPACINGS = ("karras", "schedule")


class Sampler:
    """``sampler=`` in the configs: a function from ``samplers`` plus its noise levels.

    Args:
        name: one of ``samplers.SAMPLERS``.
        steps: number of noise levels visited (the final 0 not counted).
        spacing: "karras" for the rho-spacing of Karras et al. 2022 (eq. 5) between the schedule's
            sigma_min and sigma_max, "schedule" for the schedule's own levels (DDPM's t = T..1).
        rho: the exponent of the Karras spacing.
        options: keyword options of the sampler function (eta, add_noise, variance, order).
    """

    def __init__(
        self,
        name: str = "ddpm",
        steps: int = 500,
        spacing: str = "schedule",
        rho: float = 7.0,
        options: Mapping[str, Any] | None = None,
    ):
        if name not in SAMPLERS:
            raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
        if spacing not in SPACINGS:
            raise ConfigError(f"unknown sampler spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
        if not (isinstance(steps, int) and steps >= 1):
            raise ConfigError(f"steps={steps} must be an integer >= 1")
        self.name, self.steps, self.spacing, self.rho = name, steps, spacing, float(rho)
        self.options = dict(options or {})

    @property
    def nfe(self) -> int:
        return model_evaluations(self.name, self.steps)

    def sigmas(self, schedule: Schedule) -> Tensor:
        if self.spacing == "karras":
            return schedule.karras_sigmas(self.steps, self.rho)
        return schedule.sigmas(self.steps)

    def __repr__(self) -> str:
        return f"Sampler({self.name}, steps={self.steps}, spacing={self.spacing}, nfe={self.nfe})"


@torch.no_grad()
def generate(
    denoiser: Denoiser,
    sampler: Sampler,
    n: int,
    *,
    image_size: int,
    labels: Tensor | None = None,
    guidance: float = 0.0,
    null_label: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    callback: Callback = None,
    bf16: bool = False,
) -> Tensor:
    """Draw n images in [-1, 1], shape (n, 3, H, W); ``bf16`` runs the network under bf16 autocast (the
    sampler's updates of x stay in float32: autocast changes matrix products and convolutions only).

    The starting noise has standard deviation sqrt(sigma_max^2 + 1): the exact variance-preserving
    prior N(0, I) mapped to sigma form, so DDPM over all T steps is the course's sampler exactly.
    """
    if n < 1:
        raise ConfigError(f"n={n} must be at least 1")
    if guidance < 0:
        raise ConfigError(f"guidance={guidance} must be >= 0 (0 = plain conditional sampling)")
    schedule = denoiser.schedule
    sigmas = sampler.sigmas(schedule).to(device)
    gen_device = generator.device if generator is not None else device
    noise = torch.randn(n, 3, image_size, image_size, generator=generator, device=gen_device).to(device)
    x = noise * math.sqrt(float(sigmas[0]) ** 2 + 1)
    fn = SAMPLERS[sampler.name]
    if labels is not None:
        labels = labels.to(device)
    # Only ever switch autocast on: bf16=False leaves a caller's own autocast context in force.
    precision = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with precision:
        x = fn(conditioned(denoiser, labels, guidance, null_label), x, sigmas, generator=generator, callback=callback, **sampler.options)
    return (x / schedule.input_scale).clamp(-1, 1)
