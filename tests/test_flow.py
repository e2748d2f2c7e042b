"""Rectified flow / flow matching as an objective (``FlowMatching``) and a schedule (``FlowSchedule``).

The references: Gaussian data's exact velocity and denoiser (closed forms), rectified flow's Euler steps written in
t directly, diffusers' ``FlowMatchEulerDiscreteScheduler``, the flow-matching loss computed from x_t itself, and
the logit-normal's quantiles.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_MODEL, compose_config, describe, raises_config_error, run_script, write_sprites
from torch import nn

from diffusion.core.denoiser import Denoiser
from diffusion.core.denoising_loss import DenoisingLoss
from diffusion.core.exact import gaussian_denoiser
from diffusion.core.objectives import FlowMatching
from diffusion.core.samplers.ode import sample_euler
from diffusion.core.sampling import generate
from diffusion.core.schedules import FlowSchedule
from diffusion.nets.unet import UNet
from diffusion.training.builders import build_module, sampler_from_conf, sampler_names


class GaussianVelocity(nn.Module):
    """The exact velocity of data x0 ~ N(0, s^2 I) as a raw network told t: for x_t = (1 - t) x0 + t eps,
    v*(x_t, t) = E[eps - x0 | x_t] = (t - (1 - t) s^2) x_t / ((1 - t)^2 s^2 + t^2), the posterior mean of
    jointly Gaussian variables."""

    def __init__(self, s: float):
        super().__init__()
        self.s2 = s**2

    def forward(self, x_t, c_noise, labels=None):
        t = c_noise.double().view(-1, 1, 1, 1)
        return (t - (1 - t) * self.s2) * x_t.double() / ((1 - t) ** 2 * self.s2 + t**2)


def field(x, t):
    """Some nonlinear velocity field v(x, t), for comparisons that hold whatever the network learnt."""
    return torch.tanh(x * (1 + t)) - 0.5 * t * x


class FieldNet(nn.Module):
    def forward(self, x_t, c_noise, labels=None):
        return field(x_t, c_noise.view(-1, 1, 1, 1))


# ------------------------------------------------------------------------------------------ (a) closed form


@pytest.mark.parametrize("s", [0.5, 1.0, 2.0])
def test_exact_velocity_through_the_preconditioning_is_the_exact_denoiser(s):
    denoiser = Denoiser(GaussianVelocity(s), FlowMatching(), FlowSchedule())
    sigma = torch.logspace(-3, 3, 13)
    x = torch.randn(13, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * (s**2 + sigma.view(-1, 1, 1, 1) ** 2).sqrt()
    expected = gaussian_denoiser(torch.tensor([s]))(x.double().flatten(1), sigma.double().view(-1, 1)).view_as(x)
    torch.testing.assert_close(denoiser(x, sigma).double(), expected, rtol=1e-4, atol=1e-6 * s)


def test_the_network_is_told_t_and_sees_x_t():
    schedule, objective = FlowSchedule(), FlowMatching()
    sigma = torch.tensor([0.0, 1e-3, 1.0, 999.0, math.inf])
    torch.testing.assert_close(schedule.c_noise(sigma), torch.tensor([0.0, 1e-3 / 1.001, 0.5, 0.999, 1.0]))
    x0, eps, t = torch.randn(3), torch.randn(3), torch.tensor(0.3)
    s = t / (1 - t)
    torch.testing.assert_close(objective.c_in(s) * (x0 + s * eps), (1 - t) * x0 + t * eps)


# --------------------------------------------------------------------- (b) Euler in sigma form = rectified flow


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_in_sigma_form_is_rectified_flow_euler_and_diffusers(shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    steps, sigma_min, sigma_max = 10, 0.001, 999.0
    schedule = FlowSchedule(shift=shift, sigma_min=sigma_min, sigma_max=sigma_max)
    sigmas = schedule.sigmas(steps)
    # diffusers' grid: uniform in t (its "sigma"), then shifted by t' = a t / (1 + (a - 1) t), then a final 0.
    ends = [sigma / shift / (1 + sigma / shift) for sigma in (sigma_max, sigma_min)]
    reference = FlowMatchEulerDiscreteScheduler(shift=shift)
    reference.set_timesteps(sigmas=torch.linspace(*ends, steps).tolist())
    torch.testing.assert_close(sigmas / (1 + sigmas), reference.sigmas, rtol=1e-5, atol=1e-7)

    z = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ours = []
    x_sigma = (1 + sigmas[0]) * z  # x_t = z at the first level
    sample_euler(Denoiser(FieldNet(), FlowMatching(), schedule), x_sigma, sigmas,
                 callback=lambda i, x, denoised: ours.append(x / (1 + sigmas[i + 1])))
    ts = sigmas.double() / (1 + sigmas.double())
    x_t, x_diffusers = z.double(), z.clone()
    for i, timestep in enumerate(reference.timesteps):
        x_t = x_t + (ts[i + 1] - ts[i]) * field(x_t, ts[i])  # x_{t'} = x_t + (t' - t) v
        x_diffusers = reference.step(field(x_diffusers, timestep / 1000), timestep, x_diffusers).prev_sample
        torch.testing.assert_close(ours[i].double(), x_t, rtol=1e-4, atol=1e-5, msg=f"step {i}")
        torch.testing.assert_close(x_diffusers.double(), x_t, rtol=1e-4, atol=1e-5, msg=f"diffusers, step {i}")


# -------------------------------------------------------------------------------------------- (c) the loss


def test_training_loss_is_the_velocity_mse():
    torch.manual_seed(0)
    net = UNet(num_classes=3, image_size=8, base_channels=8, channel_mult=[1, 2], attn_resolutions=[], norm_groups=4)
    with torch.no_grad():  # the output layer starts at zero, and F = 0 scores v and -v alike
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    denoiser = Denoiser(net, FlowMatching(), FlowSchedule())
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1, torch.randn(6, 3, 8, 8, generator=g)
    t, labels = torch.rand(6, generator=g) * 0.998 + 0.001, torch.tensor([0, 1, 2, 0, 1, 2])
    loss = DenoisingLoss.at(denoiser, x0, t / (1 - t), eps, labels)
    tb = t.view(-1, 1, 1, 1)
    v_mse = (net((1 - tb) * x0 + tb * eps, t, labels) - (eps - x0)).pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss, v_mse, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------- (d) logit-normal times


@pytest.mark.parametrize("m, s", [(0.0, 1.0), (0.5, 0.7)])
def test_training_times_are_logit_normal(m, s):
    sigma = FlowSchedule(logit_mean=m, logit_std=s).sample_sigma(200_000, generator=torch.Generator().manual_seed(0))
    t = sigma.double() / (1 + sigma.double())
    q = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(torch.quantile(t, q), torch.sigmoid(m + s * normal.icdf(q)), rtol=0, atol=4e-3)
    n = torch.linspace(-12, 12, 24_001, dtype=torch.float64)  # E[sigmoid(m + s n)], n ~ N(0, 1), by quadrature
    mean = torch.trapezoid(torch.sigmoid(m + s * n) * normal.log_prob(n).exp(), n)
    assert float(t.mean()) == pytest.approx(float(mean), abs=2e-3)


# ------------------------------------------------------------------------------------- (e) trains and samples


def test_every_sampler_through_generate_sees_the_exact_denoiser():
    """With the exact velocity of N(0, s^2) behind the flow preconditioning, ``generate`` with every sampler of
    conf/sampler (its own spacing and options, on the flow levels) returns what that sampler returns when handed
    the exact denoiser x s^2 / (s^2 + sigma^2) itself, from the same noise and the same generator."""
    s = 0.5
    schedule = FlowSchedule()
    denoiser = Denoiser(GaussianVelocity(s), FlowMatching(), schedule)
    for name in sampler_names():
        sampler = sampler_from_conf(name)
        if getattr(sampler.function, "takes_consistency_function", False):
            continue  # it is handed a consistency function, not a denoiser
        sampler = sampler.with_steps(max(6, getattr(sampler.function, "least_steps", 1)))
        x = generate(denoiser, sampler, 64, image_size=2, generator=torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(0)
        sigmas = sampler.sigmas(schedule)
        start = torch.randn(64, 3, 2, 2, generator=g) * math.sqrt(float(sigmas[0]) ** 2 + 1)
        expected = sampler.function(lambda x, sigma: x * s**2 / (s**2 + sigma**2), start, sigmas, generator=g, **sampler.options)
        torch.testing.assert_close(x, expected.clamp(-1, 1), rtol=1e-4, atol=1e-5, msg=name)


def test_flow_config_trains_and_samples_with_every_sampler():
    torch.manual_seed(0)
    cfg = compose_config("train", [*TINY_MODEL, "paths.output_dir=.", "objective=flow", "schedule=flow"])
    module = build_module(cfg, 5, 16, [f"c{i}" for i in range(5)])
    denoiser = module.denoiser
    assert isinstance(denoiser.objective, FlowMatching) and isinstance(denoiser.schedule, FlowSchedule)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x0, labels = torch.rand(8, 3, 16, 16, generator=g) * 2 - 1, torch.arange(8) % 5
    for _ in range(2):
        loss = DenoisingLoss.at(denoiser, x0, denoiser.schedule.sample_sigma(8, generator=g), torch.randn(x0.shape, generator=g),
                                labels).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    for name in sampler_names():
        sampler = sampler_from_conf(name)
        sampler = sampler.with_steps(max(2, getattr(sampler.function, "least_steps", 1)))
        x = generate(denoiser, sampler, 2, image_size=16, labels=labels[:2], generator=torch.Generator().manual_seed(1))
        assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all(), name


@pytest.mark.slow
def test_train_py_with_objective_flow_writes_samples(tmp_path):
    data = write_sprites(tmp_path / "data")
    proc = run_script("train.py", "objective=flow", "schedule=flow", "data=sprites", f"data.dir={data}",
                      f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, describe(proc)
    assert (tmp_path / "run" / "samples" / "final.png").exists(), describe(proc)


@pytest.mark.parametrize("options", [dict(sigma_min=1.0, sigma_max=0.5), dict(logit_std=0.0), dict(shift=-1.0)])
def test_a_bad_flow_schedule_is_one_config_error(options):
    assert "flow schedule needs" in raises_config_error(FlowSchedule, **options)
