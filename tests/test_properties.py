"""Invariants that hold for every schedule, objective and sampler, over settings drawn by hypothesis.

- sigma rises with t (and the network's c_noise with sigma), alpha_bar stays in (0, 1);
- the objective's target turns back into x0 exactly, for every (schedule, objective) pair;
- with the exact denoiser of a one-point data set (D(x, sigma) = that point), every sampler lands on the point.

Derandomized and without an example database, so a run is reproducible and writes nothing.
"""

from __future__ import annotations

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from diffusion.core import samplers  # noqa: E402
from diffusion.core.denoiser import Denoiser  # noqa: E402
from diffusion.core.denoising_loss import DenoisingLoss  # noqa: E402
from diffusion.core.objectives import EDMPreconditioning, EpsPrediction, VPrediction, X0Prediction  # noqa: E402
from diffusion.core.schedules import CosineSchedule, EDMSchedule, LinearSchedule, SigmoidSchedule  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None)


@st.composite
def schedules(draw):
    kind = draw(st.sampled_from(["linear", "cosine", "sigmoid", "edm"]))
    scale = draw(st.sampled_from([1.0, 0.5]))
    if kind == "linear":
        beta_start = draw(st.floats(1e-5, 1e-2))
        beta_end = draw(st.floats(beta_start * 1.5, 0.05))
        return LinearSchedule(T=draw(st.integers(2, 1000)), beta_start=beta_start, beta_end=beta_end, input_scale=scale)
    sigma_min = draw(st.floats(1e-3, 0.1))
    sigma_max = draw(st.floats(1.0, 200.0))
    if kind == "cosine":
        return CosineSchedule(s=draw(st.floats(0.0, 0.1)), sigma_min=sigma_min, sigma_max=sigma_max, input_scale=scale)
    if kind == "sigmoid":
        start = draw(st.floats(-5.0, 0.0))
        end = draw(st.floats(start + 1.0, 5.0))
        return SigmoidSchedule(start=start, end=end, tau=draw(st.floats(0.3, 2.0)), sigma_min=sigma_min,
                               sigma_max=sigma_max, input_scale=scale)
    return EDMSchedule(P_mean=draw(st.floats(-2.0, 1.0)), P_std=draw(st.floats(0.5, 2.0)), sigma_min=sigma_min,
                       sigma_max=sigma_max, input_scale=scale)


OBJECTIVES = st.sampled_from([EpsPrediction(), X0Prediction(), VPrediction(), EDMPreconditioning(0.5), EDMPreconditioning(1.0)])


@SETTINGS
@given(schedules())
def test_sigma_rises_with_t_and_alpha_bar_stays_in_the_unit_interval(s):
    if isinstance(s, LinearSchedule):
        sigma = s.sigma_table
        ab = s.alpha_bar[1:]
    elif isinstance(s, EDMSchedule):
        sigma = s.sigmas(50)[:-1].double().flip(0)
        ab = 1 / (1 + sigma**2)
    else:
        t = torch.linspace(s.t_min, s.t_max, 200, dtype=torch.float64)
        sigma, ab = s.sigma_at(t), s.alpha_bar(t)
        assert (ab[1:] < ab[:-1]).all()
    assert (sigma[1:] > sigma[:-1]).all()
    assert ((ab > 0) & (ab < 1)).all()
    levels = s.sigmas(min(20, getattr(s, "T", 20)))
    assert float(levels[-1]) == 0 and (levels[1:] < levels[:-1]).all()
    # the network's noise input rises with sigma, beyond both ends of the sampling range too
    probe = torch.cat([sigma.float()[:: max(len(sigma) // 50, 1)], torch.tensor([s.sigma_max * 1.2, s.sigma_max * 1.41])])
    c = s.c_noise(probe.sort().values)
    assert torch.isfinite(c).all() and (c[1:] >= c[:-1]).all()


@SETTINGS
@given(schedules(), OBJECTIVES, st.integers(0, 2**31 - 1))
def test_target_turns_back_into_x0(schedule, objective, seed):
    g = torch.Generator().manual_seed(seed)
    sigma = schedule.sample_sigma(4, generator=g).double().reshape(-1, 1, 1, 1)
    x0 = torch.rand(4, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(4, 3, 4, 4, generator=g, dtype=torch.float64)
    target = objective.target(x0, noise, sigma)
    torch.testing.assert_close(objective.c_skip(sigma) * (x0 + sigma * noise) + objective.c_out(sigma) * target, x0,
                               rtol=1e-9, atol=1e-9)


class Oracle(torch.nn.Module):
    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, x, c_noise, labels=None):
        return self.output


@SETTINGS
@given(schedules(), OBJECTIVES, st.integers(0, 2**31 - 1))
def test_a_network_that_outputs_the_target_denoises_exactly(schedule, objective, seed):
    """Through the Denoiser (float32, the schedule's input scale and c_noise): D(x0 * b + sigma eps) = x0 * b."""
    g = torch.Generator().manual_seed(seed)
    sigma = schedule.sample_sigma(4, generator=g)
    x0 = (torch.rand(4, 3, 4, 4, generator=g) * 2 - 1) * schedule.input_scale
    noise = torch.randn(4, 3, 4, 4, generator=g)
    s4 = sigma.reshape(-1, 1, 1, 1)
    d = Denoiser(Oracle(objective.target(x0, noise, s4)), objective, schedule)
    out = d(x0 + s4 * noise, sigma)
    tol = 1e-5 * (1 + float(sigma.max())) * (1 + float(sigma.max()) * isinstance(objective, X0Prediction))
    torch.testing.assert_close(out, x0, rtol=0, atol=max(tol, 1e-5))
    assert float(DenoisingLoss.at(d, x0, sigma, noise).max()) == 0.0


@SETTINGS
@given(schedules(), st.sampled_from(sorted(samplers.all_samplers())), st.integers(1, 12), st.sampled_from(["karras", "schedule"]),
       st.integers(0, 2**31 - 1))
def test_every_sampler_lands_on_a_one_point_data_set(schedule, name, steps, spacing, seed):
    """The exact denoiser of the data set {p} is D(x, sigma) = p, and the probability-flow ODE's solution is the
    straight line x(sigma) - p = (sigma / sigma_0) (x_0 - p): a deterministic solver stays on it at every step (its
    derivative (x - p) / sigma is constant along it), and every sampler ends at p."""
    steps = min(steps, getattr(schedule, "T", steps))
    sigmas = (schedule.karras_sigmas(steps) if spacing == "karras" else schedule.sigmas(steps)).double()
    g = torch.Generator().manual_seed(seed)
    point = torch.rand(1, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    x = point + torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) * float(sigmas[0])
    fn, seen = samplers.by_name(name), []
    out = fn(lambda x, sigma: point.expand_as(x), x, sigmas, generator=g, callback=lambda i, x, d: seen.append(x.clone()))
    scale = 1e-9 * (1 + float(sigmas[0]))
    if not samplers.is_stochastic(fn):
        assert len(seen) == steps
        for i, xi in enumerate(seen):
            expected = point + (sigmas[i + 1] / sigmas[0]) * (x - point)
            torch.testing.assert_close(xi, expected, rtol=0, atol=scale, msg=f"{name} left the ODE's line at step {i}")
    torch.testing.assert_close(out, point.expand_as(out), rtol=0, atol=scale)


@pytest.mark.parametrize("name", ["ddpm", "euler_ancestral"])
def test_ancestral_samplers_keep_the_exact_marginals_of_a_one_point_data_set(name):
    """For the data set {p} the noised marginal at sigma is N(p, sigma^2 I), and an ancestral step samples the exact
    posterior, so after every step x - p has standard deviation sigma_{i+1} (49152 values: 2% is 7 standard errors)."""
    sigmas = LinearSchedule(T=200).sigmas(8).double()
    g = torch.Generator().manual_seed(0)
    point = torch.rand(1, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    x = point + torch.randn(256, 3, 8, 8, generator=g, dtype=torch.float64) * sigmas[0]
    stds = []
    samplers.by_name(name)(lambda x, sigma: point.expand_as(x), x, sigmas, generator=g,
                           callback=lambda i, x, d: stds.append(float((x - point).std())))
    for i, std in enumerate(stds[:-1]):
        assert std == pytest.approx(float(sigmas[i + 1]), rel=0.02), (name, i)
    assert stds[-1] < 1e-9
