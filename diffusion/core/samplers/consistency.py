"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1)."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion.core.denoiser import DenoiserFn
from diffusion.core.samplers.common import Callback, noise_like, notify, stochastic


@torch.no_grad()
@stochastic
def sample_consistency(
    denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None, callback: Callback = None
) -> Tensor:
    """Song et al. 2023, Algorithm 1, with ``denoiser`` a consistency function f(x, sigma) (``core.consistency``):

        x0 = f(x, sigma_0);  then for each further level sigma_i:  x = x0 + sigma_i z,  x0 = f(x, sigma_i).

    Their noise sqrt(sigma_i^2 - sigma_min^2) is sigma_i here: ECT's boundary is f(x, 0) = x. One evaluation a
    level, so NFE = steps; the levels after the first are where noise is added back (the paper's CIFAR-10 2-step
    sampler uses 80 then 0.821, ``conf/sampler/consistency.yaml``). A plain diffusion denoiser makes this a
    restart-style sampler that re-noises its x0 estimate at every level.
    """
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i])
        x = denoised + sigmas[i + 1] * noise_like(x, generator) if sigmas[i + 1] > 0 else denoised
        notify(callback, i, x, denoised)
    return x


# The ``denoiser`` it is written for is a consistency function, not D(x, sigma): the Gaussian-data checks
# (``core.exact.gaussian_gap``) hand it the exact consistency function of the data.
sample_consistency.takes_consistency_function = True
