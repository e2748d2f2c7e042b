"""Multistep solvers reusing earlier denoiser outputs for higher order: DPM-Solver++(2M) in log-sigma time
lambda = -log(sigma), iPNDM in sigma."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion.core.denoiser import DenoiserFn
from diffusion.core.errors import ConfigError
from diffusion.core.samplers.common import Callback, notify, to_d


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None, callback: Callback = None
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in log-sigma time lambda = -log(sigma)."""
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = sigma.log() - sigma_next.log()
            estimate = denoised
            if old_denoised is not None:
                r = h_last / h
                estimate = (1 + 1 / (2 * r)) * denoised - 1 / (2 * r) * old_denoised
            x = (sigma_next / sigma) * x - torch.expm1(-h) * estimate
            h_last = h
        old_denoised = denoised
        notify(callback, i, x, denoised)
    return x


# Adams-Bashforth weights for equal steps, newest derivative first (iPNDM's table, orders 1 to 4).
ADAMS_BASHFORTH = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


@torch.no_grad()
def sample_ipndm(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    order: int = 4,
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> Tensor:
    """iPNDM, the improved pseudo-numerical method of Zhang & Chen 2023 ("Fast Sampling of Diffusion Models with
    Exponential Integrator", DEIS: PNDM without its Runge-Kutta warm start).

    On the probability-flow ODE dx/dsigma = d(x, sigma) = (x - D(x, sigma)) / sigma, each step is
        x_next = x + (sigma_next - sigma) * sum_j b_j d_{i-j}
    with the equal-step Adams-Bashforth weights b of order min(i + 1, ``order``) (``ADAMS_BASHFORTH``): the
    first steps use the lower orders, so it costs one evaluation a step, the warm start included. The weights
    ignore that the steps differ (unlike ``sample_lms``), as in zju-pi/diff-sampler's ``get_ipndm``.

    Two consequences, measured in tests/test_few_step_samplers.py: on equal steps the order is that of the
    Adams-Bashforth rule (up to 4), but on unequal steps such as Karras' the weights are consistent to first
    order in the step ratio only, and the method is second order at any ``order`` >= 2. And, being explicit on
    the stiff x / sigma part of the ODE, order 4 is stable only for |h / sigma| below ~0.3 (AB4's stability
    interval): coarse Karras grids (|h / sigma| ~ 0.5 near sigma_min at 25 steps) want ``order`` <= 2 or more steps.
    """
    if order not in range(1, len(ADAMS_BASHFORTH) + 1):
        raise ConfigError(f"sampler.options.order={order} must be 1 to {len(ADAMS_BASHFORTH)} for iPNDM")
    derivatives: list[Tensor] = []  # newest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma)
        derivatives.insert(0, to_d(x, denoised, sigma))
        del derivatives[order:]
        weights = ADAMS_BASHFORTH[len(derivatives) - 1]
        x = x + (sigma_next - sigma) * sum(b * d for b, d in zip(weights, derivatives))
        notify(callback, i, x, denoised)
    return x
