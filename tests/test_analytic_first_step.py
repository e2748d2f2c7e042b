"""The analytic first step (``Sampler(analytic_first_step=True)``, AMED's "analytical first step"): its closed form
against Gaussian data, its cost in evaluations, where its searched levels live, and the settings it refuses."""

from __future__ import annotations

import pytest
import torch
from conftest import raises_config_error

from diffusion.core.denoiser import analytic_first_step
from diffusion.core.exact import gaussian_denoiser
from diffusion.core.sampling import Sampler, generate
from diffusion.core.schedules import EDMSchedule
from diffusion.evaluation.searched_levels import levels_path
from diffusion.tools.sampler_fid import steps_at_nfe
from diffusion.training.builders import sampler_from_conf


class GaussianModel:
    """A stand-in for a trained ``Denoiser``: the exact denoiser of N(0, s^2 I) data, counting its calls."""

    def __init__(self, s: float):
        self.exact, self.schedule, self.calls = gaussian_denoiser(torch.tensor([s])), EDMSchedule(), []

    def __call__(self, x, sigma, labels=None):
        self.calls.append(float(torch.as_tensor(sigma).flatten()[0]))
        return self.exact(x.double().reshape(1, -1), sigma).reshape(x.shape).float()


def draw(model: GaussianModel, sampler: Sampler) -> torch.Tensor:
    return generate(model, sampler, 8, image_size=4, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_2m_sde", "euler", "ddim"])
def test_the_first_answer_is_the_closed_form_and_the_rest_the_networks(name):
    """On N(0, 0.5^2) data the closed form is the exact denoiser, so the images are those of the sampler without it,
    drawn with one network call fewer (the first level's); on data of another scale they are not."""
    sampler = sampler_from_conf(name, 4).replace(spacing="karras")
    with_network, closed_form = GaussianModel(0.5), GaussianModel(0.5)
    expected = draw(with_network, sampler)
    got = draw(closed_form, sampler.replace(analytic_first_step=True))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert len(closed_form.calls) == len(with_network.calls) - 1 == sampler.replace(analytic_first_step=True).nfe
    assert closed_form.calls == with_network.calls[1:]  # the first level, sigma_max, is the one answered
    wider, wider_afs = GaussianModel(2.0), GaussianModel(2.0)
    assert not torch.allclose(draw(wider, sampler), draw(wider_afs, sampler.replace(analytic_first_step=True)), atol=1e-3)


def test_the_closed_form_is_the_zero_mean_gaussian_denoiser_once():
    calls = []
    fn = analytic_first_step(lambda x, sigma: calls.append(sigma) or x, data_std=0.5)
    x = torch.ones(2, 3, 4, 4)
    sigma = torch.tensor([80.0, 2.0])
    torch.testing.assert_close(fn(x, sigma)[:, 0, 0, 0], 0.25 / (0.25 + sigma**2))
    assert not calls
    fn(x, torch.tensor(1.0))
    fn(x, torch.tensor(0.5))
    assert len(calls) == 2


def test_it_saves_one_evaluation_and_refuses_what_it_cannot_do():
    sampler = sampler_from_conf("dpmpp_2m_sde", 4)
    afs = sampler.replace(analytic_first_step=True)
    assert (sampler.nfe, afs.nfe) == (4, 3) and "analytic_first_step" in repr(afs)
    assert afs.replace(steps=5).analytic_first_step and afs.replace(steps=5).nfe == 4
    assert sampler_from_conf("heun", 17).replace(analytic_first_step=True).nfe == 2 * 17 - 1 - 1
    assert steps_at_nfe("dpmpp_2m_sde", 3, {}, analytic_first_step=True) == 4
    assert steps_at_nfe("dpmpp_2m_sde", 3, {}) == 3
    assert steps_at_nfe("euler", 1, {}, analytic_first_step=True) == 2
    for bad, words in ((dict(steps=1), "steps >= 2"), (dict(analytic_first_step="yes"), "true or false")):
        message = raises_config_error(sampler.replace, **{"analytic_first_step": True, **bad})
        assert words in message and "\n" not in message
    message = raises_config_error(sampler_from_conf("consistency").replace, analytic_first_step=True)
    assert "consistency model" in message and "\n" not in message


def test_its_searched_levels_are_a_file_of_their_own(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    sampler = sampler_from_conf("dpmpp_2m_sde", 3)
    assert levels_path(ckpt, sampler).name == "last.dpmpp_2m_sde.nfe3.levels.json"
    assert levels_path(ckpt, sampler.replace(steps=4, analytic_first_step=True)).name == "last.dpmpp_2m_sde.afs.nfe3.levels.json"
    message = raises_config_error(sampler.replace(steps=4, analytic_first_step=True, spacing="optimized").sigmas, EDMSchedule())
    assert "--first-step analytic" in message
