"""Ancestral samplers: each step moves to the posterior mean of q(x_s | x_t, x0 = D(x_t)) and adds fresh noise
(DDIM with eta = 0 adds none and is the deterministic member of the family)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion.core.denoiser import DenoiserFn
from diffusion.core.samplers.common import Callback, alpha_bar, noise_like, notify, stochastic, to_d


@torch.no_grad()
@stochastic
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
        eps = to_d(x, denoised, sigma)
        ab, ab_next = alpha_bar(sigma), alpha_bar(sigma_next)
        alpha = ab / ab_next
        beta = 1 - alpha
        mean = (x * math.sqrt(ab) - beta / math.sqrt(1 - ab) * eps) / math.sqrt(alpha)
        x_vp = mean
        if add_noise and sigma_next > 0:
            var = beta * (1 - ab_next) / (1 - ab) if variance == "posterior" else beta
            x_vp = mean + math.sqrt(var) * noise_like(x, generator)
        x = x_vp / math.sqrt(ab_next)
        notify(callback, i, x, denoised)
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
        eps = to_d(x, denoised, sigma)
        ab, ab_next = alpha_bar(sigma), alpha_bar(sigma_next)
        s_eta = eta * math.sqrt((1 - ab_next) / (1 - ab) * (1 - ab / ab_next))
        x_vp = math.sqrt(ab_next) * denoised + math.sqrt(max(1 - ab_next - s_eta**2, 0.0)) * eps
        if eta > 0 and sigma_next > 0:
            x_vp = x_vp + s_eta * noise_like(x, generator)
        x = x_vp / math.sqrt(ab_next)
        notify(callback, i, x, denoised)
    return x


def get_ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Split a step into a deterministic move down to sigma_down and fresh noise of size sigma_up, with
    sigma_down^2 + sigma_up^2 = sigma_to^2 (as in k-diffusion)."""
    if not eta:
        return sigma_to, sigma_to.new_zeros(())
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2).sqrt())
    return (sigma_to**2 - sigma_up**2).sqrt(), sigma_up


@torch.no_grad()
@stochastic
def sample_euler_ancestral(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> Tensor:
    """Euler steps down to sigma_down, then noise of size s_noise * sigma_up added back (ancestral sampling, as in
    k-diffusion; s_noise slightly above 1 offsets the detail that the denoiser's errors remove, Karras et al.
    2022, sec. 4)."""
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        d = to_d(x, denoised, sigmas[i])
        x = x + d * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise_like(x, generator) * s_noise * sigma_up
        notify(callback, i, x, denoised)
    return x
