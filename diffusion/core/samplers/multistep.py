"""Multistep solvers in log-sigma time lambda = -log(sigma), reusing earlier denoiser outputs for higher order."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion.core.denoiser import DenoiserFn
from diffusion.core.samplers.common import Callback, notify


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
