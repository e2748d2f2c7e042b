"""A checkpoint written at 44e540d (the layout before issue 20 gave each idea one home) still loads and gives the
same samples and losses: the fixture in tests/data/ was written by ``make_44e540d_fixture.py`` at that commit.

Its stored config names today's old homes (``diffusion.core.consistency.ConsistencyTuning``, ``training.method:
null`` for the denoising loss, the ``model``/``module``/``metrics`` groups); every rename since must keep
``checkpoints.module_from_checkpoint``, ``sample.py`` and ``init_from`` reading it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from conftest import TINY_MODEL, compose_config
from safetensors.torch import load_file

from diffusion.core.sampling import Sampler
from diffusion.training.builders import build_module
from diffusion.training.checkpoints import initialize_from, load_checkpoint, module_from_checkpoint, stored_config

DATA = Path(__file__).parent / "data"
CHECKPOINT = DATA / "checkpoint_44e540d.safetensors"
EXPECTED = load_file(str(DATA / "expected_44e540d.safetensors"))


def same_as_at_44e540d(module, name: str) -> None:
    sampler = Sampler("euler", steps=3, spacing="karras")
    samples = module.sample(2, labels=torch.tensor([0, 2]), sampler=sampler, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(samples, EXPECTED[f"{name}_samples"], rtol=0, atol=1e-6)
    x0 = EXPECTED["x0"] * module.schedule.input_scale
    loss = module.loss(x0, torch.tensor([0, 1]), torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss.detach(), EXPECTED[f"{name}_loss"], rtol=1e-6, atol=1e-6)


def test_a_denoising_checkpoint_of_44e540d_samples_and_scores_the_same():
    module = module_from_checkpoint(load_checkpoint(CHECKPOINT))
    assert module.class_names == ["a", "b", "c"] and module.class_counts == [5, 3, 2]
    same_as_at_44e540d(module, "denoising")


def test_a_consistency_tuning_checkpoint_of_44e540d_loads_with_its_method():
    info = json.loads((DATA / "ect_info_44e540d.json").read_text())
    assert info["config"]["training"]["method"]["_target_"] == "diffusion.core.consistency.ConsistencyTuning"
    module = module_from_checkpoint({"diffusion": info, "state_dict": load_checkpoint(CHECKPOINT)["state_dict"]})
    same_as_at_44e540d(module, "ect")


def test_sample_py_reads_a_checkpoint_of_44e540d(tmp_path):
    from diffusion.tools.sample import sample_to_folder

    sample_to_folder(compose_config("sample", [f"ckpt={CHECKPOINT}", "n=3", "sampler=euler", "steps=2", f"out={tmp_path}"]))
    with np.load(tmp_path / "samples.npz") as f:
        assert f["images"].shape == (3, 16, 16, 3) and f["labels"].tolist() == [0, 1, 2]


def test_init_from_a_checkpoint_of_44e540d():
    cfg = compose_config("train", [*TINY_MODEL, "paths.output_dir=."])
    module = build_module(cfg, 3, 16, ["a", "b", "c"])
    initialize_from(module, CHECKPOINT)
    for key, value in load_checkpoint(CHECKPOINT)["state_dict"].items():
        assert torch.equal(module.state_dict()[key], value), key


def test_a_stored_config_of_44e540d_reads_in_todays_group_names():
    """The groups renamed since (model -> network, metrics -> fid_features) read under their new names, as
    sampler_fid and posthoc_ema --fid read the feature network's settings."""
    config = stored_config(load_checkpoint(CHECKPOINT)["diffusion"])
    assert "model" not in config and "metrics" not in config
    assert config.network._target_ == "diffusion.nets.unet.UNet" and config.fid_features.features == "sprite"


def test_every_class_a_stored_config_of_44e540d_names_imports_after_the_renames():
    """A module renamed since (``training.loggers`` -> ``training.csv_logger``...) is rewritten by ``MOVED``."""
    import importlib

    from omegaconf import OmegaConf

    def targets(node):
        if isinstance(node, dict):
            yield from ([node["_target_"]] if isinstance(node.get("_target_"), str) else [])
            for value in node.values():
                yield from targets(value)
        elif isinstance(node, list):
            for value in node:
                yield from targets(value)

    config = OmegaConf.to_container(stored_config(load_checkpoint(CHECKPOINT)["diffusion"]))
    found = sorted(set(targets(config)))
    assert "diffusion.training.csv_logger.ResumableCSVLogger" in found
    for target in found:
        module, _, name = target.rpartition(".")
        assert hasattr(importlib.import_module(module), name), target
