"""The loss the LightningModule trains on and logs, recomputed by hand (Ho et al. 2020, Algorithm 1, in the
preconditioned form), without a Trainer run: a stand-in trainer gives what the steps ask of it. Also ``generate``:
the starting noise, the labels, bf16 and the output scaling."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from diffusion.core.errors import ConfigError, TrainingDiverged
from diffusion.core.objectives import VPrediction
from diffusion.core.samplers.common import model_evaluations, steps_for_nfe
from diffusion.core.samplers.ode import sample_euler, sample_heun
from diffusion.core.sampling import Sampler, generate
from diffusion.core.schedules import CosineSchedule
from diffusion.training.module import DiffusionModule


class Net(torch.nn.Module):
    """F = weight * x_in + label, with the labels it was given recorded."""

    def __init__(self, weight: float = 0.3, num_classes: int = 3):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(weight))
        self.num_classes, self.image_size, self.labels = num_classes, 4, None

    def forward(self, x, c_noise, labels=None):
        self.labels = labels
        return self.weight * x + (0 if labels is None else labels.float().reshape(-1, 1, 1, 1))


def module(b: float = 0.5, label_dropout: float = 0.0, max_nonfinite_steps: int = 10, weight: float = 0.3):
    m = DiffusionModule(Net(weight), CosineSchedule(input_scale=b), VPrediction(), optimizer=torch.optim.Adam,
                        sampler=Sampler("ddim", steps=3), num_classes=3, image_size=4, label_dropout=label_dropout,
                        max_nonfinite_steps=max_nonfinite_steps)
    m.logged, m.log_options = {}, {}

    def log(name, value, **options):
        m.logged[name], m.log_options[name] = float(value.detach()), options

    def reduce_boolean_decision(decision, all):
        assert all is True  # every rank must agree that the loss is finite
        return decision

    m.log = log
    m._trainer = SimpleNamespace(global_step=7, strategy=SimpleNamespace(reduce_boolean_decision=reduce_boolean_decision))
    return m


def expected_loss(x0, labels, sigma, noise, b=0.5, weight=0.3):
    """|F(c_in x, t) - v_target|^2 per sample, mean over the batch: x = b x0 + sigma eps, c_in = 1 / sqrt(b^2 + sigma^2)
    (input scaling), v target = (b x0 - c_skip x) / c_out with c_skip = 1 / (1 + sigma^2), c_out = -sigma / sqrt(1 + sigma^2)."""
    s = sigma.reshape(-1, 1, 1, 1).double()
    x0, noise = b * x0.double(), noise.double()
    x = x0 + s * noise
    f = weight * x / (b**2 + s**2).sqrt() + labels.double().reshape(-1, 1, 1, 1)
    target = (x0 - x / (1 + s**2)) / (-s / (1 + s**2).sqrt())
    return float((f - target).pow(2).mean())


def batch(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 4, 4, generator=g) * 2 - 1, torch.arange(n) % 3


def test_training_step_is_the_preconditioned_loss_on_scaled_data():
    m = module()
    x0, labels = batch()
    torch.manual_seed(1)
    loss = m.training_step((x0, labels), 0)
    torch.manual_seed(1)  # the same draws: sigma for the batch, then the noise
    sigma = m.schedule.sample_sigma(6)
    noise = torch.randn_like(x0)
    assert float(loss.detach()) == pytest.approx(expected_loss(x0, labels, sigma, noise), rel=1e-5)
    assert m.logged["train/loss"] == pytest.approx(float(loss.detach()))
    assert m.log_options["train/loss"] == {"prog_bar": True}
    assert m.denoiser.net.labels.tolist() == labels.tolist()
    loss.backward()  # a graph to the weights
    assert m.denoiser.net.weight.grad is not None


def test_validation_step_uses_fixed_draws_per_batch_and_keeps_labels():
    m = module(label_dropout=1.0)
    x0, labels = batch()
    m.validation_step((x0, labels), 3)
    first = m.logged["val/loss"]
    m.validation_step((x0, labels), 3)
    assert m.logged["val/loss"] == first  # the same batch index draws the same levels and noise
    g = torch.Generator().manual_seed(3)
    sigma = m.schedule.sample_sigma(6, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    assert first == pytest.approx(expected_loss(x0, labels, sigma, noise), rel=1e-5)
    assert m.denoiser.net.labels.tolist() == labels.tolist()  # no label dropout in validation
    assert m.log_options["val/loss"] == {"prog_bar": True, "sync_dist": True, "batch_size": 6}
    m.validation_step((x0, labels), 4)
    assert m.logged["val/loss"] != first


def test_nonfinite_losses_are_skipped_then_stop_training():
    m = module(max_nonfinite_steps=2)
    x0, labels = batch()
    bad = (torch.full_like(x0, math.nan), labels)
    assert m.training_step(bad, 0) is None and m.training_step(bad, 1) is None
    assert m.training_step((x0, labels), 2) is not None  # a finite step resets the count
    assert m.training_step(bad, 3) is None and m.training_step(bad, 4) is None
    with pytest.raises(TrainingDiverged, match="3 steps in a row at step 7; lower optimizer.lr, keep gradient clipping on, "
                                                "or train with trainer.precision=32-true$"):
        m.training_step(bad, 5)


def test_training_drops_labels_and_an_unconditional_net_gets_none():
    m = module(label_dropout=1.0)
    m.training_step(batch(), 0)
    assert m.denoiser.net.labels.tolist() == [3] * 6  # all replaced by the null class
    m.num_classes = 0  # the module knows the class count it was built for, not the network
    assert m._labels(torch.arange(6) % 3, drop=True) is None


def test_unlabelled_images_train_and_validate_as_the_null_class():
    m = module()  # 3 classes: the null class is index 3, the one label dropout and guidance use
    labels = torch.tensor([-1, 2, -1, 1, 0, 2])
    m.training_step((batch()[0], labels), 0)
    assert m.denoiser.net.labels.tolist() == [3, 2, 3, 1, 0, 2]
    m.validation_step((batch()[0], labels), 0)
    assert m.denoiser.net.labels.tolist() == [3, 2, 3, 1, 0, 2]


# --------------------------------------------------------------------------------- generate


def test_generate_starts_from_the_vp_prior_and_unscales_the_result():
    """x starts as N(0, (sigma_0^2 + 1) I) from the generator (the VP prior N(0, I) in sigma form), the sampler gets
    the schedule's levels and the guided denoiser, and the result is divided by input_scale and clamped to [-1, 1]."""
    m = module(b=0.5)
    seen = {}

    def sampler_fn(denoiser, x, sigmas, *, generator=None, callback=None, flag=None):
        seen.update(x=x.clone(), sigmas=sigmas, flag=flag, autocast=torch.is_autocast_enabled("cpu"))
        denoiser(x, sigmas[0])
        return torch.linspace(-1, 1, x.numel()).reshape(x.shape)

    sampler = Sampler("ddim", steps=4, options={"flag": 7})
    sampler.function = sampler_fn
    out = generate(m.denoiser, sampler, 2, image_size=4, labels=torch.tensor([1, 2]), guidance=2.0, null_label=3,
                   generator=torch.Generator().manual_seed(5))
    sigmas = m.schedule.sigmas(4)
    assert torch.equal(seen["sigmas"], sigmas) and seen["flag"] == 7 and not seen["autocast"]
    start = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5)) * math.sqrt(float(sigmas[0]) ** 2 + 1)
    torch.testing.assert_close(seen["x"], start)
    assert m.denoiser.net.labels.tolist() == [1, 2, 3, 3]  # guided: the conditional half, then the null class
    torch.testing.assert_close(out, (torch.linspace(-1, 1, 96).reshape(2, 3, 4, 4) / 0.5).clamp(-1, 1))
    generate(m.denoiser, sampler, 1, image_size=4, bf16=True)
    assert seen["autocast"]
    generate(m.denoiser, sampler, 2, image_size=4, labels=torch.tensor([1, 2]), null_label=3)
    assert m.denoiser.net.labels.tolist() == [1, 2]  # guidance defaults to 0: no unconditional half


def test_generate_refuses_bad_counts_and_negative_guidance():
    m = module()
    with pytest.raises(ConfigError, match="n=0"):
        generate(m.denoiser, m.sampler, 0, image_size=4)
    with pytest.raises(ConfigError, match="guidance=-1"):
        generate(m.denoiser, m.sampler, 1, image_size=4, guidance=-1.0)


def test_steps_for_nfe_inverts_model_evaluations():
    for fn in (sample_euler, sample_heun):
        for nfe in range(1, 30):
            steps = steps_for_nfe(fn, nfe)
            assert model_evaluations(fn, steps) <= nfe or steps == 1
            assert model_evaluations(fn, steps + 1) > nfe
    assert [steps_for_nfe(sample_heun, n) for n in (1, 2, 3, 4, 5, 19)] == [1, 1, 2, 2, 3, 10]
    assert model_evaluations(sample_heun, 10) == 19 and model_evaluations(sample_euler, 10) == 10
