"""The DDPM reverse step against hand-computed numbers, and the objectives' targets against their
preconditioning (a network that outputs the target exactly must give a denoiser that returns x0)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion.core.denoiser import Denoiser
from diffusion.core.denoising_loss import DenoisingLoss
from diffusion.core.objectives import EDMPreconditioning, EpsPrediction, VPrediction, X0Prediction
from diffusion.core.samplers.ancestral import sample_ddpm
from diffusion.core.schedules import LinearSchedule

# A schedule small enough to do by hand: T = 3, beta = 0.1, 0.2, 0.3.
BETA = {1: 0.1, 2: 0.2, 3: 0.3}
ALPHA = {t: 1 - b for t, b in BETA.items()}  # 0.9, 0.8, 0.7
ALPHA_BAR = {0: 1.0, 1: 0.9, 2: 0.9 * 0.8, 3: 0.9 * 0.8 * 0.7}  # 1, 0.9, 0.72, 0.504
SIGMA = {t: math.sqrt((1 - ab) / ab) for t, ab in ALPHA_BAR.items()}  # VE noise level of step t
SHAPE = (2, 3, 2, 2)


def sigmas(*ts: int) -> torch.Tensor:
    return torch.tensor([SIGMA[t] for t in ts], dtype=torch.float64)


def known(seed: int) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class EpsModel:
    """An eps-prediction 'network' returning known tensors, one per call, wrapped as the VE denoiser
    D(x, sigma) = x - sigma * eps that the samplers take."""

    def __init__(self, *eps: torch.Tensor):
        self.eps, self.calls = list(eps), []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls.append(float(sigma))
        return x - sigma * self.eps[len(self.calls) - 1]


def ddpm_mean(x_vp: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
    """mu = (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_t)  (Ho et al. 2020, Algorithm 2)."""
    return (x_vp - BETA[t] / math.sqrt(1 - ALPHA_BAR[t]) * eps) / math.sqrt(ALPHA[t])


def posterior_std(t: int) -> float:
    return math.sqrt(BETA[t] * (1 - ALPHA_BAR[t - 1]) / (1 - ALPHA_BAR[t]))


def test_hand_schedule_matches_linear_schedule():
    s = LinearSchedule(T=3, beta_start=0.1, beta_end=0.3)
    np.testing.assert_allclose(s.beta.numpy(), [0, 0.1, 0.2, 0.3], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(s.alpha_bar.numpy(), [1, 0.9, 0.72, 0.504], rtol=1e-12)
    np.testing.assert_allclose(s.sigmas(3).numpy(), sigmas(3, 2, 1, 0).numpy(), rtol=1e-6)
    assert [round(SIGMA[t] ** 2, 12) for t in (1, 2, 3)] == [round(0.1 / 0.9, 12), round(0.28 / 0.72, 12), round(0.496 / 0.504, 12)]


def test_one_step_with_posterior_noise():
    x_vp = known(1)  # x_3 in the VP form
    eps = known(2)
    x = x_vp / math.sqrt(ALPHA_BAR[3])  # the same point in the VE form the samplers use
    model = EpsModel(eps)

    out = sample_ddpm(model, x, sigmas(3, 2), generator=torch.Generator().manual_seed(7))

    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x2_vp = ddpm_mean(x_vp, eps, 3) + posterior_std(3) * z
    torch.testing.assert_close(out * math.sqrt(ALPHA_BAR[2]), x2_vp, rtol=1e-10, atol=1e-10)
    assert model.calls == pytest.approx([SIGMA[3]])
    # posterior variance by hand: beta_3 (1 - ab_2) / (1 - ab_3) = 0.3 * 0.28 / 0.496
    assert posterior_std(3) ** 2 == pytest.approx(0.3 * 0.28 / 0.496, rel=1e-12)


def test_one_step_without_noise_is_the_mean():
    x_vp, eps = known(3), known(4)
    out = sample_ddpm(EpsModel(eps), x_vp / math.sqrt(ALPHA_BAR[3]), sigmas(3, 2), add_noise=False,
                      generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(out * math.sqrt(ALPHA_BAR[2]), ddpm_mean(x_vp, eps, 3), rtol=1e-10, atol=1e-10)


def test_one_step_with_beta_variance():
    x_vp, eps = known(5), known(6)
    out = sample_ddpm(EpsModel(eps), x_vp / math.sqrt(ALPHA_BAR[2]), sigmas(2, 1), variance="beta",
                      generator=torch.Generator().manual_seed(11))
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    expected = ddpm_mean(x_vp, eps, 2) + math.sqrt(BETA[2]) * z
    torch.testing.assert_close(out * math.sqrt(ALPHA_BAR[1]), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_last_step_adds_no_noise(variance):
    x_vp, eps = known(7), known(8)
    x = x_vp / math.sqrt(ALPHA_BAR[1])
    a = sample_ddpm(EpsModel(eps), x, sigmas(1, 0), variance=variance, generator=torch.Generator().manual_seed(1))
    b = sample_ddpm(EpsModel(eps), x, sigmas(1, 0), variance=variance, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    # to t = 0: alpha_bar_0 = 1, so the VE and VP forms coincide and x_0 is the mean
    torch.testing.assert_close(a, ddpm_mean(x_vp, eps, 1), rtol=1e-10, atol=1e-10)


def test_full_chain_by_hand():
    """Three steps T=3 -> 0 with a different known eps per step: noise on the first two steps only."""
    x_vp = known(20)
    eps = [known(21), known(22), known(23)]
    model = EpsModel(*eps)
    out = sample_ddpm(model, x_vp / math.sqrt(ALPHA_BAR[3]), sigmas(3, 2, 1, 0), generator=torch.Generator().manual_seed(3))

    g = torch.Generator().manual_seed(3)
    x = x_vp
    for k, t in enumerate((3, 2, 1)):
        x = ddpm_mean(x, eps[k], t)
        if t > 1:
            x = x + posterior_std(t) * torch.randn(SHAPE, generator=g, dtype=torch.float64)
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-10)
    assert model.calls == pytest.approx([SIGMA[3], SIGMA[2], SIGMA[1]])


@pytest.mark.parametrize("t", [2, 250, 500])
def test_float32_levels_give_the_float64_posterior_noise(t):
    """From x = 0 with D(x) = x (eps = 0) one step adds only noise, sqrt(beta_t (1 - ab_{t-1}) / (1 - ab_t) / ab_{t-1})
    times z. Formed from the float32 levels in float32, beta = 1 - ab_t / ab_{t-1} loses ~3 digits where beta ~ 1e-4
    (t = 2: 5e-4 relative error); the samplers form it in float64, against the schedule's float64 table."""
    s = LinearSchedule(T=500)
    levels = s.sigmas(500)  # float32, t = 500 .. 1, then 0
    step = levels[500 - t : 500 - t + 2]
    out = sample_ddpm(lambda x, sigma: x, torch.zeros(SHAPE), step, generator=torch.Generator().manual_seed(0))
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    beta, ab, ab_prev = float(s.beta[t]), float(s.alpha_bar[t]), float(s.alpha_bar[t - 1])
    expected = math.sqrt(beta * (1 - ab_prev) / (1 - ab) / ab_prev)
    torch.testing.assert_close(out.double(), expected * z.double(), rtol=1e-5, atol=0)


def test_callback_sees_every_step():
    seen = []
    sample_ddpm(EpsModel(known(1), known(2), known(3)), known(0), sigmas(3, 2, 1, 0), add_noise=False,
                callback=lambda i, x, d: seen.append(i))
    assert seen == [0, 1, 2]


def test_bad_variance_name_raises():
    with pytest.raises(ValueError, match="variance"):
        sample_ddpm(EpsModel(known(1)), known(0), sigmas(3, 2), variance="nope")


# --------------------------------------------------------------------------------- objectives

OBJECTIVES = {
    "eps": EpsPrediction(),
    "x0": X0Prediction(),
    "v": VPrediction(),
    "edm": EDMPreconditioning(sigma_data=0.5),
}
SIGMA_VALUES = [0.002, 0.1, 1.0, 12.5, 80.0]


@pytest.mark.parametrize("name", OBJECTIVES)
@pytest.mark.parametrize("sigma", SIGMA_VALUES)
def test_target_and_preconditioning_agree(name, sigma):
    obj = OBJECTIVES[name]
    x0, noise = known(30), known(31)
    s = torch.full((SHAPE[0], 1, 1, 1), sigma, dtype=torch.float64)
    x = x0 + s * noise
    target = obj.target(x0, noise, s)
    torch.testing.assert_close(obj.c_skip(s) * x + obj.c_out(s) * target, x0, rtol=1e-9, atol=1e-9)


def test_named_targets():
    x0, noise = known(40), known(41)
    s = torch.tensor([0.3, 2.0], dtype=torch.float64).reshape(2, 1, 1, 1)
    ab = 1 / (1 + s**2)
    assert torch.equal(OBJECTIVES["eps"].target(x0, noise, s), noise)
    assert torch.equal(OBJECTIVES["x0"].target(x0, noise, s), x0)
    torch.testing.assert_close(OBJECTIVES["v"].target(x0, noise, s), ab.sqrt() * noise - (1 - ab).sqrt() * x0)
    # the variance-preserving objectives feed the network exactly the DDPM noising sqrt(ab) x0 + sqrt(1-ab) eps
    for name in ("eps", "x0", "v"):
        x_in = OBJECTIVES[name].c_in(s) * (x0 + s * noise)
        torch.testing.assert_close(x_in, ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    # EDM: c_in = 1 / sqrt(sigma^2 + sigma_data^2)
    torch.testing.assert_close(OBJECTIVES["edm"].c_in(s), 1 / (s**2 + 0.25).sqrt())


class OracleNet(torch.nn.Module):
    """Returns a fixed tensor whatever its input: the objective's target, i.e. a perfect network."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = output
        self.seen_c_noise = None

    def forward(self, x, c_noise, labels=None):
        self.seen_c_noise = c_noise
        return self.output


@pytest.mark.parametrize("name", OBJECTIVES)
def test_denoiser_with_a_perfect_network_returns_x0(name):
    obj = OBJECTIVES[name]
    schedule = LinearSchedule()
    x0 = known(50).float()
    noise = known(51).float()
    sigma = schedule.sigma_at(torch.tensor([10, 400]))
    s4 = sigma.reshape(-1, 1, 1, 1)
    net = OracleNet(obj.target(x0, noise, s4))
    d = Denoiser(net, obj, schedule)
    torch.testing.assert_close(d(x0 + s4 * noise, sigma), x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(net.seen_c_noise, torch.tensor([10 / 500, 400 / 500]))
    assert float(DenoisingLoss.at(d, x0, sigma, noise).abs().max()) < 1e-10
