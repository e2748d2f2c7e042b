"""Euler-ancestral (k-diffusion's sample_euler_ancestral) against its closed form: each step goes down to sigma_down
by Euler and adds s_noise * sigma_up fresh noise, with sigma_up^2 = eta^2 sigma_to^2 (sigma_from^2 - sigma_to^2) /
sigma_from^2 (capped at sigma_to) and sigma_down^2 = sigma_to^2 - sigma_up^2. At eta = 1 that is the posterior
q(x_to | x_from, x0) of the variance-exploding process."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.core.samplers.ancestral import get_ancestral_step, sample_euler_ancestral


@pytest.mark.parametrize(
    "sigma_from, sigma_to, eta, up, down",
    [
        (2.0, 1.0, 1.0, math.sqrt(3) / 2, 0.5),  # sigma_up^2 = 1 * 3 / 4
        (2.0, 1.0, 0.5, math.sqrt(3) / 4, math.sqrt(13) / 4),
        (10.0, 6.0, 1.0, 4.8, 3.6),  # 36 * 64 / 100 = 23.04
        (2.0, 1.0, 3.0, 1.0, 0.0),  # capped at sigma_to: all of the step is noise
        (2.0, 1.0, 0.0, 0.0, 1.0),  # eta = 0: the deterministic Euler step
    ],
)
def test_ancestral_step_split(sigma_from, sigma_to, eta, up, down):
    sigma_down, sigma_up = get_ancestral_step(torch.tensor(sigma_from), torch.tensor(sigma_to), eta)
    assert float(sigma_up) == pytest.approx(up, rel=1e-6)
    assert float(sigma_down) == pytest.approx(down, rel=1e-6, abs=1e-6)


def test_eta_one_is_the_ve_posterior_variance():
    """q(x_s | x_t, x0) for x_t = x0 + sigma_t eps has variance sigma_s^2 (sigma_t^2 - sigma_s^2) / sigma_t^2."""
    for t, s in [(80.0, 40.0), (1.3, 0.2), (0.5, 0.49)]:
        _, up = get_ancestral_step(torch.tensor(t, dtype=torch.float64), torch.tensor(s, dtype=torch.float64))
        assert float(up) ** 2 == pytest.approx(s**2 * (t**2 - s**2) / t**2, rel=1e-12)


@pytest.mark.parametrize("eta, s_noise", [(1.0, 1.0), (0.5, 1.0), (1.0, 1.007), (0.0, 1.0)])
def test_one_step_by_hand(eta, s_noise):
    """From x with D(x) = 0.25 x, sigma 2 -> 1: x + (x - D) / 2 * (sigma_down - 2) + s_noise * sigma_up * z."""
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = sample_euler_ancestral(lambda x, sigma: 0.25 * x, x, torch.tensor([2.0, 1.0], dtype=torch.float64), eta=eta,
                                 s_noise=s_noise, generator=torch.Generator().manual_seed(3))
    up = eta * math.sqrt(3) / 2
    down = math.sqrt(1 - up**2)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = x + 0.75 * x / 2 * (down - 2) + s_noise * up * z
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_last_step_to_zero_adds_no_noise():
    x = torch.randn(1, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([1.0, 0.0], dtype=torch.float64)
    a = sample_euler_ancestral(lambda x, sigma: 0.5 * x, x, sigmas, generator=torch.Generator().manual_seed(1))
    b = sample_euler_ancestral(lambda x, sigma: 0.5 * x, x, sigmas, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, 0.5 * x, rtol=0, atol=1e-15)  # sigma_down = 0: the x0 estimate itself
    assert torch.equal(a, b)
