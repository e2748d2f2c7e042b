"""Extending the framework by config alone, and checkpoints surviving the package's reorganisation.

- A network defined outside ``diffusion/`` trains and samples when named in config; loading its checkpoint
  needs the user's explicit ``trust=[pkg]``, as a stranger's checkpoint must not name arbitrary code.
- A checkpoint written before the split into layers (``diffusion.unet.UNet``, samplers by ``name``, no
  ``module`` node) still loads, through ``training.checkpoints.MOVED`` and ``upgrade_config``.
- A sampler needs one function and one config file: no table to edit.
"""

from __future__ import annotations

import copy
import textwrap

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, compose_config, describe, raises_config_error, run_script
from omegaconf import OmegaConf

from diffusion.core.samplers import all_samplers
from diffusion.core.sampling import Sampler, resolve_function
from diffusion.training.builders import CONF_DIR, build_module, sampler_from_conf, sampler_names
from diffusion.training.checkpoints import module_from_checkpoint

USER_NET = textwrap.dedent(
    '''
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        """A user's own network: one convolution, conditioned on the noise level and the label by a bias. It keeps
        neither num_classes nor image_size (the contract asks it to take them, not to keep them)."""

        def __init__(self, num_classes: int = 0, image_size: int = 16, width: int = 8):
            super().__init__()
            self.inp = nn.Conv2d(3, width, 3, padding=1)
            self.out = nn.Conv2d(width, 3, 3, padding=1)
            self.label = nn.Embedding(num_classes + 1, width)

        def forward(self, x, c_noise, labels=None):
            h = self.inp(x) + c_noise.float().view(-1, 1, 1, 1)
            if labels is not None:
                h = h + self.label(labels)[:, :, None, None]
            return self.out(torch.relu(h))
    '''
)


# Removes the U-Net's own options from `model` when it names another network.
NOT_A_UNET = ["~network.base_channels", "~network.channel_mult", "~network.attn_resolutions", "~network.norm_groups",
              "~network.num_res_blocks", "~network.dropout"]


def tiny_module(overrides=()):
    cfg = compose_config("train", [*TINY_MODEL, "paths.output_dir=.", *overrides])
    return build_module(cfg, 3, 16, ["a", "b", "c"])


def old_layout(config: dict) -> dict:
    """A stored config as checkpoints wrote it before the layers: old paths, sampler ``name``, no ``module``."""
    config = copy.deepcopy(config)
    config.pop("module")
    del config["training"]["max_nonfinite_steps"], config["training"]["method"]  # settings added since
    config["model"] = config.pop("network")  # the group's name before it was renamed
    config["model"]["_target_"] = "diffusion.unet.UNet"
    config["schedule"]["_target_"] = config["schedule"]["_target_"].replace("diffusion.core.", "diffusion.")
    config["objective"]["_target_"] = config["objective"]["_target_"].replace("diffusion.core.", "diffusion.")
    sampler = config["sampler"]
    sampler["_target_"] = "diffusion.sampling.Sampler"
    sampler["name"] = sampler.pop("fn").rpartition(".")[2].removeprefix("sample_")
    return config


def test_a_checkpoint_of_the_old_layout_loads_and_samples_the_same():
    module = tiny_module()
    checkpoint = {"diffusion": module.checkpoint_info(), "state_dict": module.state_dict()}
    old = {"diffusion": {**checkpoint["diffusion"], "config": old_layout(module.config)}, "state_dict": module.state_dict()}
    assert "diffusion.unet.UNet" in str(old["diffusion"]["config"])

    loaded = module_from_checkpoint(old)
    assert loaded.max_nonfinite_steps == 10 and type(loaded.method).__name__ == "DenoisingLoss"
    assert loaded.sampler.fn == "dpmpp_2m_sde" and loaded.sampler.function is resolve_function(module.sampler.fn)
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    sampler = Sampler("euler", steps=3, spacing="karras")
    kwargs = dict(labels=torch.tensor([0, 1]), sampler=sampler)
    first = module.sample(2, generator=torch.Generator().manual_seed(0), **kwargs)
    again = loaded.sample(2, generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(first, again)


def test_a_checkpoint_naming_code_outside_the_framework_needs_trust(tmp_path, monkeypatch):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "net.py").write_text(USER_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = tiny_module(["network._target_=mypkg.net.TinyNet", *NOT_A_UNET])
    assert type(module.denoiser.net).__name__ == "TinyNet"
    checkpoint = {"diffusion": module.checkpoint_info(), "state_dict": module.state_dict()}

    message = raises_config_error(module_from_checkpoint, checkpoint)
    assert "mypkg.net.TinyNet" in message and "trust=[mypkg]" in message and "\n" not in message
    assert type(module_from_checkpoint(checkpoint, trust=["mypkg"]).denoiser.net).__name__ == "TinyNet"
    # Trusting one package does not open another.
    evil = copy.deepcopy(checkpoint)
    evil["diffusion"]["config"]["schedule"]["_target_"] = "os.system"
    assert "os.system" in raises_config_error(module_from_checkpoint, evil, trust=["mypkg"])


class NoLabels(torch.nn.Module):
    def __init__(self, num_classes: int = 0, image_size: int = 16):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x, c_noise):
        return self.conv(x)


class Shrinks(NoLabels):
    def forward(self, x, c_noise, labels=None):
        return self.conv(x)[..., 1:, 1:]


class ReturnsATuple(NoLabels):
    def forward(self, x, c_noise, labels=None):
        return (self.conv(x),)  # as diffusers' models do with return_dict=False


class NoSizeArguments(torch.nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)


@pytest.mark.parametrize("net, rule", [
    (NoLabels, "net(x, c_noise, labels)"), (Shrinks, "returned shape (2, 3, 15, 15)"),
    (ReturnsATuple, "returned a tuple, not a tensor"), (NoSizeArguments, "constructor takes num_classes and image_size"),
])
def test_a_network_that_breaks_the_contract_is_refused_when_built(net, rule):
    """Before any training step, in one line naming the rule (docs/architecture.md), not at the first checkpoint."""
    message = raises_config_error(tiny_module, [f"network._target_={__name__}.{net.__name__}", *NOT_A_UNET])
    assert rule in message and "docs/architecture.md" in message and "\n" not in message, message


def test_a_sampler_is_one_function_and_one_config_file():
    names = sampler_names()
    assert {"ddpm", "ddim", "euler", "heun", "dpmpp_2m"} <= set(names)
    # The framework's own samplers: conf/sampler/<name>.yaml for every sample_<name> function of core/samplers/.
    # A file naming a user's function (fn: mypkg.samplers.sample_x) is that sampler's whole registration.
    own = {name for name in names if OmegaConf.load(CONF_DIR / "sampler" / f"{name}.yaml").fn.startswith("diffusion.")}
    assert own == set(all_samplers())
    for name in names:  # every file of conf/sampler names a function that exists
        sampler = sampler_from_conf(name, steps=30)  # above every sampler's lowest sound step count (least_steps)
        assert callable(sampler.function) and sampler.steps == 30
    assert Sampler("diffusion.core.samplers.ode.sample_heun", steps=17).nfe == 33  # Heun: 2n - 1
    assert "unknown sampler 'nope'" in raises_config_error(Sampler, "nope")
    assert "sampler.fn=mypkg.module.sample_x" in raises_config_error(Sampler, "no.such.module.sample_x")


def test_module_is_built_from_its_config_node():
    module = tiny_module(["module.label_dropout=0.25", "module.lr_schedule=cosine"])
    assert module.label_dropout == 0.25 and module.lr_schedule == "cosine"
    cfg = compose_config("train", [*TINY_MODEL, "paths.output_dir=."])
    assert OmegaConf.select(cfg, "module._target_") == "diffusion.training.module.DiffusionModule"


@pytest.mark.slow
def test_a_user_network_trains_and_samples_by_config_alone(tmp_path):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "net.py").write_text(USER_NET)
    env = {"PYTHONPATH": str(tmp_path)}
    run_dir = tmp_path / "run"
    proc = run_script(
        "train.py", "model=small", "network._target_=mypkg.net.TinyNet", *NOT_A_UNET, "+network.width=4",
        "callbacks.fid.fraction=0", f"hydra.run.dir={run_dir}", "data.n=256", env=env,
    )
    assert proc.returncode == 0, describe(proc)
    # the old name of the group still works for one release, with one line saying the new one
    assert [line for line in proc.stderr.splitlines() if "model" in line and "network" in line] == [
        "note: the config group model is now network (network=small); model= is still read, for one release"]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert ckpt.exists() and (run_dir / "samples" / "final.png").exists()

    refused = run_script("sample.py", f"ckpt={ckpt}", f"out={tmp_path / 'refused'}", "n=4", env=env)
    assert refused.returncode == 2 and "trust=[mypkg]" in refused.stderr, describe(refused)
    assert not (tmp_path / "refused" / "samples.npz").exists()

    out = tmp_path / "samples"
    proc = run_script("sample.py", f"ckpt={ckpt}", f"out={out}", "n=4", "sampler=euler", "steps=3", "trust=[mypkg]", env=env)
    assert proc.returncode == 0, describe(proc)
    with np.load(out / "samples.npz") as npz:
        assert npz["images"].shape == (4, 16, 16, 3)


def test_old_group_names_on_the_command_line_are_rewritten_with_one_note():
    from diffusion.training.renamed_groups import renamed_overrides

    notes = []
    args = ["model=large", "model.base_channels=48", "+model.width=4", "~model.dropout", "++model.x=1", "modelx=1",
            "data.model=1", "hydra.run.dir=model", "-m"]
    assert renamed_overrides(args, notes.append) == [
        "network=large", "network.base_channels=48", "+network.width=4", "~network.dropout", "++network.x=1", "modelx=1",
        "data.model=1", "hydra.run.dir=model", "-m"]
    assert len(notes) == 1 and "network" in notes[0]
    assert renamed_overrides(["metrics.features=inception", "metrics=default"], notes.append) == [
        "fid_features.features=inception", "fid_features=default"]
    assert len(notes) == 2 and "fid_features" in notes[1]
    cfg = compose_config("train", renamed_overrides(["model=large"], notes.append))
    assert cfg.network.base_channels == compose_config("train", ["network=large"]).network.base_channels


def test_an_old_group_name_hydra_cannot_place_is_named_in_the_error(tmp_path):
    """Where the rewrite of the command line cannot reach (a user's own experiment file, a key that moved), the
    one-line error says what to write; the throughput tool rewrites old names like train.py."""
    from hydra.errors import ConfigCompositionException

    from diffusion.tools.cli import _composition_error
    from diffusion.tools.throughput.measure import compose_config as throughput_config

    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - override /model: large\n")
    cases = {
        (f"hydra.searchpath=[file://{tmp_path}]", "experiment=mine"): "the group model is now network: write network",
        ("callbacks.fid.sampler.steps=5",): "write callbacks.fid.samplers.default.steps",
    }
    for overrides, hint in cases.items():
        with pytest.raises(ConfigCompositionException) as info:
            compose_config("train", overrides)
        message = _composition_error(info.value)
        assert hint in message and "\n" not in message, message
    assert throughput_config("small", 8, ["model.base_channels=24"]).network.base_channels == 24
