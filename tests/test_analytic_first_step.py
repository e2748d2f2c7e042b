"""The analytic first step (``Sampler(analytic_first_step=True)``, AMED's "analytical first step"): its closed form
against Gaussian data, its cost in evaluations, where its searched levels live, and the settings it refuses."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MODEL, compose_config, raises_config_error, write_sprites
from hydra.utils import instantiate

from diffusion.core.denoiser import analytic_first_step
from diffusion.core.exact import gaussian_denoiser
from diffusion.core.sampling import Sampler, generate
from diffusion.core.schedules import EDMSchedule
from diffusion.evaluation.searched_levels import levels_path
from diffusion.tools.sampler_fid import steps_at_nfe
from diffusion.training.builders import build_module, sampler_from_conf
from diffusion.training.checkpoints import load_checkpoint, module_from_checkpoint

MEAN = torch.linspace(-0.6, 0.9, 3 * 4 * 4).reshape(3, 4, 4)  # sprites are not zero-mean (white backgrounds)


class GaussianModel:
    """A stand-in for a trained ``Denoiser``: the exact denoiser of N(mean, s^2 I) data, counting its calls."""

    def __init__(self, s: float, mean: torch.Tensor = MEAN, schedule=None):
        self.exact, self.mean, self.calls = gaussian_denoiser(torch.tensor([s])), mean, []
        self.schedule = schedule or EDMSchedule()

    def __call__(self, x, sigma, labels=None):
        self.calls.append(float(torch.as_tensor(sigma).flatten()[0]))
        centred = (x - self.mean).double().reshape(1, -1)
        return (self.mean + self.exact(centred, sigma).reshape(x.shape)).float()


def draw(model: GaussianModel, sampler: Sampler, data_mean=None) -> torch.Tensor:
    return generate(model, sampler, 8, image_size=4, generator=torch.Generator().manual_seed(0), data_mean=data_mean)


@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_2m_sde", "euler", "ddim"])
def test_the_first_answer_is_the_closed_form_and_the_rest_the_networks(name):
    """On N(mean, 0.5^2) data the closed form with the data's mean is the exact denoiser, so the images are those of
    the sampler without it, drawn with one network call fewer (the first level's); with a zero mean, or on data of
    another scale, they are not."""
    sampler = sampler_from_conf(name, 4).replace(spacing="karras")
    afs = sampler.replace(analytic_first_step=True)
    with_network, closed_form = GaussianModel(0.5), GaussianModel(0.5)
    expected = draw(with_network, sampler)
    got = draw(closed_form, afs, data_mean=MEAN)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert len(closed_form.calls) == len(with_network.calls) - 1 == afs.nfe
    assert closed_form.calls == with_network.calls[1:]  # the first level, sigma_max, is the one answered
    assert (draw(GaussianModel(0.5), afs) - expected).abs().max() > 0.01  # AMED's zero mean: 1e4 times the gap above
    wider, wider_afs = GaussianModel(2.0), GaussianModel(2.0)
    assert not torch.allclose(draw(wider, sampler), draw(wider_afs, afs, data_mean=MEAN), atol=1e-3)


def test_it_refuses_a_first_level_near_the_datas_scale():
    low = GaussianModel(0.5, schedule=EDMSchedule(sigma_max=3.0))
    message = raises_config_error(draw, low, sampler_from_conf("dpmpp_2m", 4).replace(spacing="karras", analytic_first_step=True))
    assert "first level is 3" in message and "analytic_first_step=false" in message and "\n" not in message


def test_the_closed_form_is_the_gaussian_denoiser_once():
    calls = []
    fn = analytic_first_step(lambda x, sigma: calls.append(sigma) or x, data_std=0.5, mean=torch.full((3, 4, 4), 0.4))
    x = torch.ones(2, 3, 4, 4)
    sigma = torch.tensor([80.0, 2.0])
    torch.testing.assert_close(fn(x, sigma)[:, 0, 0, 0], 0.4 + 0.6 * 0.25 / (0.25 + sigma**2))
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
    # levels searched for one first step are not kept when it flips
    searched = sampler.replace(spacing="optimized", levels=[12.0, 3.0, 0.5, 0.05])
    assert searched.replace(analytic_first_step=True).levels is None and searched.replace(rho=5.0).levels is not None


def test_its_searched_levels_are_a_file_of_their_own(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    sampler = sampler_from_conf("dpmpp_2m_sde", 3)
    assert levels_path(ckpt, sampler).name == "last.dpmpp_2m_sde.nfe3.levels.json"
    assert levels_path(ckpt, sampler.replace(steps=4, analytic_first_step=True)).name == "last.dpmpp_2m_sde.afs.nfe3.levels.json"
    message = raises_config_error(sampler.replace(steps=4, analytic_first_step=True, spacing="optimized").sigmas, EDMSchedule())
    assert "--first-step analytic" in message


def test_the_training_images_mean_travels_in_the_checkpoint(tmp_path):
    """train.py hands the data module's mean image to the model; its checkpoint carries it to sampling."""
    cfg = compose_config("train", [*TINY_MODEL, "paths.output_dir=.", "data=sprites", f"data.dir={write_sprites(tmp_path / 's')}"])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    mean = datamodule.mean_image("train")
    torch.testing.assert_close(mean, datamodule.real_images("train").double().mean(0).float() / 127.5 - 1)
    assert mean.shape == (3, 16, 16)
    module = build_module(cfg, datamodule.num_classes, datamodule.image_size, datamodule.class_names, None, mean)
    torch.save({"state_dict": module.state_dict(), "diffusion": module.checkpoint_info()}, tmp_path / "m.ckpt")
    torch.testing.assert_close(module_from_checkpoint(load_checkpoint(tmp_path / "m.ckpt")).data_mean, mean)


def test_sample_py_takes_an_older_checkpoints_mean_from_its_data(tiny_run, tmp_path):
    """A checkpoint from before the mean travelled in it samples with the analytic first step as a new one does (the
    mean read from its own data), and refuses in one line where that data is gone, instead of a zero mean."""
    import numpy as np
    from omegaconf import OmegaConf

    from diffusion.tools.sample import sample_to_folder

    checkpoint = torch.load(tiny_run.ckpt, map_location="cpu", weights_only=False)
    assert "data_mean" in checkpoint["diffusion"]
    old = {**checkpoint, "diffusion": {k: v for k, v in checkpoint["diffusion"].items() if k != "data_mean"}}
    torch.save(old, tmp_path / "old.ckpt")

    def draw(ckpt, out):
        sample_to_folder(compose_config("sample", [f"ckpt={ckpt}", "n=4", "sampler=dpmpp_2m_sde", "steps=3", "seed=1",
                                                   "sampler.analytic_first_step=true", f"out={tmp_path / out}"]))
        with np.load(tmp_path / out / "samples.npz") as f:
            return f["images"]

    assert np.array_equal(draw(tiny_run.ckpt, "new"), draw(tmp_path / "old.ckpt", "old"))
    config = OmegaConf.create(old["diffusion"]["config"])
    config.data.dir = str(tmp_path / "gone")
    torch.save({**old, "diffusion": {**old["diffusion"], "config": OmegaConf.to_container(config)}}, tmp_path / "moved.ckpt")
    message = raises_config_error(draw, tmp_path / "moved.ckpt", "moved")
    assert "analytic_first_step=false" in message and "\n" not in message
