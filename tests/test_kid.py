"""KID (Binkowski et al. 2018): subsets drawn from both sets below both counts, each subset's figure the unbiased
polynomial-kernel MMD^2 recomputed here in float64 from its closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion.evaluation.metrics import ImageQuality, kid_subset_size_used


class Pixels(torch.nn.Module):
    """Features of uint8 (N, 3, 2, 2) images: their 12 values in [0, 1]."""

    num_features = 12

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).float() / 255


def unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Binkowski et al. 2018, eq. (2) with k(a, b) = (a.b / d + 1)^3: the mean of k over distinct pairs within
    each set, less twice its mean over the pairs across them."""
    m, d = len(x), x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * kxy.sum() / m**2)


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int, seed: int = 0, subset_size: int = 1000) -> dict[str, float]:
    quality = ImageQuality(Pixels(), kid_subsets=subsets, kid_subset_size=subset_size, seed=seed)
    quality.update_real(real)
    quality.update_fake(fake)
    return quality.compute()


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 2, 2), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_kid_is_the_unbiased_mmd_over_subsets_of_half_the_smaller_set():
    real, fake = images(30, seed=1), images(20, seed=2)
    ours = kid(real, fake, subsets=5, seed=3)
    # the draws torchmetrics makes (a permutation of the real set, then of the fake set, per subset), with
    # subsets of min(1000, 30 // 2, 20 // 2) = 10 from each
    x, y = Pixels()(real).double().numpy(), Pixels()(fake).double().numpy()
    torch.manual_seed(3)
    figures = []
    for _ in range(5):
        real_rows, fake_rows = torch.randperm(30)[:10].numpy(), torch.randperm(20)[:10].numpy()
        figures.append(unbiased_mmd2(x[real_rows], y[fake_rows]))
    assert ours["kid_mean"] == pytest.approx(np.mean(figures), rel=1e-4, abs=1e-7)
    assert ours["kid_std"] == pytest.approx(np.std(figures), rel=1e-3, abs=1e-7)


def test_kid_std_varies_the_generated_set_too():
    # every real image the same: the spread over subsets can only come from the generated images drawn
    real, fake = images(1, seed=1).repeat(40, 1, 1, 1), images(20, seed=2)
    assert kid(real, fake, subsets=8)["kid_std"] > 1e-4


def test_kid_subset_size_is_the_asked_size_below_half_of_each_set():
    assert kid_subset_size_used(1000, 5000, 1000) == 500
    assert kid_subset_size_used(100, 5000, 1000) == 100
    assert kid_subset_size_used(1000, 3, 40) == 2  # the estimator's smallest size
