"""What every sampler shares: the callback type, noise drawing, and the cost in denoiser evaluations.

A sampler is a plain function ``sample_x(denoiser, x, sigmas, *, <options>, generator=None, callback=None)``
over a denoiser D(x, sigma) -> x0 estimate and descending noise levels ``sigmas`` ending with 0, ``x``
starting as noise at sigmas[0]. All work in the variance-exploding form x = x0 + sigma * eps (see
``core.schedules``). Each calls ``callback(i, x, denoised)`` after step i. A new sampler is one function in
this package (or anywhere importable) plus one file in ``conf/sampler/`` naming it: nothing else to edit.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

Callback = Callable[[int, Tensor, Tensor], None] | None


def noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    # Drawn on the generator's device and moved, so a seed gives the same noise on CPU and GPU.
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def alpha_bar(sigma: Tensor | float) -> float:
    """The variance-preserving alpha_bar of a noise level, x_vp = sqrt(alpha_bar) * x, as a Python (float64) number:
    the ancestral steps form beta = 1 - alpha_bar_t / alpha_bar_s, which float32 would get wrong by ~1e-3 (relative)
    at the low-noise end, where beta ~ 1e-4."""
    sigma = float(sigma)
    return 1 / (1 + sigma * sigma)


def to_d(x: Tensor, denoised: Tensor, sigma: Tensor | float) -> Tensor:
    """The probability-flow ODE's derivative dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 4 with
    s(t) = 1, sigma(t) = t; k-diffusion's ``to_d``); in the ancestral samplers it is also the noise estimate eps."""
    return (x - denoised) / sigma


def notify(callback: Callback, i: int, x: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        callback(i, x, denoised)


def evaluations(
    per_step: int = 1, saved: int = 0, extra: Callable[..., int] | None = None
) -> Callable[[Callable], Callable]:
    """Declare a sampler's cost: ``per_step`` denoiser evaluations a noise level, ``saved`` fewer in all (Heun
    skips its correction on the step to 0: 2n - 1), and ``extra(**options)`` more, for a cost that depends on
    the sampler's keyword options (Restart's K restarts of N Heun steps: 2KN). Samplers without it cost one
    evaluation a level."""

    def mark(fn: Callable) -> Callable:
        fn.evaluations_per_step, fn.evaluations_saved, fn.evaluations_extra = per_step, saved, extra
        return fn

    return mark


def extra_evaluations(fn: Callable, options: Mapping[str, Any] | None = None) -> int:
    """The option-dependent part of a sampler's cost, with its keyword defaults filled in from its signature."""
    extra = getattr(fn, "evaluations_extra", None)
    if extra is None:
        return 0
    defaults = {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is p.KEYWORD_ONLY and p.default is not p.empty
    }
    return int(extra(**{**defaults, **(options or {})}))


def model_evaluations(fn: Callable, steps: int, options: Mapping[str, Any] | None = None) -> int:
    """Number of denoiser evaluations (NFE) sampler ``fn`` spends for ``steps`` noise levels and ``options``."""
    fixed = getattr(fn, "evaluations_per_step", 1) * steps - getattr(fn, "evaluations_saved", 0)
    return fixed + extra_evaluations(fn, options)


def steps_for_nfe(fn: Callable, nfe: int, options: Mapping[str, Any] | None = None) -> int:
    """The inverse of ``model_evaluations``: noise levels giving at most ``nfe`` evaluations (at least one)."""
    per_step, saved = getattr(fn, "evaluations_per_step", 1), getattr(fn, "evaluations_saved", 0)
    return max((nfe + saved - extra_evaluations(fn, options)) // per_step, 1)


def stochastic(fn: Callable) -> Callable:
    """Mark a sampler that draws fresh noise at its default options (ancestral and SDE samplers): its result is not
    a function of the starting noise alone."""
    fn.stochastic = True
    return fn
