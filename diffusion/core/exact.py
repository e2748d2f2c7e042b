"""The exact denoiser of a finite data set, and a harness that runs samplers against it.

For x0 drawn uniformly from images y_1..y_N and x = x0 + sigma * eps, the Bayes-optimal (minimum
mean squared error) denoiser is the posterior mean

    D(x, sigma) = E[x0 | x] = sum_i softmax_i(-||x - y_i||^2 / (2 sigma^2)) y_i

(Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models", Appendix B.3,
the "ideal denoiser").
It needs no training, so a sampler run with it solves the true probability-flow ODE / reverse SDE of
the data set: an accurate sampler returns (almost exactly) members of the set, and its error against a
very fine solution of the same ODE measures the integrator alone. ``tests/test_exact_denoiser.py`` and
``diffusion.tools.sampler_accuracy`` share the harness below.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusion.core.samplers import all_samplers, by_name, is_stochastic
from diffusion.core.samplers.common import Callback, model_evaluations
from diffusion.core.schedules import Schedule

# Samplers whose result is a deterministic function of the starting noise (probability-flow ODE solvers).
DETERMINISTIC = tuple(name for name, fn in all_samplers().items() if not is_stochastic(fn))


class ExactDenoiser:
    """x -> E[x0 | x] for x0 uniform over ``data`` (N, C, H, W); see the module docstring.

    The softmax is taken in float64 over logits (x . y_i - ||y_i||^2 / 2) / sigma^2, which differ from
    -||x - y_i||^2 / (2 sigma^2) only by a per-sample constant; the result is returned in x's dtype.
    ``sigma`` is a scalar or one level per sample. ``calls`` counts evaluations (the NFE).
    """

    def __init__(self, data: Tensor):
        self.data = data.detach().double().flatten(1)  # (N, D)
        self.half_sq_norm = self.data.pow(2).sum(1) / 2
        self.calls = 0

    def __call__(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        self.calls += 1
        flat = x.detach().double().flatten(1).to(self.data.device)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=flat.device).reshape(-1, 1).clamp_min(1e-20)
        logits = (flat @ self.data.T - self.half_sq_norm) / sigma**2
        x0 = torch.softmax(logits, dim=1) @ self.data
        return x0.reshape(x.shape).to(device=x.device, dtype=x.dtype)


def pairwise_rms(a: Tensor, b: Tensor) -> Tensor:
    """RMS-per-pixel distances between the rows of a (M, ...) and b (N, ...), shape (M, N), in float64."""
    a, b = a.double().flatten(1), b.double().flatten(1).to(a.device)
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist") / math.sqrt(a.shape[1])


def nearest_distance(samples: Tensor, data: Tensor) -> Tensor:
    """Per-sample RMS-per-pixel L2 distance to the closest image of ``data``: 0 for an exact member."""
    return pairwise_rms(samples, data).min(dim=1).values


def rms(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample RMS-per-pixel distance between matching rows of a and b."""
    return (a.double() - b.double()).flatten(1).pow(2).mean(1).sqrt()


def make_dataset(n: int = 32, shape: tuple[int, ...] = (3, 8, 8), seed: int = 0, kind: str = "uniform") -> Tensor:
    """A fixed set of n images in [-1, 1], float32. ``uniform``: i.i.d. pixels; ``sprites``: 4x4 blocks of
    colours from a small palette on a background, upsampled, so images share structure like pixel-art sprites."""
    g = torch.Generator().manual_seed(seed)
    if kind == "uniform":
        return torch.rand((n, *shape), generator=g) * 2 - 1
    if kind != "sprites":
        raise ValueError(f"kind must be 'uniform' or 'sprites', got {kind!r}")
    c, h, w = shape
    palette = torch.rand(8, c, generator=g) * 2 - 1
    coarse = torch.randint(0, len(palette), (n, h // 4, w // 4), generator=g)
    mask = torch.rand(n, h // 4, w // 4, generator=g) < 0.5  # background where False
    coarse = torch.where(mask, coarse, torch.zeros_like(coarse))
    images = palette[coarse].permute(0, 3, 1, 2)  # (n, c, h/4, w/4)
    return torch.nn.functional.interpolate(images, size=(h, w), mode="nearest").contiguous()


@dataclass
class Run:
    samples: Tensor
    nfe: int  # denoiser evaluations counted, per batch
    seconds: float


class Harness:
    """Samplers with the exact denoiser of ``data``, on Karras et al.'s rho = 7 levels in [sigma_min, sigma_max]
    (eq. 5) or, given a ``schedule``, on that schedule's own levels (``Schedule.sigmas``).

    Every run with the same ``seed`` starts from the same noise, x = sqrt(sigma_max^2 + 1) * z as in
    ``sampling.generate`` (so DDPM sees the variance-preserving prior); stochastic samplers draw their
    noise from a generator seeded with ``seed + 1``. Runs are in float64 by default, so that integration
    errors can be measured far below float32 rounding.
    """

    def __init__(
        self,
        data: Tensor,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        schedule: Schedule | None = None,
        dtype: torch.dtype = torch.float64,
    ):
        self.data = data
        self.denoiser = ExactDenoiser(data)
        self.schedule, self.rho, self.dtype = schedule, rho, dtype
        self.sigma_min, self.sigma_max = (schedule.sigma_min, schedule.sigma_max) if schedule else (sigma_min, sigma_max)

    def sigmas(self, steps: int, final_zero: bool = True) -> Tensor:
        """The levels of a ``steps``-step run: ``steps`` levels from sigma_max down to sigma_min and then 0, or,
        without the final 0, ``steps + 1`` levels ending at sigma_min. There x is still a smooth function of
        the starting noise (the step to 0 snaps it onto a data point): convergence orders are measured there."""
        levels = steps if final_zero else steps + 1
        if self.schedule is not None:
            sigmas = self.schedule.sigmas(levels).double()
        else:  # Karras et al. 2022, eq. 5, as schedules.get_sigmas_karras but kept in float64
            ramp = torch.linspace(0, 1, levels, dtype=torch.float64)
            lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
            sigmas = torch.cat([(hi + ramp * (lo - hi)) ** self.rho, torch.zeros(1, dtype=torch.float64)])
        return (sigmas if final_zero else sigmas[:-1]).to(self.dtype)

    def noise(self, n: int, seed: int = 0) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn((n, *self.data.shape[1:]), generator=g, dtype=torch.float64)
        return (z * math.sqrt(self.sigma_max**2 + 1)).to(self.dtype)

    def run(
        self,
        sampler: str | Callable[..., Tensor],
        steps: int,
        n: int = 16,
        seed: int = 0,
        final_zero: bool = True,
        callback: Callback = None,
        **options,
    ) -> Run:
        """``steps`` steps of a sampler (a name in ``samplers.all_samplers()`` or a sampler function)."""
        fn = by_name(sampler) if isinstance(sampler, str) else sampler
        sigmas = self.sigmas(steps, final_zero)
        x = self.noise(n, seed)
        generator = torch.Generator().manual_seed(seed + 1)
        self.denoiser.calls = 0
        start = time.perf_counter()
        samples = fn(self.denoiser, x, sigmas, generator=generator, callback=callback, **options)
        return Run(samples, self.denoiser.calls, time.perf_counter() - start)

    def reference(self, n: int = 16, seed: int = 0, steps: int = 2000, final_zero: bool = True) -> Tensor:
        """A very fine Heun solution of the probability-flow ODE from the same noise as ``run``."""
        return self.run("heun", steps, n, seed, final_zero).samples


def fit_order(steps, errors) -> float:
    """The slope p of log(error) against log(steps): error ~ C * steps^-p, p being the observed order."""
    x = torch.tensor([math.log(s) for s in steps], dtype=torch.float64)
    y = torch.tensor([math.log(float(e)) for e in errors], dtype=torch.float64)
    x = x - x.mean()
    return float(-(x * (y - y.mean())).sum() / (x * x).sum())


def expected_nfe(name: str, steps: int, final_zero: bool = True, **options) -> int:
    """Denoiser evaluations of a ``Harness.run``: ``model_evaluations``, plus the evaluations a sampler saves on
    the step to 0 (Heun's correction) when the last step does not end at 0."""
    fn = by_name(name)
    return model_evaluations(fn, steps, options) + (0 if final_zero else getattr(fn, "evaluations_saved", 0))


# ------------------------------------------------------------------------- Gaussian data: a closed form


def gaussian_denoiser(scales: Tensor) -> Callable[[Tensor, Tensor | float], Tensor]:
    """The exact denoiser of Gaussian data x0 ~ N(0, s^2 I), one scale s per row of x (``scales``, shape (S,)):
    D(x, sigma) = E[x0 | x0 + sigma eps = x] = x s^2 / (s^2 + sigma^2), the posterior mean of two Gaussians."""
    s2 = scales.double().reshape(-1, 1) ** 2
    return lambda x, sigma: x * s2 / (s2 + torch.as_tensor(sigma, dtype=torch.float64) ** 2)


def gaussian_consistency(scales: Tensor) -> Callable[[Tensor, Tensor | float], Tensor]:
    """The exact consistency function of the same data, f(x, sigma) = x s / sqrt(s^2 + sigma^2): the probability-flow
    ODE dx/dsigma = (x - D) / sigma = x sigma / (s^2 + sigma^2) integrates to x(sigma) ~ sqrt(s^2 + sigma^2), so
    f carries x at sigma to sigma = 0 in one step (what a consistency sampler's ``denoiser`` is, Song et al. 2023)."""
    s = scales.double().reshape(-1, 1)
    return lambda x, sigma: x * s / (s**2 + torch.as_tensor(sigma, dtype=torch.float64) ** 2).sqrt()


def gaussian_gap(fn: Callable, sigmas: Tensor, scales: Tensor, options: dict | None = None, n: int = 4096, seed: int = 0) -> Tensor:
    """How far sampler ``fn`` over ``sigmas`` (ending with 0) is from Gaussian data of each scale s, relative to s
    (shape (S,)). From x_T ~ N(0, (s^2 + sigma_0^2) I), the marginal at sigma_0, the exact ODE returns x_T s /
    sqrt(s^2 + sigma_0^2) (``gaussian_consistency`` at sigma_0), so a deterministic sampler is run from x_T =
    sqrt(s^2 + sigma_0^2) and its gap is output / s - 1, its relative error against that solution; a stochastic
    one is run from ``n`` draws and its gap is std(output) / s - 1 (Monte Carlo error about 1 / sqrt(2n): 1.1% at
    n = 4096). Samplers marked ``takes_consistency_function`` get ``gaussian_consistency``, the others the denoiser."""
    sigmas = sigmas.double()
    s = scales.double().reshape(-1, 1)
    stochastic = is_stochastic(fn)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(len(scales), n, generator=g, dtype=torch.float64) if stochastic else torch.ones(len(scales), 1, dtype=torch.float64)
    denoiser = (gaussian_consistency if getattr(fn, "takes_consistency_function", False) else gaussian_denoiser)(scales)
    out = fn(denoiser, z * (s**2 + sigmas[0] ** 2).sqrt(), sigmas, generator=torch.Generator().manual_seed(seed + 1), **(options or {}))
    return (out.std(1) if stochastic else out[:, 0]) / s[:, 0] - 1
