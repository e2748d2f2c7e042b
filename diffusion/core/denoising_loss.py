"""The denoising loss, the default training method (``training.method``; Karras et al. 2022, "EDM", eq. 2 and
sec. 5, in the F-space form of eq. 8):

    L(x0) = lambda(sigma) * || F(c_in x, c_noise(sigma)) - F_target ||^2,   x = x0 + sigma n,
    sigma ~ p_train (the schedule's),   n ~ N(0, I),   F_target = (x0 - c_skip x) / c_out (the objective's),

with lambda(sigma) the objective's ``loss_weight`` (1, or Min-SNR-gamma). With the eps objective and the linear
schedule's uniform t this is Ho et al. 2020's "simple" loss (Algorithm 1). A training method is a callable
``method(denoiser, x0, labels, step, generator)`` returning per-sample losses, with ``check(denoiser)``; the
LightningModule calls the configured one (``core.consistency_tuning.ConsistencyTuning`` is another).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion.core.denoiser import Denoiser, per_sample


def noise_like(x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise of x0's shape: drawn on the CPU from ``generator`` where one fixes it (validation,
    the same noise on every device), else from the global RNG on x0's device."""
    return torch.randn(x0.shape, generator=generator).to(x0.device) if generator is not None else torch.randn_like(x0)


class DenoisingLoss:
    """EDM's denoising loss at noise levels drawn from the denoiser's schedule."""

    def check(self, denoiser: Denoiser) -> None:
        """Any objective and schedule can be trained to denoise: nothing to refuse."""

    # The signature of every training method (docs/architecture.md), repeated by design in consistency_tuning.
    def __call__(
        self,
        denoiser: Denoiser,
        x0: Tensor,
        labels: Tensor | None = None,
        step: int = 0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-sample loss of a batch x0 (``step`` is unused: the loss does not change over training);
        ``generator`` fixes sigma and the noise (validation)."""
        sigma = denoiser.schedule.sample_sigma(x0.shape[0], generator=generator).to(x0.device)
        noise = noise_like(x0, generator)
        return self.at(denoiser, x0, sigma, noise, labels)

    @staticmethod
    def at(denoiser: Denoiser, x0: Tensor, sigma: Tensor, noise: Tensor, labels: Tensor | None = None) -> Tensor:
        """The loss at given noise levels and noise: per-sample mean squared error of F against the objective's
        target, times the objective's ``loss_weight``."""
        sigma = per_sample(sigma, x0)
        target = denoiser.objective.target(x0, noise, sigma)
        error = (denoiser.raw(x0 + sigma * noise, sigma, labels) - target).pow(2).mean(dim=(1, 2, 3))
        return denoiser.objective.loss_weight(sigma).flatten() * error

    def __repr__(self) -> str:
        return "DenoisingLoss()"
