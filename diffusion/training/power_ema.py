"""Post-hoc EMA: power-function averages of the weights, and any other average rebuilt from their snapshots.

Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models" (EDM2), sec. 3 and
appendix C, derived here from the equations (pure torch; the Lightning callback is ``training.ema.PostHocEMA``).

The power-function EMA of the weights theta(1), theta(2), ... (theta(t): the weights after optimizer step t) is

    theta_hat(t) = beta(t) * theta_hat(t - 1) + (1 - beta(t)) * theta(t),    beta(t) = (1 - 1/t)^(gamma + 1).

Unrolled, beta(tau+1) * ... * beta(t) = (tau / t)^(gamma + 1) telescopes and

    theta_hat(t) = sum_{tau <= t} w_tau theta(tau),   w_tau = (tau^(gamma+1) - (tau-1)^(gamma+1)) / t^(gamma+1),

which is exactly the integral over (tau - 1, tau] of the continuous profile p_t(s) = (gamma + 1) s^gamma / t^(gamma+1)
on [0, t]: the discrete average is the continuous one of the piecewise-constant weight history, w_tau being
proportional to tau^gamma up to O(1/tau). Its width relative to t (the standard deviation of p_t over t) is

    sigma_rel = sqrt(gamma + 1) / ((gamma + 2) * sqrt(gamma + 3)).

Two profiles p_a (gamma_a, up to t_a) and p_b have the inner product

    <p_a, p_b> = int_0^min(t_a, t_b) p_a p_b ds
               = (gamma_a + 1)(gamma_b + 1) min(t_a, t_b)^(gamma_a + gamma_b + 1)
                 / ((gamma_a + gamma_b + 1) t_a^(gamma_a + 1) t_b^(gamma_b + 1)),

so the snapshot combination sum_i x_i p_i closest (in L2) to a target profile p_r solves the normal equations
A x = b, A_ij = <p_i, p_j>, b_i = <p_i, p_r>; the same coefficients combine the stored weights into the
reconstructed average.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from diffusion.core.errors import ConfigError
from diffusion.training.checkpoints import read_safetensors

# sigma_rel(gamma) peaks at gamma = (sqrt(5) - 3) / 2 (the root of gamma^2 + 3 gamma + 1, where d log sigma_rel = 0);
# beyond the peak it falls monotonically to 0 as gamma grows, the branch of averages that favour recent weights.
GAMMA_AT_PEAK = (math.sqrt(5) - 3) / 2


def gamma_to_sigma_rel(gamma: float) -> float:
    """The relative standard deviation of the power-function profile with exponent gamma (EDM2, sec. 3)."""
    if not gamma > -1:
        raise ConfigError(f"gamma={gamma} must be > -1 (the profile t^gamma is not integrable at 0 otherwise)")
    return math.sqrt(gamma + 1) / ((gamma + 2) * math.sqrt(gamma + 3))


SIGMA_REL_MAX = gamma_to_sigma_rel(GAMMA_AT_PEAK)  # 0.3003


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent gamma >= GAMMA_AT_PEAK whose profile has this sigma_rel (bisection to float64 precision)."""
    if not 0 < sigma_rel < SIGMA_REL_MAX:
        raise ConfigError(f"sigma_rel={sigma_rel} must be in (0, {SIGMA_REL_MAX:.4f}), e.g. 0.05 or 0.1")
    lo, hi = GAMMA_AT_PEAK, 1.0
    while gamma_to_sigma_rel(hi) > sigma_rel:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = (lo + hi) / 2
        if gamma_to_sigma_rel(mid) > sigma_rel:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def power_ema_beta(t: int | Tensor, gamma: float) -> float | Tensor:
    """beta(t) = (1 - 1/t)^(gamma + 1): 0 at t = 1, so the first step's weights replace whatever came before.
    ``t`` may be a tensor on the device (the run's EMA: no host round trip); a number is checked."""
    if not isinstance(t, Tensor) and t < 1:
        raise ValueError(f"power EMA steps count from 1, got t={t}")
    return (1 - 1 / t) ** (gamma + 1)


@torch.no_grad()
def power_ema_update(averaged: Tensor, current: Tensor, t: int, gamma: float) -> None:
    """One step of the power-function EMA, in place."""
    averaged.lerp_(current.to(averaged.dtype), 1 - power_ema_beta(t, gamma))


def profile_inner_products(t_a: Tensor, gamma_a: Tensor, t_b: Tensor, gamma_b: Tensor) -> Tensor:
    """The matrix <p_a[i], p_b[j]> of power-function profiles in closed form (float64, in log space: t^gamma
    overflows for gamma in the tens and t in the millions)."""
    t_a, gamma_a = t_a.double().reshape(-1, 1), gamma_a.double().reshape(-1, 1)
    t_b, gamma_b = t_b.double().reshape(1, -1), gamma_b.double().reshape(1, -1)
    g = gamma_a + gamma_b + 1
    log = (torch.log((gamma_a + 1) * (gamma_b + 1) / g) + g * torch.minimum(t_a, t_b).log()
           - (gamma_a + 1) * t_a.log() - (gamma_b + 1) * t_b.log())
    return log.exp()


def solve_coefficients(t: Sequence[float], gamma: Sequence[float], target_t: float, target_gamma: float) -> Tensor:
    """Coefficients x of the snapshots (step t[i], exponent gamma[i]) whose combination of profiles is the least-
    squares fit of the profile (target_gamma, target_t) (EDM2, appendix C.2)."""
    t_, gamma_ = torch.as_tensor(t, dtype=torch.float64), torch.as_tensor(gamma, dtype=torch.float64)
    if len(t_) == 0:
        raise ConfigError("no EMA snapshots to reconstruct from; train with callbacks=[default,posthoc_ema]")
    if not 0 < target_t <= float(t_.max()):
        raise ConfigError(f"cannot reconstruct the average at step {target_t}: the snapshots span steps "
                          f"{int(t_.min())}..{int(t_.max())}; choose a step inside that range")
    gram = profile_inner_products(t_, gamma_, t_, gamma_)
    rhs = profile_inner_products(t_, gamma_, torch.tensor([float(target_t)]), torch.tensor([float(target_gamma)]))
    # The Gram matrix of nearby profiles is close to singular; the SVD solver drops the null directions.
    return torch.linalg.lstsq(gram, rhs, driver="gelsd").solution.flatten()


# ------------------------------------------------------------------------------------------ snapshot files

def snapshot_name(step: int, sigma_rel: float) -> str:
    return f"step_{step:08d}-sigma_rel_{sigma_rel:.4f}.safetensors"


def snapshot_index(ema_dir: str | Path) -> list[dict]:
    """What each snapshot under ``ema_dir`` holds (path, step, gamma, sigma_rel), from its metadata alone."""
    from safetensors import safe_open

    ema_dir = Path(ema_dir)
    if not ema_dir.is_dir():
        raise ConfigError(f"{ema_dir} does not exist; train with callbacks=[default,posthoc_ema] to write EMA snapshots there")
    index = []
    for path in sorted(ema_dir.glob("step_*-sigma_rel_*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("diffusion", "{}")).get("posthoc_ema")
        if info is None:
            raise ConfigError(f"{path} lacks its post-hoc EMA metadata; was it written by diffusion.training.ema.PostHocEMA?")
        index.append({"path": path, **info})
    if not index:
        raise ConfigError(f"no EMA snapshots in {ema_dir}; train with callbacks=[default,posthoc_ema]")
    return index


@torch.no_grad()
def reconstruct(ema_dir: str | Path, sigma_rel: float, step: int | None = None) -> tuple[dict[str, Tensor], dict, Tensor]:
    """The EMA with ``sigma_rel`` at ``step`` (default: the last snapshot's) rebuilt from the snapshots: its state
    dict, the checkpoint info of the last snapshot (config, class names), and the coefficients per snapshot. The
    files are read one at a time."""
    index = snapshot_index(ema_dir)
    step = max(entry["step"] for entry in index) if step is None else step
    coefficients = solve_coefficients([e["step"] for e in index], [e["gamma"] for e in index], step, sigma_rel_to_gamma(sigma_rel))
    total, info = {}, None
    for c, entry in zip(coefficients, index):
        state, info = _load(entry["path"])
        for key, value in state.items():
            if value.is_floating_point():
                total[key] = total.get(key, 0) + float(c) * value.double()
            else:
                total[key] = value
    result = {key: value.to(state[key].dtype) for key, value in total.items()}
    info = {**info, "posthoc_ema": {"step": step, "gamma": sigma_rel_to_gamma(sigma_rel), "sigma_rel": sigma_rel,
                                    "reconstructed_from": len(index)}}
    return result, info, coefficients


def _load(path: Path) -> tuple[dict[str, Tensor], dict]:
    state, metadata = read_safetensors(path, "the snapshot is damaged; delete it and reconstruct from the others")
    return state, json.loads(metadata["diffusion"])
