"""Multistep solvers reusing earlier denoiser outputs for higher order: DPM-Solver++(2M) in log-sigma time
lambda = -log(sigma), iPNDM in sigma."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion.core.denoiser import DenoiserFn
from diffusion.core.errors import ConfigError
from diffusion.core.samplers.common import Callback, notify, to_d
from diffusion.core.samplers.sde import sample_dpmpp_2m_sde


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None, callback: Callback = None
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in log-sigma time lambda = -log(sigma).

    Its step, x_next = (sigma_next / sigma) x - (e^{-h} - 1) ((1 + 1/(2r)) D_i - D_{i-1} / (2r)) with r = h_last / h,
    is term by term the midpoint DPM-Solver++(2M) SDE step at eta = 0, so it is ``sde.sample_dpmpp_2m_sde`` with
    eta = 0 (no noise is drawn): one loop for both keeps them equal, where k-diffusion writes two."""
    return sample_dpmpp_2m_sde(denoiser, x, sigmas, eta=0.0, s_noise=1.0, generator=generator, callback=callback)


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
