"""iPNDM, DPM-Solver++(2M/3M) SDE and Restart against closed forms and the exact denoiser (diffusion.core.exact).

Convergence orders are fitted as in tests/test_exact_denoiser.py (the slope of log error against log steps).
Where a closed form is wanted, the data are Gaussian, x0 ~ N(0, s^2): then D(x, sigma) = x s^2 / (s^2 + sigma^2)
and the probability-flow ODE carries x(sigma) = x(sigma_0) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_0^2) exactly.
The stochastic samplers are checked for what a user relies on: with the exact denoiser of a small set, every
sample is one of its images, and the images are hit in equal shares (the data distribution), not a few of them.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.core.errors import ConfigError
from diffusion.core.exact import Harness, expected_nfe, fit_order, make_dataset, nearest_distance, pairwise_rms, rms
from diffusion.core.samplers import is_stochastic
from diffusion.core.samplers.common import model_evaluations, steps_for_nfe
from diffusion.core.samplers.multistep import sample_dpmpp_2m, sample_ipndm
from diffusion.core.samplers.restart import restart_index, sample_restart
from diffusion.core.samplers.sde import sample_dpmpp_2m_sde, sample_dpmpp_3m_sde
from diffusion.core.sampling import Sampler

S = 0.5  # the Gaussian data's standard deviation


def gaussian_denoiser(x, sigma):
    return x * S**2 / (S**2 + sigma**2)


def gaussian_ode_error(fn, sigmas, **options) -> float:
    """Max error of ``fn`` against the closed-form probability-flow ODE solution for Gaussian data."""
    z = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = z * math.sqrt(S**2 + sigmas[0] ** 2)
    exact = x * math.sqrt(S**2 + sigmas[-1] ** 2) / math.sqrt(S**2 + sigmas[0] ** 2)
    return (fn(gaussian_denoiser, x.clone(), sigmas, **options) - exact).abs().max().item()


def karras(n: int, lo: float = 0.002, hi: float = 80.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    return (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7


# --------------------------------------------------------------------------------------------------- iPNDM


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_ipndm_has_the_adams_bashforth_order_on_equal_steps(order):
    """On equal steps in sigma iPNDM is Adams-Bashforth of its order (the lower-order warm start costs a little:
    measured 0.98, 1.81, 2.60, 3.41 over 20-80 steps)."""
    steps = [20, 40, 80]
    grids = [torch.linspace(5, 0.5, n + 1, dtype=torch.float64) for n in steps]
    errors = [gaussian_ode_error(sample_ipndm, sigmas, order=order) for sigmas in grids]
    p = fit_order(steps, errors)
    print(f"ipndm order={order}: {errors} -> {p:.2f}")
    assert order - 0.6 < p < order + 0.5


@pytest.mark.parametrize("order", [2, 4])
def test_ipndm_is_second_order_on_karras_steps(order):
    """The equal-step weights on unequal steps are consistent to first order in the step ratio only: second order
    at any order >= 2 (see sample_ipndm), which still beats Euler (order 1) by far at equal NFE."""
    steps = [20, 40, 80]
    errors = [gaussian_ode_error(sample_ipndm, karras(n), order=order) for n in steps]
    euler = gaussian_ode_error(sample_ipndm, karras(80), order=1)
    print(f"ipndm order={order} on Karras steps: {errors}; Euler at 80 steps {euler:.2e}")
    assert 1.7 < fit_order(steps, errors) < 2.5
    assert errors[-1] < euler / 10


def test_ipndm_on_the_exact_denoiser_beats_euler_and_converges():
    harness = Harness(make_dataset(32, (3, 8, 8), seed=0))
    reference = harness.reference(16, steps=2000, final_zero=False)

    def error(name, n):
        return rms(harness.run(name, n, 16, final_zero=False).samples, reference).median().item()

    ipndm = [error("ipndm", n) for n in (80, 160)]
    print("ipndm", ipndm, "euler", error("euler", 80))
    assert ipndm[1] < ipndm[0] < error("euler", 80) / 50  # measured: 90 times smaller


# --------------------------------------------------------------------------------------- DPM-Solver++ SDE


def test_dpmpp_sde_at_eta_0_is_the_ode_solver():
    """eta = 0 switches the noise off and the e^{-(1 + eta) h} factors become those of DPM-Solver++(2M)."""
    harness = Harness(make_dataset(32, (3, 8, 8), seed=0))
    ode = harness.run(sample_dpmpp_2m, 12, 16).samples
    torch.testing.assert_close(harness.run(sample_dpmpp_2m_sde, 12, 16, eta=0.0).samples, ode, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(harness.run(sample_dpmpp_2m_sde, 12, 16, final_zero=False).samples,
                              harness.run(sample_dpmpp_2m, 12, 16, final_zero=False).samples)


def test_dpmpp_3m_at_eta_0_is_third_order():
    """As an ODE solver (eta = 0) the 3M rule converges at third order on the exact denoiser (measured 3.5), the
    2M rule at second; a wrong phi_3 (diffusers' SDE coefficient, see sample_dpmpp_3m_sde) would lose it."""
    harness = Harness(make_dataset(32, (3, 8, 8), seed=0))
    reference = harness.reference(16, steps=2000, final_zero=False)
    steps = [40, 80, 160]
    orders = {}
    for fn in (sample_dpmpp_2m_sde, sample_dpmpp_3m_sde):
        runs = [harness.run(fn, n, 16, final_zero=False, eta=0.0) for n in steps]
        errors = [rms(run.samples, reference).median().item() for run in runs]
        orders[fn.__name__] = fit_order(steps, errors)
        print(fn.__name__, errors, orders[fn.__name__])
    assert 1.8 < orders["sample_dpmpp_2m_sde"] < 2.6
    assert 2.8 < orders["sample_dpmpp_3m_sde"] < 4.3


# --------------------------------------------------------------------------------------------------- UniPC


@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_order_is_one_above_its_predictor(order):
    """UniP-p converges at order p, and the corrector adds one at no extra evaluation (Zhao et al. 2023).
    Measured on the exact denoiser: UniP 1.06, 2.22, 3.39 and UniPC 1.88, 3.07 over 40-160 steps; UniPC-3
    reaches the reference's own error (~1e-8) by 160 steps, so it is fitted over 20-80 (3.93)."""
    harness = Harness(make_dataset(32, (3, 8, 8), seed=0))
    reference = harness.reference(16, steps=2000, final_zero=False)

    def fitted(steps, **options):
        runs = [harness.run("unipc", n, 16, final_zero=False, order=order, **options) for n in steps]
        errors = [rms(run.samples, reference).median().item() for run in runs]
        return fit_order(steps, errors)

    predictor = fitted([40, 80, 160], corrector=False)
    corrected = fitted([40, 80, 160] if order < 3 else [20, 40, 80])
    print(f"UniP-{order} {predictor:.2f}, UniPC-{order} {corrected:.2f}")
    assert order - 0.3 < predictor < order + 0.7
    assert order + 0.6 < corrected < order + 1.5
    assert harness.run("unipc", 10, 4, order=order).nfe == 10  # the corrector costs no evaluation


# ------------------------------------------------------------------------------------- the data distribution


@pytest.mark.parametrize("fn", [sample_dpmpp_2m_sde, sample_dpmpp_3m_sde, sample_restart])
def test_stochastic_samplers_draw_the_data_distribution(fn):
    """With the exact denoiser of 8 images the reverse SDE samples them uniformly: 800 samples hit each image
    100 times, give or take sqrt(100 * 7/8) ~ 9.4 (binomial). Five standard deviations bound every count; an SDE
    solver with too little noise (half of it) lands on the data too, but in lopsided shares. (Restart's noise
    is checked on its own below: its ODE steps alone would also give equal shares.)"""
    assert is_stochastic(fn)
    data = make_dataset(8, (3, 4, 4), seed=1)
    run = Harness(data).run(fn, 20, 800, seed=0)
    assert nearest_distance(run.samples, data).max() < 1e-3
    counts = torch.bincount(pairwise_rms(run.samples, data).argmin(1), minlength=8)
    print(fn.__name__, counts.tolist())
    assert (counts - 100).abs().max() < 5 * math.sqrt(100 * 7 / 8), counts.tolist()
    # Same seed, same samples.
    torch.testing.assert_close(Harness(data).run(fn, 20, 800, seed=0).samples, run.samples, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------- Restart


@pytest.mark.parametrize("times,steps", [(0, 3), (1, 1), (2, 4), (3, 5)])
def test_restart_counts_its_evaluations(times, steps):
    harness = Harness(make_dataset(8, (3, 4, 4), seed=1))
    options = {"restart_times": times, "restart_steps": steps}
    for final_zero in (True, False):
        run = harness.run("restart", 12, 4, final_zero=final_zero, **options)
        assert run.nfe == expected_nfe("restart", 12, final_zero, **options) == 2 * 12 - final_zero + 2 * times * steps
    sampler = Sampler("restart", steps=17, spacing="karras", options=options)
    assert sampler.nfe == 33 + 2 * times * steps
    assert steps_for_nfe(sample_restart, sampler.nfe, options) == 17
    assert model_evaluations(sample_restart, 12) == 23 + 2 * 2 * 4  # the function's defaults: K = 2, N = 4


def test_restart_without_restarts_is_heun_and_adds_the_forward_noise():
    harness = Harness(make_dataset(8, (3, 4, 4), seed=1))
    heun = harness.run("heun", 12, 16).samples
    torch.testing.assert_close(harness.run("restart", 12, 16, restart_times=0).samples, heun, rtol=0, atol=0)

    # Each restart adds noise of variance t_max^2 - t_min^2 to x at t_min (the forward process's transition),
    # then spends N Heun steps from t_max down to t_min.
    sigmas = harness.sigmas(12)
    t_min, t_max = float(sigmas[restart_index(sigmas, 0.3)]), 0.6
    seen = []

    def recording(x, sigma):
        seen.append((float(sigma), x.clone()))
        return harness.denoiser(x, sigma)

    x = harness.noise(256)
    sample_restart(recording, x, sigmas, restart_min=0.3, restart_max=t_max, restart_times=1, restart_steps=3,
                   generator=torch.Generator().manual_seed(1))
    levels = [s for s, _ in seen]
    first = next(k for k, s in enumerate(levels) if s == pytest.approx(t_max, rel=1e-12))
    assert levels[first - 1] == pytest.approx(t_min, rel=1e-12)  # Heun's correction at t_min, then the restart
    l1, l2 = levels[first + 1], levels[first + 3]
    assert levels[first : first + 6] == pytest.approx([t_max, l1, l1, l2, l2, t_min])
    # The jump from x at t_min after the main steps (plain Heun so far) to the first x at t_max is the noise.
    x_tmin = sample_restart(harness.denoiser, x, sigmas[: restart_index(sigmas, 0.3) + 1], restart_times=0)
    jump = seen[first][1] - x_tmin
    assert jump.std().item() == pytest.approx(math.sqrt(t_max**2 - t_min**2), rel=0.03)


def test_bad_options_are_one_line_config_errors():
    harness = Harness(make_dataset(8, (3, 4, 4), seed=1))
    with pytest.raises(ConfigError, match="restart_max=0.5 must exceed the restart level"):
        harness.run("restart", 12, 4, restart_min=1.0, restart_max=0.5)
    with pytest.raises(ConfigError, match="steps >= 2"):
        harness.run("restart", 1, 4)
    with pytest.raises(ConfigError, match="order=5 must be 1 to 4"):
        harness.run("ipndm", 12, 4, order=5)
    with pytest.raises(ConfigError, match="eta=-1"):
        harness.run("dpmpp_3m_sde", 12, 4, eta=-1)
