"""A sampler choice as a config object (which function, how many noise levels, which spacing) and ``generate``."""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from diffusion.core import samplers
from diffusion.core.denoiser import CLIP_MODES, Denoiser, analytic_first_step, clip_denoised, conditioned
from diffusion.core.errors import ConfigError
from diffusion.core.level_search import check_levels
from diffusion.core.samplers.common import Callback, model_evaluations
from diffusion.core.schedules import Schedule, get_sigmas_karras

SPACINGS = ("karras", "schedule", "optimized")
DATA_STD = 0.5  # the images' scale in [-1, 1] (EDM's sigma_data), the analytic first step's Gaussian


def resolve_function(path: str) -> Callable:
    """The sampler function a config names: by its import path (``diffusion.core.samplers.ode.sample_heun``,
    ``mypkg.samplers.sample_x``) or, for the framework's own, by its short name (``heun``)."""
    module_name, _, attr = str(path).rpartition(".")
    try:
        fn = getattr(importlib.import_module(module_name), attr, None) if module_name else samplers.by_name(attr)
    except ImportError:
        fn = None
    if not callable(fn):
        raise ConfigError(
            f"unknown sampler {path!r}; choose one of {', '.join(samplers.all_samplers())} (sampler=heun) "
            "or name your own function as sampler.fn=mypkg.module.sample_x"
        )
    return fn


class Sampler:
    """``sampler=`` in the configs: a sampler function plus its noise levels.

    Args:
        fn: import path of the function, e.g. ``diffusion.core.samplers.ode.sample_heun`` (see
            ``core.samplers.common`` for the signature); each file of ``conf/sampler/`` names one.
        steps: number of noise levels visited (the final 0 not counted).
        spacing: "karras" for the rho-spacing of Karras et al. 2022 (eq. 5) between the schedule's
            sigma_min and sigma_max, "schedule" for the schedule's own levels (DDPM's t = T..1), "optimized" for
            ``levels`` searched for one model at this NFE (``core.level_search``; the tools read them from the file
            beside the checkpoint, ``evaluation.searched_levels``).
        rho: the exponent of the Karras spacing.
        sigma_min: the lowest level of the Karras spacing; by default the schedule's. A few-step consistency
            sampler (``conf/sampler/consistency.yaml``) ends its spacing at a level well above 0.
        options: keyword options of the sampler function (eta, add_noise, variance, order, s_churn, ...).
        name: a label for tables and file names; by default the function's name without ``sample_``.
        clip_denoised: None, "static" or "dynamic": keep the x0 estimate in the data range before each step
            (``denoiser.clip_denoised``; for eps- and v-prediction models).
        clip_percentile: the quantile of |x0| that dynamic thresholding scales by (Saharia et al. 2022: 0.995).
        levels: the noise levels of ``spacing="optimized"`` (descending, ``steps`` of them, the final 0 not given).
        analytic_first_step: answer the first evaluation in closed form instead of by the network (AMED's analytical
            first step, ``denoiser.analytic_first_step``): one evaluation fewer for the same levels, NFE = steps - 1
            for a one-evaluation-a-level sampler. For 3-5 NFE, where the first evaluation is a large share.
    """

    def __init__(
        self,
        fn: str,
        steps: int = 500,
        spacing: str = "schedule",
        rho: float = 7.0,
        options: Mapping[str, Any] | None = None,
        name: str | None = None,
        sigma_min: float | None = None,
        clip_denoised: str | None = None,
        clip_percentile: float = 0.995,
        levels: list[float] | None = None,
        analytic_first_step: bool = False,
    ):
        self.function = resolve_function(fn)
        if clip_denoised is not None and clip_denoised not in CLIP_MODES:
            raise ConfigError(f"unknown sampler.clip_denoised={clip_denoised!r}; choose one of {', '.join(CLIP_MODES)} or null")
        if not 0 < clip_percentile <= 1:
            raise ConfigError(f"sampler.clip_percentile={clip_percentile} must be in (0, 1], e.g. 0.995")
        self.clip_denoised, self.clip_percentile = clip_denoised, float(clip_percentile)
        if spacing not in SPACINGS:
            raise ConfigError(f"unknown sampler spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
        if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
            raise ConfigError(f"steps={steps} must be an integer >= 1")
        self.fn, self.steps, self.spacing, self.rho = str(fn), steps, spacing, float(rho)
        self.options = dict(options or {})
        self.name = name or self.function.__name__.removeprefix("sample_")
        if not isinstance(analytic_first_step, bool):
            raise ConfigError(f"sampler.analytic_first_step={analytic_first_step!r} must be true or false")
        if analytic_first_step and not self.takes_analytic_first_step:
            raise ConfigError(f"sampler {self.name} evaluates a consistency model, whose first answer is no denoiser's: "
                              "set sampler.analytic_first_step=false")
        if analytic_first_step and steps < 2:
            raise ConfigError(f"sampler.analytic_first_step=true needs steps >= 2 (got {steps}): its first level is "
                              "answered without the network, so one level would sample nothing")
        self.analytic_first_step = analytic_first_step
        least = getattr(self.function, "least_steps", 1)
        if steps < least:
            raise ConfigError(
                f"sampler {self.name} with steps={steps} (NFE {self.nfe}) is below its lowest sound NFE "
                f"{model_evaluations(self.function, least, self.options)}: set sampler.steps>={least} (BENCHMARKS.md, "
                "\"Samplers on Gaussian data\") or choose dpmpp_2m_sde"
            )
        if sigma_min is not None and not (isinstance(sigma_min, (int, float)) and sigma_min > 0):
            raise ConfigError(f"sampler.sigma_min={sigma_min} must be a positive number (or null: the schedule's)")
        self.sigma_min = None if sigma_min is None else float(sigma_min)
        if levels is not None and spacing != "optimized":
            raise ConfigError(f"sampler.levels are walked with spacing=optimized only (got spacing={spacing}); "
                              "set sampler.spacing=optimized or drop sampler.levels")
        self.levels = None if levels is None else check_levels(levels)

    def with_steps(self, steps: int) -> Sampler:
        return self.replace(steps=steps)

    def replace(self, **changes: Any) -> Sampler:
        """A copy with some constructor arguments changed (``steps``, ``spacing``, ...)."""
        args = dict(fn=self.fn, steps=self.steps, spacing=self.spacing, rho=self.rho, options=self.options, name=self.name,
                    sigma_min=self.sigma_min, clip_denoised=self.clip_denoised, clip_percentile=self.clip_percentile,
                    levels=self.levels, analytic_first_step=self.analytic_first_step)
        if (changes.get("spacing", "optimized") != "optimized" or changes.get("steps", self.steps) != self.steps
                or changes.get("analytic_first_step", self.analytic_first_step) != self.analytic_first_step):
            args["levels"] = None  # searched levels belong to one spacing, NFE and first step
        return Sampler(**{**args, **changes})

    @property
    def takes_analytic_first_step(self) -> bool:
        """A consistency sampler's first answer is a consistency function's, which the closed form is not."""
        return not getattr(self.function, "takes_consistency_function", False)

    @property
    def nfe(self) -> int:
        return model_evaluations(self.function, self.steps, self.options) - self.analytic_first_step

    def sigmas(self, schedule: Schedule) -> Tensor:
        if self.spacing == "optimized":
            if self.levels is None:
                raise ConfigError(
                    f"sampler.spacing=optimized needs noise levels searched for this model: python -m "
                    f"diffusion.tools.search_steps CKPT --samplers {self.name} --nfe {self.nfe}"
                    f"{' --first-step analytic' if self.analytic_first_step else ''} (or spacing=karras)"
                )
            return torch.tensor([*check_levels(self.levels, self.steps), 0.0])
        if self.spacing == "karras" and self.sigma_min is not None:
            if not self.sigma_min < schedule.sigma_max:
                raise ConfigError(f"sampler.sigma_min={self.sigma_min} must be below the schedule's sigma_max={schedule.sigma_max}")
            return get_sigmas_karras(self.steps, self.sigma_min, schedule.sigma_max, self.rho)
        if self.spacing == "karras":
            return schedule.karras_sigmas(self.steps, self.rho)
        return schedule.sigmas(self.steps)

    def __repr__(self) -> str:
        levels = "" if self.levels is None else ", levels=[" + ", ".join(f"{v:.4g}" for v in self.levels) + "]"
        first = ", analytic_first_step" if self.analytic_first_step else ""
        return f"Sampler({self.name}, steps={self.steps}, spacing={self.spacing}, nfe={self.nfe}{first}{levels})"


@torch.no_grad()
def generate(
    denoiser: Denoiser,
    sampler: Sampler,
    n: int,
    *,
    image_size: int,
    labels: Tensor | None = None,
    guidance: float = 0.0,
    null_label: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    callback: Callback = None,
    bf16: bool = False,
    data_mean: Tensor | None = None,
) -> Tensor:
    """Draw n images in [-1, 1], shape (n, 3, H, W); ``bf16`` runs the network under bf16 autocast (the
    sampler's updates of x stay in float32: autocast changes matrix products and convolutions only);
    ``data_mean``: the training images' mean in [-1, 1], (3, H, W), for the sampler's analytic first step.

    The starting noise has standard deviation sqrt(sigma_max^2 + 1): the exact variance-preserving
    prior N(0, I) mapped to sigma form, so DDPM over all T steps is the course's sampler exactly.
    """
    if n < 1:
        raise ConfigError(f"n={n} must be at least 1")
    if guidance < 0:
        raise ConfigError(f"guidance={guidance} must be >= 0 (0 = plain conditional sampling)")
    schedule = denoiser.schedule
    sigmas = sampler.sigmas(schedule).to(device)
    if sampler.analytic_first_step and not float(sigmas[0]) >= 10 * DATA_STD * schedule.input_scale:
        raise ConfigError(f"sampler.analytic_first_step=true answers the first level in closed form, which holds where it is far "
                          f"above the data's scale; the first level is {float(sigmas[0]):.3g} (< {10 * DATA_STD * schedule.input_scale:g}): "
                          "set sampler.analytic_first_step=false")
    gen_device = generator.device if generator is not None else device
    noise = torch.randn(n, 3, image_size, image_size, generator=generator, device=gen_device).to(device)
    x = noise * math.sqrt(float(sigmas[0]) ** 2 + 1)
    if labels is not None:
        labels = labels.to(device)
    # Only ever switch autocast on: bf16=False leaves a caller's own autocast context in force.
    precision = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with precision:
        fn = conditioned(denoiser, labels, guidance, null_label)
        fn = clip_denoised(fn, sampler.clip_denoised, sampler.clip_percentile, data_range=schedule.input_scale)
        if sampler.analytic_first_step:
            mean = None if data_mean is None else data_mean * schedule.input_scale
            fn = analytic_first_step(fn, data_std=DATA_STD * schedule.input_scale, mean=mean)
        x = sampler.function(fn, x, sigmas, generator=generator, callback=callback, **sampler.options)
    return (x / schedule.input_scale).clamp(-1, 1)
