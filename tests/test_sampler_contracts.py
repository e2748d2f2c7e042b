"""Contracts every sampler and helper keeps that the numbers tests do not see: what the callback is given, which
samplers say they are stochastic, that deterministic settings draw no noise, the churn window's closed ends, rho
reaching the Karras levels, guidance with an odd batch, and the per-sample loss."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.core import samplers
from diffusion.core.denoiser import Denoiser, conditioned
from diffusion.core.denoising_loss import DenoisingLoss
from diffusion.core.errors import ConfigError
from diffusion.core.objectives import EDMPreconditioning, EpsPrediction
from diffusion.core.samplers.ancestral import sample_ddim
from diffusion.core.samplers.ode import churn
from diffusion.core.sampling import Sampler
from diffusion.core.schedules import EDMSchedule, LinearSchedule, SigmoidSchedule, get_sigmas_karras

SIGMAS = torch.tensor([10.0, 4.0, 1.0, 0.3, 0.0], dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(samplers.all_samplers()))
def test_callback_gets_the_step_index_and_the_x0_estimate(name):
    point = torch.full((1, 3, 2, 2), 0.25, dtype=torch.float64)
    seen = []
    samplers.by_name(name)(lambda x, sigma: point.expand_as(x), torch.ones(2, 3, 2, 2, dtype=torch.float64), SIGMAS,
                           generator=torch.Generator().manual_seed(0), callback=lambda i, x, d: seen.append((i, d)))
    assert [i for i, _ in seen] == [0, 1, 2, 3]
    assert all(torch.equal(d, point.expand(2, 3, 2, 2)) for _, d in seen)


def test_registry_holds_exactly_the_sample_functions():
    found = samplers.all_samplers()
    assert {"ddpm", "ddim", "euler", "euler_ancestral", "heun", "lms", "dpmpp_2m"} <= set(found)
    assert all(fn.__name__ == f"sample_{name}" for name, fn in found.items())
    assert samplers.is_stochastic(found["ddpm"]) is True and samplers.is_stochastic(found["euler_ancestral"]) is True
    assert samplers.is_stochastic(found["heun"]) is False and samplers.is_stochastic(found["ddim"]) is False


def test_markers_and_defaults():
    from diffusion.core.samplers.ancestral import sample_euler_ancestral
    from diffusion.core.samplers.common import evaluations, model_evaluations, stochastic

    plain = evaluations()(lambda: None)
    assert (plain.evaluations_per_step, plain.evaluations_saved) == (1, 0) and model_evaluations(plain, 5) == 5
    assert stochastic(lambda: None).stochastic is True
    x = torch.ones(1, 3, 2, 2, dtype=torch.float64)
    run = lambda **kw: sample_euler_ancestral(lambda x, s: 0.5 * x, x, SIGMAS, generator=torch.Generator().manual_seed(0), **kw)  # noqa: E731
    assert torch.equal(run(), run(eta=1.0, s_noise=1.0))
    d = lambda x, sigma, labels: labels.float().reshape(-1, 1, 1, 1).expand_as(x).clone()  # noqa: E731
    assert conditioned(d, torch.tensor([1]), null_label=4)(torch.zeros(1, 1, 1, 1), torch.tensor(1.0)).item() == 1.0


def test_denoiser_output_is_float32_whatever_sigma_dtype():
    class Zero(torch.nn.Module):
        def forward(self, x, c_noise, labels=None):
            return torch.zeros_like(x)

    out = Denoiser(Zero(), EpsPrediction(), LinearSchedule())(torch.ones(2, 3, 2, 2), torch.tensor(0.5, dtype=torch.float64))
    assert out.dtype == torch.float32


def test_deterministic_ddim_draws_no_noise():
    gen = torch.Generator().manual_seed(7)
    state = gen.get_state()
    sample_ddim(lambda x, sigma: 0.5 * x, torch.ones(1, 3, 2, 2, dtype=torch.float64), SIGMAS, generator=gen)
    assert torch.equal(gen.get_state(), state)


def test_churn_window_includes_its_ends():
    x = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    for s_tmin, s_tmax in [(4.0, 5.0), (3.0, 4.0)]:  # sigma_1 = 4 sits on an end
        _, sigma_hat = churn(x, SIGMAS, 1, 0.8, s_tmin, s_tmax, 1.0, torch.Generator().manual_seed(0))
        assert float(sigma_hat) == pytest.approx(4.8)


def test_rho_reaches_the_karras_levels():
    assert torch.equal(get_sigmas_karras(6, 0.01, 10.0), get_sigmas_karras(6, 0.01, 10.0, rho=7.0))
    s = LinearSchedule()
    three = get_sigmas_karras(6, s.sigma_min, s.sigma_max, rho=3.0)
    assert torch.equal(s.karras_sigmas(6, rho=3.0), three)
    assert torch.equal(Sampler("euler", steps=6, spacing="karras", rho=3.0).sigmas(s), three)
    edm = EDMSchedule(rho=3.0)
    assert torch.equal(edm.sigmas(6), get_sigmas_karras(6, 0.002, 80.0, rho=3.0))


def test_guidance_with_an_odd_batch():
    d = lambda x, sigma, labels: labels.float().reshape(-1, 1, 1, 1).expand_as(x).clone()  # noqa: E731
    out = conditioned(d, torch.tensor([0, 1, 2]), guidance=1.0, null_label=4)(torch.zeros(3, 1, 1, 1), torch.tensor(1.0))
    assert out.flatten().tolist() == [-4.0, -2.0, 0.0]  # 2 c - null


def test_loss_is_per_sample():
    class Zero(torch.nn.Module):
        def forward(self, x, c_noise, labels=None):
            return torch.zeros_like(x)

    noise = torch.stack([torch.full((3, 2, 2), 1.0), torch.full((3, 2, 2), 2.0)])
    denoiser = Denoiser(Zero(), EpsPrediction(), LinearSchedule())
    loss = DenoisingLoss.at(denoiser, torch.zeros(2, 3, 2, 2), torch.tensor([0.5, 0.5]), noise)
    assert loss.tolist() == [1.0, 4.0]  # |0 - eps|^2 per image


def test_remaining_bounds_and_messages():
    with pytest.raises(ConfigError, match=r"^objective\.sigma_data=0\.0 must be > 0 \(the data's standard deviation\)$"):
        EDMPreconditioning(0.0)
    with pytest.raises(ConfigError, match=r"^sigmoid schedule needs start < end and tau > 0 \(got 1\.0, 1\.0, 1\.0\)$"):
        SigmoidSchedule(start=1.0, end=1.0)
    with pytest.raises(ConfigError, match=r"^schedule needs 0 < sigma_min < sigma_max \(got 1\.0, 1\.0\)$"):
        SigmoidSchedule(sigma_min=1.0, sigma_max=1.0)
    with pytest.raises(ConfigError, match=r"^schedule\.s=1\.0 must be in \[0, 1\)$"):
        from diffusion.core.schedules import CosineSchedule

        CosineSchedule(s=1.0)
    assert math.isfinite(SigmoidSchedule(start=0.0, end=1e-3).sigma_max)
