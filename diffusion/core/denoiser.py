"""The denoiser D(x, sigma): a network, its objective's preconditioning and the schedule's c_noise."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from diffusion.core.errors import ConfigError
from diffusion.core.objectives import Objective
from diffusion.core.schedules import Schedule

DenoiserFn = Callable[[Tensor, Tensor], Tensor]


def per_sample(sigma: Tensor, x: Tensor) -> Tensor:
    """Broadcast a scalar or per-sample sigma to shape (batch, 1, 1, 1)."""
    return sigma.to(device=x.device, dtype=torch.float32).expand(x.shape[0]).reshape(-1, 1, 1, 1)


class Denoiser(nn.Module):
    """D(x, sigma, label) = c_skip * x + c_out * F(c_in * x, c_noise, label) (Karras et al. 2022, eq. 7).

    ``noise_conditioning=False`` gives F the same c_noise (0) at every level, the level-free U-Net of fast.ai's
    lesson 22 (``core.level_prediction``): F must read the level from its input, while c_skip, c_out and c_in still
    use sigma.
    """

    def __init__(self, net: nn.Module, objective: Objective, schedule: Schedule, noise_conditioning: bool = True):
        super().__init__()
        if not isinstance(noise_conditioning, bool):
            raise ConfigError(f"training.noise_conditioning={noise_conditioning!r} must be true or false")
        self.net = net
        self.objective = objective
        self.schedule = schedule
        self.noise_conditioning = noise_conditioning

    def c_in(self, sigma: Tensor) -> Tensor:
        """The objective's input scaling for data multiplied by the schedule's ``input_scale`` b.

        x = b x0 + sigma eps is b times (x0 + (sigma / b) eps), so the input that has the objective's intended
        variance is c_in(sigma / b) / b: 1 / sqrt(b^2 + sigma^2) for the VP objectives, Chen 2023's normalised
        input (sec. 3.2), and 1 / sqrt(b^2 sigma_data^2 + sigma^2) for EDM's.
        """
        b = self.schedule.input_scale
        return self.objective.c_in(sigma / b) / b

    def raw(self, x: Tensor, sigma: Tensor, labels: Tensor | None) -> Tensor:
        """F evaluated on the preconditioned input, returned in float32 whatever the autocast dtype."""
        return self.net_output(x, sigma, labels).float()

    def net_output(self, x: Tensor, sigma: Tensor, labels: Tensor | None) -> Any:
        """The network's output on the preconditioned input as it returns it (a contract-breaking network may return
        a tuple or an output object: ``training.module.check_network`` refuses it from this)."""
        c_noise = self.schedule.c_noise(sigma).flatten()
        if not self.noise_conditioning:
            c_noise = torch.zeros_like(c_noise)
        return self.net(self.c_in(sigma) * x, c_noise, labels)

    def forward(self, x: Tensor, sigma: Tensor, labels: Tensor | None = None) -> Tensor:
        sigma = per_sample(sigma, x)
        x = x.float()
        return self.objective.c_skip(sigma) * x + self.objective.c_out(sigma) * self.raw(x, sigma, labels)


@contextmanager
def evaluating(module: nn.Module):
    """``module`` in eval mode inside the block (no dropout: as when sampling), its mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def conditioned(denoiser: Denoiser, labels: Tensor | None, guidance: float = 0.0, null_label: int | None = None) -> DenoiserFn:
    """Bind the class labels, with classifier-free guidance (Ho & Salimans 2022, eq. 6):

        D = D(x | c) + w * (D(x | c) - D(x | null)),

    w = 0 being the plain conditional model. Both halves run as one batch.
    """
    if labels is None or guidance == 0 or null_label is None:
        return lambda x, sigma: denoiser(x, sigma, labels)

    def guided(x: Tensor, sigma: Tensor) -> Tensor:
        both = denoiser(torch.cat([x, x]), sigma, torch.cat([labels, torch.full_like(labels, null_label)]))
        cond, uncond = both.chunk(2)
        return cond + guidance * (cond - uncond)

    return guided


CLIP_MODES = ("static", "dynamic")


def clip_denoised(denoiser: DenoiserFn, mode: str | None, percentile: float = 0.995, data_range: float = 1.0) -> DenoiserFn:
    """Keep the x0 estimate inside the data range [-data_range, data_range] before the sampler uses it.

    ``static`` clips it (DDPM's and DDIM's ``clip_sample``); ``dynamic`` is Saharia et al. 2022 ("Imagen",
    sec. 2.3): per sample, s = max(the ``percentile`` quantile of |x0| / data_range, 1), then x0 is clipped to
    [-s, s] and divided by s, which pulls saturated pixels inward instead of flattening them. ``None`` leaves
    the denoiser as it is. Meant for eps- and v-prediction models, whose x0 estimate can leave the data range.
    """
    if mode is None:
        return denoiser
    if mode not in CLIP_MODES:
        raise ConfigError(f"unknown clip_denoised={mode!r}; choose one of {', '.join(CLIP_MODES)} or null")
    if not 0 < percentile <= 1:
        raise ConfigError(f"clip_percentile={percentile} must be in (0, 1], e.g. 0.995")

    def clipped(x: Tensor, sigma: Tensor) -> Tensor:
        x0 = denoiser(x, sigma) / data_range
        if mode == "static":
            return x0.clamp(-1, 1) * data_range
        s = torch.quantile(x0.abs().flatten(1), percentile, dim=1).clamp(min=1).reshape(-1, *[1] * (x0.dim() - 1))
        return (torch.maximum(torch.minimum(x0, s), -s) / s) * data_range

    return clipped


def analytic_first_step(denoiser: DenoiserFn, data_std: float = 0.5, mean: Tensor | None = None) -> DenoiserFn:
    """The sampler's first evaluation answered in closed form, the network's from the second on: the "analytical
    first step" of AMED (Zhou et al. 2024, "Fast ODE-based Sampling for Diffusion Models in Around 5 Steps"), which
    saves one network evaluation of a few-step sampler. The closed form is the denoiser of Gaussian data
    N(mean, data_std^2 I),

        D(x, sigma) = mean + (x - mean) data_std^2 / (data_std^2 + sigma^2),

    which at the first level, sigma_max >> data_std, is about the data's mean: what the network answers there too,
    up to the class. AMED's form assumes zero-mean data; sprites are not (the procedural set's mean is +0.4 in
    [-1, 1], white backgrounds), and the first step moves x by (1 - sigma_1 / sigma_0) (D - mean), which no later
    step undoes, so ``mean`` is the training images' (``DiffusionModule.data_mean``; None: zero). ``data_std``: the
    images' scale (0.5 for data in [-1, 1]). The returned function answers only its own first call so: one per run."""
    answered = False

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        nonlocal answered
        if answered:
            return denoiser(x, sigma)
        answered = True
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, *[1] * (x.dim() - 1))
        centre = torch.zeros((), device=x.device) if mean is None else mean.to(x.device, torch.float32)
        return centre + (x.float() - centre) * (data_std**2 / (data_std**2 + sigma**2))

    return denoise
