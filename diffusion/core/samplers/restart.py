"""Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes").

Deterministic ODE steps have small discretisation error but carry every earlier error along; SDE steps contract
earlier errors but add their own. Restart runs Heun's ODE solver and, on reaching a level t_min, K times adds
fresh noise back up to a level t_max > t_min (x + sqrt(t_max^2 - t_min^2) z, the forward process's own
transition) and solves the ODE down to t_min again in N Heun steps. The noise contracts the error accumulated
so far (the paper's analysis of the Wasserstein error), and the ODE steps within [t_min, t_max] add little.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion.core.denoiser import DenoiserFn
from diffusion.core.errors import ConfigError
from diffusion.core.samplers.common import Callback, evaluations, noise_like, stochastic
from diffusion.core.samplers.ode import sample_heun

RESTART_RHO = 7.0  # the Karras spacing of the N levels within each restart (Xu et al. use EDM's)


def restart_evaluations(*, restart_times: int, restart_steps: int, **_) -> int:
    """Each restart is N Heun steps ending at t_min > 0, each with its correction: 2N evaluations, K times."""
    return 2 * int(restart_times) * int(restart_steps)


def karras_levels(n: int, t_min: Tensor, t_max: float) -> Tensor:
    """n levels from t_max down to t_min (Karras et al. 2022, eq. 5, rho = 7), in t_min's dtype, ending exactly
    on t_min: the grid's own level."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64, device=t_min.device)
    lo, hi = float(t_min) ** (1 / RESTART_RHO), t_max ** (1 / RESTART_RHO)
    levels = ((hi + ramp * (lo - hi)) ** RESTART_RHO).to(t_min.dtype)
    levels[-1] = t_min
    return levels


def restart_index(sigmas: Tensor, restart_min: float) -> int:
    """The index j >= 1 of the positive level nearest t_min, where the restarts happen (the grid's own level,
    as in the paper's code, so that the main steps are those of plain Heun)."""
    positive = [j for j in range(1, len(sigmas)) if sigmas[j] > 0]
    if not positive:
        raise ConfigError("Restart needs at least two positive noise levels: set sampler.steps >= 2")
    return min(positive, key=lambda j: abs(math.log(float(sigmas[j]) / restart_min)))


@torch.no_grad()
@evaluations(per_step=2, saved=1, extra=restart_evaluations)
@stochastic
def sample_restart(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    restart_min: float = 0.1,
    restart_max: float = 2.0,
    restart_times: int = 2,
    restart_steps: int = 4,
    s_noise: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> Tensor:
    """Restart sampling (Xu et al. 2023) with Heun's method (Karras et al. 2022, Algorithm 1).

    Heun steps over ``sigmas``; on reaching the level t_min nearest ``restart_min``, ``restart_times`` (K)
    times: add noise of standard deviation ``s_noise`` * sqrt(t_max^2 - t_min^2) with t_max = ``restart_max``,
    then ``restart_steps`` (N) Heun steps on Karras levels (rho = 7) from t_max back to t_min. Cost:
    2n - 1 + 2KN evaluations for n levels (``restart_evaluations``). ``callback`` sees the main steps only
    (step j - 1, which lands on t_min, before the restarts). K = 0 is plain Heun.
    """
    restart_times, restart_steps = int(restart_times), int(restart_steps)  # --options passes numbers as floats
    if restart_times < 0 or restart_steps < 1:
        raise ConfigError(
            f"sampler.options restart_times={restart_times} must be >= 0 and restart_steps={restart_steps} >= 1"
        )
    if restart_times == 0:
        return sample_heun(denoiser, x, sigmas, callback=callback)
    j = restart_index(sigmas, restart_min)
    t_min = sigmas[j]
    if not restart_max > t_min:
        raise ConfigError(
            f"sampler.options.restart_max={restart_max} must exceed the restart level t_min={float(t_min):.4g} "
            "(the grid's level nearest restart_min); raise restart_max or lower restart_min"
        )
    x = sample_heun(denoiser, x, sigmas[: j + 1], callback=callback)
    levels = karras_levels(restart_steps + 1, t_min, restart_max)
    for _ in range(restart_times):
        x = x + noise_like(x, generator) * s_noise * (restart_max**2 - t_min**2).sqrt()
        x = sample_heun(denoiser, x, levels)
    shifted = None if callback is None else (lambda i, x, denoised: callback(i + j, x, denoised))
    return sample_heun(denoiser, x, sigmas[j:], callback=shifted)


# Its base steps are Heun's (``sample_heun.least_steps``): with fewer, the restarts start from Heun's wrong solution
# (2 base steps at NFE 19: x_T / 2) and cannot repair it.
sample_restart.least_steps = sample_heun.least_steps
