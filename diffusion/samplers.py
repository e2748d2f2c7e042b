"""Samplers as plain functions over a denoiser D(x, sigma) -> x0 estimate and descending noise levels.

``sigmas`` holds the levels to visit, ending with 0; ``x`` starts as noise at sigmas[0]. All work in the
variance-exploding form x = x0 + sigma * eps (see ``schedules``); the DDPM and DDIM updates are
written in their variance-preserving form and converted with x_vp = sqrt(alpha_bar) * x. Each
calls ``callback(i, x, denoised)`` after step i, for progress bars and denoising animations.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from diffusion.denoiser import DenoiserFn

Callback = Callable[[int, Tensor, Tensor], None] | None


def _noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    # Drawn on the generator's device and moved, so a seed gives the same noise on CPU and GPU.
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _alpha_bar(sigma: Tensor) -> Tensor:
    return 1 / (1 + sigma**2)


def _notify(callback: Callback, i: int, x: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        callback(i, x, denoised)


@torch.no_grad()
def sample_ddpm(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    add_noise: bool = True,
    variance: str = "posterior",
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2), generalised to skipped steps.

    Per step t -> s: alpha_t = alpha_bar_t / alpha_bar_s, beta_t = 1 - alpha_t,
        x_s = (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_t) + sigma_t * z,
    with sigma_t^2 the posterior variance beta_t (1 - alpha_bar_s) / (1 - alpha_bar_t) or, with
    ``variance="beta"``, beta_t itself (the course's code). z = 0 on the last step.
    ``add_noise=False`` also sets z = 0 on every other step: the collapse to "blobs" the course shows.
    """
    if variance not in ("posterior", "beta"):
        raise ValueError(f"variance must be 'posterior' or 'beta', got {variance!r}")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma)
        eps = (x - denoised) / sigma
        ab, ab_next = _alpha_bar(sigma), _alpha_bar(sigma_next)
        alpha = ab / ab_next
        beta = 1 - alpha
        mean = (x * ab.sqrt() - beta / (1 - ab).sqrt() * eps) / alpha.sqrt()
        x_vp = mean
        if add_noise and sigma_next > 0:
            var = beta * (1 - ab_next) / (1 - ab) if variance == "posterior" else beta
            x_vp = mean + var.sqrt() * _noise_like(x, generator)
        x = x_vp / ab_next.sqrt()
        _notify(callback, i, x, denoised)
    return x


@torch.no_grad()
def sample_ddim(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12): x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s - s_eta^2) eps + s_eta z, with
    s_eta = eta * sqrt((1 - ab_s) / (1 - ab_t)) * sqrt(1 - ab_t / ab_s). eta = 0 is deterministic (and
    equals the Euler step in sigma space); eta = 1 is DDPM with the posterior variance."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma)
        eps = (x - denoised) / sigma
        ab, ab_next = _alpha_bar(sigma), _alpha_bar(sigma_next)
        s_eta = eta * ((1 - ab_next) / (1 - ab) * (1 - ab / ab_next)).sqrt()
        x_vp = ab_next.sqrt() * denoised + (1 - ab_next - s_eta**2).clamp(min=0).sqrt() * eps
        if eta > 0 and sigma_next > 0:
            x_vp = x_vp + s_eta * _noise_like(x, generator)
        x = x_vp / ab_next.sqrt()
        _notify(callback, i, x, denoised)
    return x


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
    return x + _noise_like(x, generator) * s_noise * (sigma_hat**2 - sigma**2).sqrt(), sigma_hat


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
        d = (x - denoised) / sigma
        x = x + d * (sigmas[i + 1] - sigma)
        _notify(callback, i, x, denoised)
    return x


def get_ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Split a step into a deterministic move down to sigma_down and fresh noise of size sigma_up, with
    sigma_down^2 + sigma_up^2 = sigma_to^2 (as in k-diffusion)."""
    if not eta:
        return sigma_to, sigma_to.new_zeros(())
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2).sqrt())
    return (sigma_to**2 - sigma_up**2).sqrt(), sigma_up


@torch.no_grad()
def sample_euler_ancestral(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> Tensor:
    """Euler steps down to sigma_down, then noise of size sigma_up added back (ancestral sampling)."""
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + _noise_like(x, generator) * sigma_up
        _notify(callback, i, x, denoised)
    return x


@torch.no_grad()
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
        d = (x - denoised) / sigma
        x_next = x + d * (sigma_next - sigma)
        if sigma_next > 0:
            d_next = (x_next - denoiser(x_next, sigma_next)) / sigma_next
            x_next = x + (d + d_next) / 2 * (sigma_next - sigma)
        x = x_next
        _notify(callback, i, x, denoised)
    return x


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
        derivatives.insert(0, (x - denoised) / sigmas[i])
        del derivatives[order:]
        current = min(i + 1, order)
        coeffs = [lms_coefficient(sigmas_np, i, j, current) for j in range(current)]
        x = x + sum(c * d for c, d in zip(coeffs, derivatives))
        _notify(callback, i, x, denoised)
    return x


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
        _notify(callback, i, x, denoised)
    return x


SAMPLERS = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "lms": sample_lms,
    "dpmpp_2m": sample_dpmpp_2m,
}


def model_evaluations(name: str, steps: int) -> int:
    """Number of denoiser evaluations (NFE) a sampler spends for ``steps`` noise levels."""
    return 2 * steps - 1 if name == "heun" else steps


def steps_for_nfe(name: str, nfe: int) -> int:
    """The inverse of ``model_evaluations``: noise levels giving at most ``nfe`` evaluations (Heun: 2 * steps - 1)."""
    return max((nfe + 1) // 2, 1) if name == "heun" else nfe
