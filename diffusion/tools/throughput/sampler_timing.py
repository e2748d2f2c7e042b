"""Sampling throughput: every fast sampler at the planned NFEs and DDPM over its levels, in fp32 and bf16."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig, OmegaConf

from diffusion.core.denoiser import conditioned
from diffusion.core.samplers.ancestral import sample_ddpm
from diffusion.core.samplers.common import steps_for_nfe
from diffusion.core.sampling import generate
from diffusion.tools.throughput.measure import (
    CONF_DIR,
    DDPM_LEVELS,
    IMAGE_SIZE,
    Plan,
    autocast,
    fresh_module,
    seconds_of,
)
from diffusion.training.builders import build_sampler
from diffusion.training.module import DiffusionModule

FAST_SAMPLERS = ("euler", "heun", "dpmpp_2m", "ddim", "lms")


@dataclass
class SamplingJob:
    name: str
    steps: int
    nfe: int
    run: Callable[[], object]
    scale: float = 1.0  # full runs per timed run
    rates: dict[str, list[float]] = field(default_factory=dict)


def sampler_config(name: str) -> DictConfig:
    return OmegaConf.load(CONF_DIR / "sampler" / f"{name}.yaml")


def sampling_jobs(module: DiffusionModule, plan: Plan, device: torch.device) -> list[SamplingJob]:
    denoiser, n = module.denoiser, plan.sample_batch
    ddpm = build_sampler(sampler_config("ddpm"), DDPM_LEVELS)
    sigmas = ddpm.sigmas(module.schedule).to(device)[: plan.ddpm_timed_levels + 1]
    noise = torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, device=device) * math.sqrt(float(sigmas[0]) ** 2 + 1)
    jobs = [
        SamplingJob(
            "ddpm", DDPM_LEVELS, DDPM_LEVELS,
            lambda: sample_ddpm(conditioned(denoiser, None), noise, sigmas, **ddpm.options),
            scale=DDPM_LEVELS / plan.ddpm_timed_levels,
        )
    ]
    for nfe in plan.nfes:
        for name in FAST_SAMPLERS:
            config = sampler_config(name)
            fn = build_sampler(config).function
            # Not below a sampler's lowest sound step count, which Sampler refuses (Heun: 17, core.samplers.ode).
            sampler = build_sampler(config, max(steps_for_nfe(fn, nfe), getattr(fn, "least_steps", 1)))
            run = lambda s=sampler: generate(denoiser, s, n, image_size=IMAGE_SIZE, device=device)  # noqa: E731
            jobs.append(SamplingJob(name, sampler.steps, sampler.nfe, run))
    return jobs


def sampling_precisions(device: torch.device) -> list[str]:
    return ["32", "bf16"] if device.type == "cpu" or torch.cuda.is_bf16_supported() else ["32"]


def compare_sampling(cfg: DictConfig, plan: Plan, device: torch.device) -> list[SamplingJob]:
    """Every sampler in fp32 and under bf16 autocast, taking turns within each repetition."""
    module = fresh_module(cfg, device).eval()
    jobs = sampling_jobs(module, plan, device)
    precisions = sampling_precisions(device)
    with torch.inference_mode():
        for precision in precisions:  # warm-up: the truncated DDPM run
            with autocast(device, precision):
                jobs[0].run()
        for _ in range(plan.sample_reps):
            for job in jobs:
                for precision in precisions:
                    with autocast(device, precision):
                        seconds = seconds_of(job.run, device) * job.scale
                    job.rates.setdefault(precision, []).append(plan.sample_batch / seconds)
    return jobs
