"""The noise-level predictor: a small CNN mapping a noisy image to one number, its predicted logit(alpha_bar)
(fast.ai part 2, 2022, lesson 22; the target and its use are ``core.level_prediction``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffusion.core.errors import ConfigError


class LevelPredictor(nn.Module):
    """Strided 3x3 convolutions with GroupNorm and SiLU (16x16 -> 4x4 with the default two halvings), the mean over
    positions and a linear head: a small regression net, as the lesson's. The mean makes it take any image size.

    Args:
        width: channels of the first convolution, doubled at each halving.
        halvings: strided convolutions.
    """

    def __init__(self, width: int = 32, halvings: int = 2):
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 4 or width % 4:
            raise ConfigError(f"training.method.predictor.width={width} must be a multiple of 4, e.g. 32")
        if isinstance(halvings, bool) or not isinstance(halvings, int) or halvings < 0:
            raise ConfigError(f"training.method.predictor.halvings={halvings} must be an integer >= 0, e.g. 2")
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.SiLU()]
        channels = width
        for _ in range(halvings):
            # GroupNorm, not BatchNorm: one image's statistics, so a prediction does not depend on its batch.
            layers += [nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.GroupNorm(4, 2 * channels), nn.SiLU()]
            channels *= 2
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.mean(self.body(x), dim=(2, 3))).squeeze(1)
