"""The noise-level-free denoiser and its level predictor (fast.ai lesson 22; diffusion/core/level_prediction.py):
the network really gets no level, the predictor's target, the clamp around the batch median, a tiny run of
experiment=level_free sampled with the predicted level, its checkpoint restoring the predictor, and bad options."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, compose_config, describe, raises_config_error, run_script, write_sprites
from torch import nn

from diffusion.core.denoiser import Denoiser
from diffusion.core.level_prediction import LevelPredictorLoss, PredictedLevel, clamp_to_median, level_target
from diffusion.core.objectives import EpsPrediction
from diffusion.core.schedules import LinearSchedule
from diffusion.training.builders import build_module


class Recorder(nn.Module):
    """A network that remembers what it was called with and returns its input."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, c_noise, labels=None):
        self.calls.append((x.clone(), c_noise.clone()))
        return x


def test_a_network_not_told_the_level_gets_c_noise_0_while_the_preconditioning_still_uses_sigma():
    x = torch.randn(2, 3, 4, 4)
    for conditioning in (True, False):
        net = Recorder()
        denoiser = Denoiser(net, EpsPrediction(), LinearSchedule(), noise_conditioning=conditioning)
        d_low, d_high = denoiser(x, torch.tensor(0.1)), denoiser(x, torch.tensor(10.0))
        (x_low, c_low), (x_high, c_high) = net.calls
        if conditioning:  # the control: the same network is told the level by default
            assert not torch.equal(c_low, c_high)
        else:
            assert torch.equal(c_low, torch.zeros(2)) and torch.equal(c_high, torch.zeros(2))
        # c_in = 1 / sqrt(1 + sigma^2) and D = x - sigma F still follow sigma
        torch.testing.assert_close(x_low, x / (1 + 0.1**2) ** 0.5)
        torch.testing.assert_close(x_high, x / (1 + 10.0**2) ** 0.5)
        torch.testing.assert_close(d_high, x - 10.0 * x_high)
        assert not torch.allclose(d_low, d_high)


class Constant(nn.Module):
    """A predictor saying ``values`` (one per image), and remembering its input."""

    def __init__(self, values):
        super().__init__()
        self.values, self.seen = torch.as_tensor(values, dtype=torch.float32), []

    def forward(self, x):
        self.seen.append(x.clone())
        return self.values[: x.shape[0]]


def test_the_predictor_learns_logit_alpha_bar_of_the_variance_preserving_image():
    sigma = torch.tensor([0.01, 0.5, 1.0, 3.0, 80.0])
    alpha_bar = 1 / (1 + sigma**2)
    reference = torch.logit(1 / (1 + sigma.double() ** 2))  # in float64: alpha_bar of sigma = 0.01 rounds in float32
    torch.testing.assert_close(level_target(sigma), reference.float())
    assert level_target(torch.tensor(1.0)).item() == 0.0  # alpha_bar = 1/2

    predictor = Constant(torch.full((5,), 0.25))
    x0, noise = torch.rand(5, 3, 4, 4) * 2 - 1, torch.randn(5, 3, 4, 4)
    loss = LevelPredictorLoss(predictor).level_loss(x0, sigma, noise)
    # the lesson's noisify: sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps
    expected_input = alpha_bar.sqrt().view(-1, 1, 1, 1) * x0 + (1 - alpha_bar).sqrt().view(-1, 1, 1, 1) * noise
    torch.testing.assert_close(predictor.seen[0], expected_input)
    torch.testing.assert_close(loss, (0.25 + 2 * sigma.log()) ** 2)


def test_each_predicted_level_is_clamped_to_the_batch_median_plus_or_minus_the_spread():
    levels = torch.tensor([-7.0, 0.0, 0.5, 1.0, 5.0])  # median 0.5
    torch.testing.assert_close(clamp_to_median(levels, 1.0), torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5]))

    class Seen(nn.Module):
        def forward(self, x, sigma, labels=None):
            self.sigma = sigma
            return x

    seen = Seen()
    seen.schedule = LinearSchedule()
    wrapped = PredictedLevel(seen, Constant(levels), spread=1.0)
    wrapped(torch.zeros(5, 3, 4, 4), torch.tensor(2.0))  # the sampler's level: only the predictor's input scale
    torch.testing.assert_close(seen.sigma, torch.exp(-torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5]) / 2))


def test_bad_level_options_are_one_line(tmp_path, capsys):
    from diffusion.tools import level_error, sampler_fid
    from diffusion.tools.cli import check_settings

    conditioned = build_module(compose_config("train", [*TINY_MODEL, "paths.output_dir=."]), 5, 16, list("abcde"))
    message = raises_config_error(conditioned.sampling_denoiser, "predicted")
    assert "experiment=level_free" in message and "\n" not in message
    assert "choose one of scheduled, predicted" in raises_config_error(conditioned.sampling_denoiser, "sideways")
    level_free = build_module(compose_config("train", [*TINY_MODEL, "paths.output_dir=.", "experiment=level_free"]), 5, 16, list("abcde"))
    assert "level_spread=0" in raises_config_error(level_free.sampling_denoiser, "predicted", 0)
    assert "width=6" in raises_config_error(build_module, compose_config(
        "train", [*TINY_MODEL, "paths.output_dir=.", "experiment=level_free", "training.method.predictor.width=6"]), 5, 16, list("abcde"))
    assert "level='sideways' must be one of scheduled, predicted" in raises_config_error(check_settings, compose_config("sample", ["ckpt=x", "level=sideways"]), "sample")
    assert "training.method.weight=0" in raises_config_error(
        check_settings, compose_config("train", ["experiment=level_free", "training.method.weight=0"]), "train")

    ckpt = tmp_path / "conditioned.ckpt"
    torch.save({"state_dict": conditioned.state_dict(), "diffusion": conditioned.checkpoint_info()}, ckpt)
    for main, args in ((level_error.main, [str(ckpt)]), (sampler_fid.main, [str(ckpt), "--level", "predicted"])):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and "experiment=level_free" in error and error.count("\n") == 1


def test_the_predictor_gradients_are_clipped_apart_from_the_denoisers(monkeypatch):
    module = build_module(compose_config("train", [*TINY_MODEL, "paths.output_dir=.", "experiment=level_free"]), 5, 16, list("abcde"))
    for p in module.denoiser.parameters():
        p.grad = torch.full_like(p, 1e-4)
    for p in module.level_predictor.parameters():
        p.grad = torch.full_like(p, 100.0)
    denoiser_norm = torch.cat([p.grad.flatten() for p in module.denoiser.parameters()]).norm()
    assert denoiser_norm < 1
    module.configure_gradient_clipping(None, 1.0, "norm")  # trainer.gradient_clip_val=1.0, the default
    torch.testing.assert_close(torch.cat([p.grad.flatten() for p in module.denoiser.parameters()]).norm(), denoiser_norm)
    torch.testing.assert_close(torch.cat([p.grad.flatten() for p in module.level_predictor.parameters()]).norm(), torch.tensor(1.0), rtol=1e-3, atol=0)
    # gradient_clip_val=0 is Lightning's "no clipping": handed to Lightning, not a clip of every gradient to norm 0
    import lightning as L

    handed = []
    monkeypatch.setattr(L.LightningModule, "configure_gradient_clipping", lambda self, *args: handed.append(args))
    module.configure_gradient_clipping(None, 0.0, "norm")
    assert handed == [(None, 0.0, "norm")]
    assert torch.cat([p.grad.flatten() for p in module.level_predictor.parameters()]).norm() > 0.5


@pytest.fixture(scope="module")
def level_free_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("level-free")
    write_sprites(root / "data")
    proc = run_script("train.py", "experiment=level_free", "data=sprites", f"data.dir={root / 'data'}", f"hydra.run.dir={root / 'run'}")
    assert proc.returncode == 0, describe(proc)
    return root


def test_a_tiny_level_free_run_restores_its_predictor_and_samples_with_the_predicted_level(level_free_run, capsys):
    from diffusion.tools import level_error
    from diffusion.tools.sample import sample_to_folder
    from diffusion.training.checkpoints import load_checkpoint, module_from_checkpoint

    ckpt = level_free_run / "run" / "checkpoints" / "last.ckpt"
    checkpoint = load_checkpoint(ckpt)
    module = module_from_checkpoint(checkpoint)
    assert not module.denoiser.noise_conditioning and module.default_level() == "predicted"
    stored = {k.removeprefix("method.predictor."): v for k, v in checkpoint["state_dict"].items() if k.startswith("method.predictor.")}
    assert stored and stored.keys() == module.level_predictor.state_dict().keys()
    for key, value in module.level_predictor.state_dict().items():
        torch.testing.assert_close(value, stored[key])

    sampler = module.sampler.replace(steps=3)
    scheduled, predicted = (module.sample(4, labels=torch.arange(4), sampler=sampler, generator=torch.Generator().manual_seed(0), level=level)
                            for level in ("scheduled", "predicted"))
    assert not torch.equal(scheduled, predicted)  # the predicted level is what the samplers' denoiser is given

    out = level_free_run / "samples"
    sample_to_folder(compose_config("sample", [f"ckpt={ckpt}", "n=4", "steps=3", "sampler=euler", f"out={out}", "level=predicted"]))
    assert "level=predicted" in capsys.readouterr().out
    with np.load(out / "samples.npz") as f:
        assert f["images"].shape == (4, 16, 16, 3)

    table = level_free_run / "level_error.json"
    level_error.main([str(ckpt), "--n", "40", "--bins", "4", "--json", str(table)])
    result = json.loads(table.read_text())
    assert sum(row["n"] for row in result["bins"]) == 40 and len(result["bins"]) == 4
    assert result["rmse_log_sigma"] > 0 and result["baseline_rmse_log_sigma"] > 0
