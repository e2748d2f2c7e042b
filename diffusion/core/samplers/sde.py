"""Multistep solvers of the reverse SDE in log-sigma time lambda = -log(sigma): DPM-Solver++(2M) SDE and (3M) SDE.

Lu et al. 2022 ("DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models") solve the
reverse SDE exactly in its linear part, as diffusers' ``sde-dpmsolver++`` and k-diffusion's ``dpmpp_*_sde`` do.
In the variance-exploding form x = x0 + sigma * eps with h = lambda_next - lambda = log(sigma / sigma_next) the
first-order step is

    x_next = (sigma_next / sigma) e^{-h} x + (1 - e^{-2h}) D(x, sigma) + sigma_next sqrt(1 - e^{-2h}) z,

with z ~ N(0, I): the Brownian term has the variance the SDE's Ornstein-Uhlenbeck part accumulates over the step.
The multistep variants replace D by a polynomial extrapolation of the last two or three denoiser outputs in
lambda. ``eta`` scales the SDE's noise (as in k-diffusion): eta = 0 is the probability-flow ODE and gives
DPM-Solver++(2M) / (3M) themselves; the e^{-h} factors then become e^{-(1 + eta) h}.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion.core.denoiser import DenoiserFn
from diffusion.core.errors import ConfigError
from diffusion.core.samplers.common import Callback, noise_like, notify, stochastic


def _check(eta: float, s_noise: float) -> None:
    if eta < 0 or s_noise < 0:
        raise ConfigError(
            f"sampler.options eta={eta} and s_noise={s_noise} must be >= 0 (eta = 0: the probability-flow ODE)"
        )


def _add_noise(x: Tensor, sigma_next: Tensor, h: Tensor, eta: float, s_noise: float, generator) -> Tensor:
    """The Brownian term sigma_next sqrt(1 - e^{-2 eta h}) z, drawn only when it is not zero."""
    if not eta:
        return x
    return x + noise_like(x, generator) * sigma_next * (-2 * eta * h).expm1().neg().sqrt() * s_noise


def _first_order_step(x: Tensor, denoised: Tensor, sigma: Tensor, sigma_next: Tensor, eta: float):
    """The module docstring's first-order step without its noise: h, h_eta = (1 + eta) h and
    (sigma_next / sigma) e^{-eta h} x + (1 - e^{-h_eta}) D, to which the multistep corrections are added."""
    h = sigma.log() - sigma_next.log()
    h_eta = (1 + eta) * h
    return h, h_eta, (sigma_next / sigma) * (-eta * h).exp() * x - h_eta.neg().expm1() * denoised


@torch.no_grad()
@stochastic
def sample_dpmpp_2m_sde(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> Tensor:
    """DPM-Solver++(2M) SDE, the midpoint variant (Lu et al. 2022; k-diffusion's ``sample_dpmpp_2m_sde`` and
    diffusers' ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_type="midpoint")``).

    With r = h_last / h and D1 = (D_i - D_{i-1}) / r, each step adds to the first-order step of the module
    docstring the correction (1 - e^{-(1 + eta) h}) D1 / 2. The first step (no history) is first order, and
    the step to sigma = 0 returns the denoiser's output, as the SDE's exact solution there is x0.
    """
    _check(eta, s_noise)
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h, h_eta, x = _first_order_step(x, denoised, sigma, sigma_next, eta)
            if old_denoised is not None:
                r = h_last / h
                x = x - 0.5 * h_eta.neg().expm1() * (denoised - old_denoised) / r
            x = _add_noise(x, sigma_next, h, eta, s_noise, generator)
            h_last = h
        old_denoised = denoised
        notify(callback, i, x, denoised)
    return x


@torch.no_grad()
@stochastic
def sample_dpmpp_3m_sde(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    lower_order_final: bool = True,
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> Tensor:
    """DPM-Solver++(3M) SDE (Lu et al. 2022, third-order multistep; k-diffusion's ``sample_dpmpp_3m_sde``).

    With h_eta = (1 + eta) h, phi_2 = (e^{-h_eta} - 1) / h_eta + 1 and phi_3 = phi_2 / h_eta - 1/2 (the
    exponential integrator's phi functions, ~ h_eta / 2 and h_eta / 6), and, from the last three outputs,
    r0 = h_{i-1} / h, r1 = h_{i-2} / h, D1_0 = (D_i - D_{i-1}) / r0, D1_1 = (D_{i-1} - D_{i-2}) / r1,
        D1 = D1_0 + (D1_0 - D1_1) r0 / (r0 + r1),    D2 = (D1_0 - D1_1) / (r0 + r1),
    each step adds phi_2 D1 - phi_3 D2 to the first-order step (phi_2 D1_0 on the second step, from two outputs).
    ``lower_order_final`` caps the order at the number of steps left (diffusers' ``lower_order_final``): the step
    into the last positive level is second order and the step to 0 first order. Without it the third-order
    extrapolation over the coarse last steps of a short grid overshoots (measured: BENCHMARKS.md, "Samplers on
    Gaussian data").

    Note: diffusers 0.42's ``sde-dpmsolver++`` third-order update writes the D2 coefficient as
    (1 - e^{-2h} - 2h) / (2h)^2 - 1/2, which tends to -1 rather than 0 as h -> 0; ours is -phi_3, which tends
    to 0 (and equals diffusers' own ODE coefficient at eta = 0). tests/test_reference.py shows both.
    """
    _check(eta, s_noise)
    denoised_1 = denoised_2 = h_1 = h_2 = None
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma)
        h = None
        order = min(3, steps - i) if lower_order_final else 3
        if sigma_next == 0:
            x = denoised
        else:
            h, h_eta, x = _first_order_step(x, denoised, sigma, sigma_next, eta)
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None and order == 3:
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (denoised - denoised_1) / r0, (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None and order >= 2:
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            x = _add_noise(x, sigma_next, h, eta, s_noise, generator)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
        notify(callback, i, x, denoised)
    return x


# Even with the lower-order final steps, the quadratic extrapolation of D in lambda over h_eta = 2h (eta = 1) overshoots
# on coarse grids: the spread on Gaussian data is above Euler-ancestral's up to NFE 22 on Karras levels 0.002..80
# (BENCHMARKS.md, "Samplers on Gaussian data"); sound from 23 steps.
sample_dpmpp_3m_sde.least_steps = 23
