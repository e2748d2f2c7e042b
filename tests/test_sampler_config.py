"""The sampler config object: how it finds its function, its defaults, what it refuses (whole messages), how it is
copied, and the clipping and generator it hands to the sampler through ``generate``."""

from __future__ import annotations

import re

import pytest
import torch

from diffusion.core import samplers
from diffusion.core.denoiser import Denoiser, clip_denoised
from diffusion.core.errors import ConfigError
from diffusion.core.objectives import X0Prediction
from diffusion.core.samplers.ode import sample_heun
from diffusion.core.sampling import Sampler, generate
from diffusion.core.schedules import LinearSchedule


def test_function_by_short_name_or_import_path():
    assert Sampler("heun").function is sample_heun
    assert Sampler("diffusion.core.samplers.ode.sample_heun").function is sample_heun
    names = ", ".join(samplers.all_samplers())
    for path in ("nope", "diffusion.core.samplers.ode.sample_nope", "no_such_module.sample_x"):
        message = (f"unknown sampler {path!r}; choose one of {names} (sampler=heun) "
                   "or name your own function as sampler.fn=mypkg.module.sample_x")
        with pytest.raises(ConfigError, match="^" + re.escape(message) + "$"):
            Sampler(path)


def test_defaults_and_name():
    s = Sampler("diffusion.core.samplers.ode.sample_heun")
    assert (s.steps, s.spacing, s.rho, s.options, s.clip_denoised, s.clip_percentile) == (500, "schedule", 7.0, {}, None, 0.995)
    assert s.name == "heun" and Sampler("heun", name="mine").name == "mine"
    assert Sampler("euler", steps=1).steps == 1 and Sampler("heun", clip_percentile=1.0).clip_percentile == 1.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "steps=0 must be an integer >= 1"),
    (dict(steps=True), "steps=True must be an integer >= 1"),
    (dict(spacing="nope"), "unknown sampler spacing 'nope'; choose one of karras, schedule, optimized"),
    (dict(clip_denoised="clip"), "unknown sampler.clip_denoised='clip'; choose one of static, dynamic or null"),
    (dict(clip_percentile=0.0), "sampler.clip_percentile=0.0 must be in (0, 1], e.g. 0.995"),
])
def test_refusals_name_the_setting(kwargs, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message) + "$"):
        Sampler("heun", **kwargs)


def test_replace_copies_every_field():
    s = Sampler("heun", steps=17, spacing="karras", rho=5.0, options={"s_churn": 1.0}, name="x", clip_denoised="static",
                clip_percentile=0.9)
    fields = lambda t: (t.fn, t.spacing, t.rho, t.options, t.name, t.clip_denoised, t.clip_percentile)  # noqa: E731
    for copy in (s.replace(steps=18), s.with_steps(18)):
        assert copy.steps == 18 and fields(copy) == fields(s)
    assert s.replace(spacing="schedule").spacing == "schedule" and s.replace(spacing="schedule").steps == 17


def test_clip_denoised_refusals_and_data_range():
    d = lambda x, sigma: x  # noqa: E731
    with pytest.raises(ConfigError, match="^" + re.escape("unknown clip_denoised='x'; choose one of static, dynamic or null") + "$"):
        clip_denoised(d, "x")
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="^" + re.escape(f"clip_percentile={bad} must be in (0, 1], e.g. 0.995") + "$"):
            clip_denoised(d, "dynamic", bad)
    x0 = torch.tensor([[-6.0, -1.0, 0.5, 2.0, 4.0]]).reshape(1, 1, 1, 5)
    out = clip_denoised(d, "dynamic", percentile=1.0, data_range=2.0)(x0, torch.tensor(1.0))
    torch.testing.assert_close(out, x0 / 3)  # s = max|x0| / 2 = 3, then x0 / 2 / 3 * 2


class Constant(torch.nn.Module):
    image_size = 2

    def forward(self, x, c_noise, labels=None):
        return torch.full_like(x, 3.0)


class Half(Constant):
    def forward(self, x, c_noise, labels=None):
        return 0.1 * x


def test_generate_clips_to_the_scaled_data_range_and_uses_the_generator():
    d = Denoiser(Constant(), X0Prediction(), LinearSchedule(T=10, input_scale=0.5))
    seen = []
    generate(d, Sampler("ddim", steps=3, clip_denoised="static"), 2, image_size=2,
             callback=lambda i, x, den: seen.append(float(den.max())))
    assert seen == [0.5, 0.5, 0.5]  # the data lie in [-b, b]
    d = Denoiser(Half(), X0Prediction(), LinearSchedule(T=10))
    draws = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        draws.append(generate(d, Sampler("ddpm", steps=3), 2, image_size=2, generator=torch.Generator().manual_seed(4)))
    assert torch.equal(*draws)  # the sampler's own noise comes from the generator too
    assert draws[0].abs().max() < 1  # not clamped flat
