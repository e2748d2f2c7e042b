"""Karras et al. 2022's stochastic sampler (Algorithm 2): the "churn" option of the Euler and Heun samplers.

diffusers' Euler scheduler has an s_churn argument but applies it to a model output computed before the noise is
added, which is not Algorithm 2; so these tests check the algorithm's lines directly, and the exact-denoiser
harness checks that the churned samplers still land on the data set.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.core.exact import Harness, make_dataset, nearest_distance, pairwise_rms
from diffusion.core.samplers.ode import churn, sample_euler, sample_heun

SIGMAS = torch.tensor([10.0, 4.0, 1.0, 0.3, 0.0], dtype=torch.float64)  # 4 steps


def test_churn_raises_sigma_by_gamma_with_fresh_noise():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    s_churn, s_noise = 0.8, 1.007  # gamma = 0.8 / 4 = 0.2, below the sqrt(2) - 1 cap
    x_hat, sigma_hat = churn(x, SIGMAS, 1, s_churn, 0.0, math.inf, s_noise, torch.Generator().manual_seed(5))
    assert sigma_hat.item() == pytest.approx(4.0 * 1.2)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = x + s_noise * math.sqrt(4.8**2 - 4.0**2) * z  # Algorithm 2, line 6
    torch.testing.assert_close(x_hat, expected, rtol=0, atol=1e-12)


def test_churn_is_capped_and_confined_to_its_sigma_range():
    x = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    _, sigma_hat = churn(x, SIGMAS, 0, 100.0, 0.0, math.inf, 1.0, gen)
    assert sigma_hat.item() == pytest.approx(10.0 * math.sqrt(2))  # gamma capped at sqrt(2) - 1
    for i, (s_tmin, s_tmax) in enumerate([(5.0, math.inf), (0.0, 3.0)]):  # sigma 4 is outside both ranges
        x_hat, sigma_hat = churn(x, SIGMAS, 1, 10.0, s_tmin, s_tmax, 1.0, gen)
        assert sigma_hat.item() == 4.0 and torch.equal(x_hat, x), (s_tmin, s_tmax)


@pytest.mark.parametrize("sampler", [sample_euler, sample_heun])
def test_without_churn_no_noise_is_drawn(sampler):
    """s_churn = 0 (the default) is the deterministic solver: it neither draws from the generator nor moves sigma."""
    denoiser = lambda x, sigma: 0.5 * x  # noqa: E731
    x = torch.randn(1, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(7)
    state = gen.get_state()
    torch.testing.assert_close(sampler(denoiser, x, SIGMAS, generator=gen), sampler(denoiser, x, SIGMAS, s_churn=0.0))
    assert torch.equal(gen.get_state(), state)


def test_churned_heun_evaluates_the_denoiser_at_sigma_hat():
    """Algorithm 2, lines 7-10: the step starts from (x_hat, sigma_hat); the correction is at sigma_{i+1}."""
    calls = []
    denoiser = lambda x, sigma: calls.append(float(sigma)) or torch.zeros_like(x)  # noqa: E731
    x = torch.ones(1, 3, 2, 2, dtype=torch.float64)
    sample_heun(denoiser, x, SIGMAS, s_churn=0.8, generator=torch.Generator().manual_seed(0))
    hat = [s * 1.2 for s in SIGMAS[:-1].tolist()]
    assert calls == pytest.approx([hat[0], 4.0, hat[1], 1.0, hat[2], 0.3, hat[3]])  # 2 * 4 - 1 evaluations


@pytest.mark.parametrize("name", ["euler", "heun"])
def test_churned_samplers_land_on_the_data_set(name):
    """With the exact denoiser, the stochastic sampler still ends on data points, spread over the set."""
    data = make_dataset(32, (3, 8, 8), seed=0)
    run = Harness(data).run(name, 25, 32, seed=0, s_churn=20.0, s_tmin=0.05, s_tmax=50.0)
    assert nearest_distance(run.samples, data).max() < 1e-3
    assert len(pairwise_rms(run.samples, data).argmin(1).unique()) >= 12
    plain = Harness(data).run(name, 25, 32, seed=0)
    assert not torch.allclose(run.samples, plain.samples)  # the churn did change the trajectories
