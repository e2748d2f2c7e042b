"""Solvers of the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 3): Euler,
Heun and linear multistep, with Karras et al.'s optional churn (their stochastic sampler, Algorithm 2)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffusion.core.denoiser import DenoiserFn
from diffusion.core.samplers.common import Callback, evaluations, noise_like, notify, to_d


def churn(
    x: Tensor, sigmas: Tensor, i: int, s_churn: float, s_tmin: float, s_tmax: float, s_noise: float, generator
) -> tuple[Tensor, Tensor]:
    """Karras et al. 2022, Algorithm 2, lines 4-6: raise the noise level from sigma_i to
    sigma_hat = (1 + gamma) sigma_i by adding fresh noise, gamma = min(S_churn / N, sqrt(2) - 1) for
    sigma_i in [S_tmin, S_tmax]. Returns (x_hat, sigma_hat); S_churn = 0 leaves x and sigma_i as they are."""
    sigma = sigmas[i]
    gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_churn > 0 and s_tmin <= sigma <= s_tmax else 0.0
    if gamma == 0:
        return x, sigma
    sigma_hat = sigma * (1 + gamma)
    return x + noise_like(x, generator) * s_noise * (sigma_hat**2 - sigma**2).sqrt(), sigma_hat


@torch.no_grad()
def sample_euler(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> Tensor:
    """Euler's method on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022,
    eq. 3); with ``s_churn > 0`` each step first adds noise as in ``churn`` (their stochastic sampler)."""
    for i in range(len(sigmas) - 1):
        x, sigma = churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, generator)
        denoised = denoiser(x, sigma)
        d = to_d(x, denoised, sigma)
        x = x + d * (sigmas[i + 1] - sigma)
        notify(callback, i, x, denoised)
    return x


@torch.no_grad()
@evaluations(per_step=2, saved=1)
def sample_heun(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Algorithm 1; Algorithm 2 with ``s_churn > 0``, see
    ``churn``); the correction is skipped on the step to sigma = 0, so n steps cost 2n - 1 evaluations."""
    for i in range(len(sigmas) - 1):
        x, sigma = churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, generator)
        sigma_next = sigmas[i + 1]
        denoised = denoiser(x, sigma)
        d = to_d(x, denoised, sigma)
        x_next = x + d * (sigma_next - sigma)
        if sigma_next > 0:
            d_next = to_d(x_next, denoiser(x_next, sigma_next), sigma_next)
            x_next = x + (d + d_next) / 2 * (sigma_next - sigma)
        x = x_next
        notify(callback, i, x, denoised)
    return x


# Heun's trapezoid in sigma is exact where d = (x - D) / sigma is linear over a step; a step that crosses the data's
# scale (sigma ~ s, where d falls from ~x / sigma to 0) is not. With 2 levels (NFE 3) the one Heun step runs from
# sigma_max to sigma_min, where d(sigma_min) ~ 0 even for the exact denoiser, so it removes half of x: x_T / 2.
# Measured on Gaussian data (tests/test_gaussian_samplers.py, BENCHMARKS.md "Samplers on Gaussian data"): Heun's
# error is above Euler's at the same NFE up to NFE 32 on Karras levels 0.002..80; sound from 17 steps (NFE 33).
sample_heun.least_steps = 17


def lms_coefficient(sigmas: np.ndarray, i: int, j: int, order: int) -> float:
    """Integral over [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial of node sigma_{i-j}
    among the nodes sigma_i, ..., sigma_{i-order+1}, computed exactly in float64."""
    nodes = sigmas[i - order + 1 : i + 1][::-1]  # sigma_i, sigma_{i-1}, ...
    others = np.delete(nodes, j)
    # fromroots([]) raises in numpy, so the order-1 (Euler) basis, the constant 1, is built directly.
    roots = np.polynomial.Polynomial.fromroots(others) if len(others) else np.polynomial.Polynomial([1.0])
    basis = roots / np.prod(nodes[j] - others)
    antiderivative = basis.integ()
    return float(antiderivative(sigmas[i + 1]) - antiderivative(sigmas[i]))


@torch.no_grad()
def sample_lms(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    order: int = 4,
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> Tensor:
    """Linear multistep (Adams-Bashforth in sigma) of the given order, as in k-diffusion's sample_lms:
    the derivative is extrapolated by a polynomial through the last ``order`` derivatives."""
    sigmas_np = sigmas.double().cpu().numpy()
    derivatives: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i])
        derivatives.insert(0, to_d(x, denoised, sigmas[i]))
        del derivatives[order:]
        current = min(i + 1, order)
        coeffs = [lms_coefficient(sigmas_np, i, j, current) for j in range(current)]
        x = x + sum(c * d for c, d in zip(coeffs, derivatives))
        notify(callback, i, x, denoised)
    return x
