"""The denoiser D(x, sigma): a network, its objective's preconditioning and the schedule's c_noise."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffusion.core.objectives import Objective
from diffusion.core.schedules import Schedule

DenoiserFn = Callable[[Tensor, Tensor], Tensor]


def _per_sample(sigma: Tensor, x: Tensor) -> Tensor:
    """Broadcast a scalar or per-sample sigma to shape (batch, 1, 1, 1)."""
    return sigma.to(device=x.device, dtype=torch.float32).expand(x.shape[0]).reshape(-1, 1, 1, 1)


class Denoiser(nn.Module):
    """D(x, sigma, label) = c_skip * x + c_out * F(c_in * x, c_noise, label) (Karras et al. 2022, eq. 7)."""

    def __init__(self, net: nn.Module, objective: Objective, schedule: Schedule):
        super().__init__()
        self.net = net
        self.objective = objective
        self.schedule = schedule

    def raw(self, x: Tensor, sigma: Tensor, labels: Tensor | None) -> Tensor:
        """F evaluated on the preconditioned input, returned in float32 whatever the autocast dtype."""
        c_in = self.objective.c_in(sigma)
        return self.net(c_in * x, self.schedule.c_noise(sigma).flatten(), labels).float()

    def forward(self, x: Tensor, sigma: Tensor, labels: Tensor | None = None) -> Tensor:
        sigma = _per_sample(sigma, x)
        x = x.float()
        return self.objective.c_skip(sigma) * x + self.objective.c_out(sigma) * self.raw(x, sigma, labels)

    def loss(self, x0: Tensor, sigma: Tensor, noise: Tensor, labels: Tensor | None = None) -> Tensor:
        """Per-sample mean squared error of F against the objective's target, times the objective's
        ``loss_weight`` (1 unless Min-SNR weighting is on)."""
        sigma = _per_sample(sigma, x0)
        target = self.objective.target(x0, noise, sigma)
        error = (self.raw(x0 + sigma * noise, sigma, labels) - target).pow(2).mean(dim=(1, 2, 3))
        return self.objective.loss_weight(sigma).flatten() * error


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
