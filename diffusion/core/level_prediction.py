"""A denoiser that is not told the noise level, and a network that predicts the level from the noisy image
(Jeremy Howard, fast.ai "Practical Deep Learning for Coders" part 2, 2022, lesson 22).

The lesson trains (1) a regression model that predicts logit(alpha_bar) of a noised image, with MSE: the logit
target, unlike alpha_bar itself, made it work; (2) the diffusion U-Net with its time input always 0; and (3) samples
it with DDIM, computing x0_hat with each image's predicted alpha_bar clamped near the batch median, instead of the
scheduled one (FID 3.88 against 3.2 for the t-conditioned model on Fashion-MNIST).

In this framework's sigma form (x = x0 + sigma eps, alpha_bar = 1 / (1 + sigma^2)) the target is
logit(alpha_bar) = ln(alpha_bar / (1 - alpha_bar)) = -2 ln sigma, and the predictor sees the variance-preserving
image x / sqrt(b^2 + sigma^2) (b the schedule's ``input_scale``), the lesson's sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar)
eps. ``Denoiser(noise_conditioning=False)`` is part (2); ``LevelPredictorLoss``, a training method, trains the
predictor beside the denoiser; ``PredictedLevel`` is part (3) as a denoiser, so every sampler runs it unchanged.

One difference from the lesson's sampler: its DDIM step rebuilds x_{t-1} from x0_hat and the network's own noise
estimate, so each step puts the noise back at the scheduled level; here the samplers derive their noise estimate as
(x - D(x, sigma_hat)) / sigma at the scheduled sigma, so a gap between the image's actual and scheduled noise carries
from step to step (and a stochastic sampler adds noise for the scheduled level).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffusion.core.denoiser import Denoiser, per_sample
from diffusion.core.denoising_loss import DenoisingLoss, noise_like
from diffusion.core.errors import ConfigError

LEVELS = ("scheduled", "predicted")


def level_target(sigma: Tensor) -> Tensor:
    """-2 ln sigma, the predictor's regression target: the lesson's logit(alpha_bar) for data at scale 1 (the
    schedule's ``input_scale`` b = 1; for other b, logit(alpha_bar) = 2 ln b - 2 ln sigma, and the target stays
    -2 ln sigma, converted back by ``sigma_from_level``)."""
    return -2 * sigma.log()


def sigma_from_level(level: Tensor) -> Tensor:
    """The inverse of ``level_target``: sigma = exp(-level / 2)."""
    return (-level / 2).exp()


def predictor_input(x: Tensor, sigma: Tensor, input_scale: float = 1.0) -> Tensor:
    """The variance-preserving view x / sqrt(b^2 + sigma^2) of x = b x0 + sigma eps; while sampling, sigma is the
    sampler's scheduled level, as the lesson's DDIM holds x_t scaled by the scheduled alpha_bar."""
    sigma = sigma.to(device=x.device, dtype=torch.float32).reshape(-1, 1, 1, 1)  # a scalar, (batch,) or per_sample's
    return x * (input_scale**2 + sigma**2).rsqrt()


class LevelPredictorLoss(nn.Module):
    """A training method (``training.method``): EDM's denoising loss plus ``weight`` times the predictor's squared
    error against logit(alpha_bar) (the lesson's part 1), on the same noisy images, at levels drawn from the
    schedule's training distribution. The predictor is a submodule of this method and so of the LightningModule:
    the optimizer, the EMA and every checkpoint hold it beside the denoiser.

    Args:
        predictor: a network mapping (batch, 3, H, W) to (batch,), e.g. ``nets.level_predictor.LevelPredictor``.
        weight: the predictor's share of the loss (its gradients never reach the denoiser).
    """

    def __init__(self, predictor: nn.Module, weight: float = 1.0):
        super().__init__()
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise ConfigError(f"training.method.weight={weight} must be a number > 0, e.g. 1.0")
        self.predictor, self.weight = predictor, float(weight)

    def check(self, denoiser: Denoiser) -> None:
        """Any denoiser, level-conditioned or not, can be trained beside a predictor."""

    # The signature of every training method (docs/architecture.md), repeated by design as in denoising_loss.
    def forward(
        self,
        denoiser: Denoiser,
        x0: Tensor,
        labels: Tensor | None = None,
        step: int = 0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        sigma = denoiser.schedule.sample_sigma(x0.shape[0], generator=generator).to(x0.device)
        noise = noise_like(x0, generator)
        denoising = DenoisingLoss.at(denoiser, x0, sigma, noise, labels)
        return denoising + self.weight * self.level_loss(x0, sigma, noise, denoiser.schedule.input_scale)

    def level_loss(self, x0: Tensor, sigma: Tensor, noise: Tensor, input_scale: float = 1.0) -> Tensor:
        """Per-sample squared error of the predicted logit(alpha_bar) on x = x0 + sigma noise."""
        sigma = per_sample(sigma, x0)
        prediction = self.predictor(predictor_input(x0 + sigma * noise, sigma, input_scale)).float()
        return (prediction - level_target(sigma).flatten()).pow(2)


def clamp_to_median(level: Tensor, spread: float) -> Tensor:
    """Each image's predicted logit(alpha_bar) clamped to [m - spread, m + spread], m the batch median: the lesson's
    guard against a single prediction far off ("clamped to not be too far away from the median"; it gives no width).
    In sigma, that is a factor of at most exp(spread / 2) either side of the median image's level."""
    median = level.median()
    return torch.minimum(torch.maximum(level, median - spread), median + spread)


class PredictedLevel:
    """D'(x, sigma) = D(x, sigma_hat(x)): the denoiser at each image's predicted noise level instead of the sampler's
    (the lesson's part 3). sigma_hat = exp(-l / 2), l the predictor's logit(alpha_bar) of the variance-preserving
    view of x, clamped to ``spread`` around the batch median (``clamp_to_median``). The sampler still steps over its
    scheduled levels; only the x0 estimate it is handed uses the predicted ones. Has the denoiser's ``schedule``, so
    ``core.sampling.generate`` takes it where it takes a ``Denoiser``."""

    def __init__(self, denoiser: Denoiser, predictor: nn.Module, spread: float = 1.0):
        if isinstance(spread, bool) or not isinstance(spread, (int, float)) or not spread > 0:
            raise ConfigError(f"level_spread={spread} must be a number > 0 (logit(alpha_bar) around the batch median), e.g. 1.0")
        self.denoiser, self.predictor, self.spread = denoiser, predictor, float(spread)
        self.schedule = denoiser.schedule

    def sigma_hat(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Each image's clamped predicted level, given the sampler's level ``sigma`` of x."""
        level = self.predictor(predictor_input(x.float(), sigma, self.schedule.input_scale)).float()
        return sigma_from_level(clamp_to_median(level, self.spread))

    def __call__(self, x: Tensor, sigma: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.denoiser(x, self.sigma_hat(x, sigma), labels)


@torch.no_grad()
def log_sigma_errors(predictor: nn.Module, x0: Tensor, sigma: Tensor, input_scale: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """ln sigma_hat - ln sigma per image of x0 noised at ``sigma`` (one level an image), unclamped."""
    noise = noise_like(x0, generator)
    s = per_sample(sigma, x0)
    level = predictor(predictor_input(x0 + s * noise, s, input_scale)).float()
    return sigma_from_level(level).log() - s.flatten().log()
