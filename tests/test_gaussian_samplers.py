"""Every sampler at every NFE from 3 to 50 against the closed form on Gaussian data (issue 18, item 1).

For data N(0, s^2 I) the denoiser is exact and linear, D(x, sigma) = x s^2 / (s^2 + sigma^2), and the
probability-flow ODE carries x_T at sigma_max to x_T s / sqrt(s^2 + sigma_max^2) at sigma = 0
(``core.exact.gaussian_gap`` derives it). A sampler is sound at an NFE when its gap there is no larger than the
first-order baseline's at the same NFE: Euler's error for a deterministic sampler, Euler-ancestral's spread for
a stochastic one; or it refuses that NFE with a ConfigError naming its lowest sound NFE. Samplers are found by
scanning ``core/samplers/`` (a new one is covered without editing this file), with the options and spacing of the
``conf/sampler/`` file that names it; NFE becomes steps as ``sampler_fid`` does (the most steps within the NFE).
"""

from __future__ import annotations

import pytest
import torch

from diffusion.core.errors import ConfigError
from diffusion.core.exact import gaussian_gap
from diffusion.core.samplers import all_samplers, is_stochastic
from diffusion.core.samplers.common import model_evaluations, steps_for_nfe
from diffusion.core.sampling import Sampler
from diffusion.core.schedules import EDMSchedule, LinearSchedule
from diffusion.tools.gaussian_samplers import conf_for

SCALES = torch.tensor([0.1, 0.5, 1.0])  # a small data scale, the sprites' (0.5) and unit variance
NFES = range(3, 51)
# Karras levels over the two sigma ranges in conf/schedule: EDM's 0.002..80 (also cosine's and sigmoid's) and the
# default linear schedule's 0.01..12.3; DDIM and DDPM walk the linear schedule's own levels (spacing: schedule).
SCHEDULES = {"edm": EDMSchedule(), "linear": LinearSchedule(T=500)}
# Relative tolerance on the baseline's gap. Deterministic: at the NFE where a higher-order sampler's error crosses
# Euler's the two are equal, and a 5% margin keeps the verdict off that crossing. Stochastic: the spreads are
# Monte Carlo estimates from 4096 draws, whose relative error is about 1.1%, so 5% is about four of those.
# The absolute 1e-3 would matter only where the baseline's gap is itself near 0; it is not here (Euler's is 0.03 or
# more at NFE 50: the last step to 0 returns D(x, sigma_min), a floor every sampler shares).
RTOL, ATOL = 0.05, 1e-3
# Known and not fixed: Restart's K = 2 restarts of N = 4 Heun steps over [0.1, 2] carry Heun's overshoot across
# sigma ~ s (see ode.sample_heun.least_steps) into its spread: above Euler-ancestral's at NFE 49-50 on EDM levels
# (BENCHMARKS.md). Strict: the test fails once it passes.
KNOWN_UNSOUND = {("restart", "edm"): "Restart's inner Heun steps widen the spread on Gaussian data (BENCHMARKS.md)"}


def gaps(name: str, schedule: str, spacing: str | None = None) -> dict[int, torch.Tensor | str]:
    """Per NFE: the gap for each scale, or the refusal's message; NFE budgets below one step are left out."""
    fn, cfg = all_samplers()[name], conf_for(name)
    options = cfg.get("options") or {}
    spacing = spacing or cfg.get("spacing", "karras")
    out: dict[int, torch.Tensor | str] = {}
    for nfe in NFES:
        steps = steps_for_nfe(fn, nfe, options)
        if model_evaluations(fn, steps, options) > nfe:
            continue
        try:
            sampler = Sampler(fn=f"{fn.__module__}.{fn.__name__}", steps=steps, spacing=spacing, options=options,
                              rho=cfg.get("rho", 7.0), sigma_min=cfg.get("sigma_min"))
        except ConfigError as refusal:
            out[nfe] = str(refusal)
            continue
        out[nfe] = gaussian_gap(fn, sampler.sigmas(SCHEDULES[schedule]), SCALES, options)
    return out


@pytest.fixture(scope="module")
def baselines():
    """Euler's and Euler-ancestral's gaps on each grid, computed once (a cache filled as the tests ask)."""
    return {}


def unsound(name: str, schedule: str, baselines) -> list[str]:
    fn = all_samplers()[name]
    key = ("euler_ancestral" if is_stochastic(fn) else "euler", schedule, conf_for(name).get("spacing", "karras"))
    if key not in baselines:
        baselines[key] = gaps(*key)
    baseline = baselines[key]
    found = []
    for nfe, gap in gaps(name, schedule).items():
        if isinstance(gap, str):
            assert "lowest sound NFE" in gap and "\n" not in gap, gap
            continue
        limit = baseline[nfe].abs() * (1 + RTOL) + ATOL
        if (gap.abs() > limit).any():
            found.append(f"NFE {nfe}: " + ", ".join(f"s={s:g} {g:+.3f} (limit {b:.3f})" for s, g, b in zip(SCALES.tolist(), gap.tolist(), limit.tolist())))
    return found


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("name", list(all_samplers()))
def test_sampler_is_sound_or_refuses_at_every_nfe(name, schedule, baselines, request):
    if (name, schedule) in KNOWN_UNSOUND:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_UNSOUND[name, schedule], strict=True))
    found = unsound(name, schedule, baselines)
    assert not found, f"{name} on {schedule} levels is further from the closed form than its baseline:\n" + "\n".join(found)


def test_gap_matches_the_closed_form_and_catches_too_much_noise():
    """Euler at 1 step is x_T s^2 / (s^2 + sigma_max^2) (one step to 0 returns D): a gap of s / sqrt(s^2 + 80^2) - 1
    exactly. Euler-ancestral on a fine grid has the data's spread; with twice the noise added back it has not."""
    sigmas = torch.tensor([80.0, 0.0], dtype=torch.float64)
    s = SCALES.double()
    torch.testing.assert_close(gaussian_gap(all_samplers()["euler"], sigmas, SCALES), s / (s**2 + 6400).sqrt() - 1)
    fine = EDMSchedule().karras_sigmas(200)
    assert gaussian_gap(all_samplers()["euler_ancestral"], fine, SCALES).abs().max() < 0.05
    assert gaussian_gap(all_samplers()["euler_ancestral"], fine, SCALES, {"s_noise": 2.0}).min() > 0.3


@pytest.mark.parametrize(("name", "steps", "lowest"), [("heun", 2, 33), ("dpmpp_3m_sde", 10, 23), ("restart", 2, 49)])
def test_an_unsound_step_count_is_refused_in_one_line_naming_the_lowest_sound_nfe(name, steps, lowest):
    with pytest.raises(ConfigError, match=f"lowest sound NFE {lowest}: set sampler.steps>="):
        Sampler(name, steps=steps)
    Sampler(name, steps=all_samplers()[name].least_steps)  # from there on it is accepted
