"""Building the pieces from a (Hydra) config, shared by train.py, sample.py and the tools."""

from __future__ import annotations

import math
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffusion.errors import ConfigError
from diffusion.module import DiffusionModule
from diffusion.sampling import Sampler


def build_sampler(cfg: DictConfig | dict, steps: int | None = None) -> Sampler:
    sampler = instantiate(cfg)
    if steps is not None:
        sampler = Sampler(sampler.name, steps, sampler.spacing, sampler.rho, sampler.options)
    return sampler


def build_optimizer(cfg: DictConfig):
    """The optimizer partial; a zero or negative learning rate is refused here (torch takes lr=0 silently
    and raises on lr<0 only once training has started)."""
    lr = cfg.get("lr")
    if lr is not None and not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"optimizer.lr={lr} must be a positive number, e.g. optimizer.lr=1e-3")
    return instantiate(cfg)


def apply_speed_options(net: torch.nn.Module, channels_last: bool = False, compile: bool = False) -> None:
    """NHWC memory format and TorchInductor compilation of the network, in place. Neither renames nor changes
    the weights (``Module.compile`` keeps the state-dict keys), so checkpoints load with or without them."""
    for key, value in (("channels_last", channels_last), ("compile", compile)):
        if not isinstance(value, bool):
            raise ConfigError(f"training.{key}={value!r} must be true or false")
    if channels_last:
        net.to(memory_format=torch.channels_last)
    if compile:
        net.compile()


def build_module(cfg: DictConfig, num_classes: int, image_size: int, class_names: list[str]) -> DiffusionModule:
    """The DiffusionModule a run config describes; the data decides the class count and image size."""
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # plain data for the checkpoint
    training = cfg.training
    return DiffusionModule(
        net=instantiate(cfg.model, num_classes=num_classes, image_size=image_size),
        schedule=instantiate(cfg.schedule),
        objective=instantiate(cfg.objective),
        optimizer=build_optimizer(cfg.optimizer),
        sampler=build_sampler(cfg.sampler),
        lr_warmup_steps=training.lr_warmup_steps,
        lr_schedule=training.lr_schedule,
        label_dropout=training.label_dropout,
        max_nonfinite_steps=training.get("max_nonfinite_steps", 10),
        class_names=class_names,
        config=config,
    )


# The only code a checkpoint's stored config may name: classes of these modules. Loading with
# weights_only=True keeps pickles from running code, but Hydra's instantiate would call any `_target_`
# (os.system, builtins.exec, ...) that a tampered config -- .ckpt or .safetensors metadata -- names.
CHECKPOINT_MODULES = ("diffusion.unet", "diffusion.schedules", "diffusion.objectives", "diffusion.sampling", "torch.optim")
BUILT_FROM_CONFIG = ("model", "schedule", "objective", "optimizer", "sampler")


def check_checkpoint_targets(node: Any, where: str) -> None:
    """Refuse a stored config whose ``_target_`` is not a class of ``CHECKPOINT_MODULES``."""
    import importlib

    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None:
            module_name, _, name = str(target).rpartition(".")
            allowed = module_name in CHECKPOINT_MODULES and isinstance(getattr(importlib.import_module(module_name), name, None), type)
            if not allowed:
                raise ConfigError(
                    f"refusing to build {where}._target_={target!r} named by the checkpoint's config: only classes of "
                    f"{', '.join(CHECKPOINT_MODULES)} are built from a checkpoint"
                )
        for key, value in node.items():
            check_checkpoint_targets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_checkpoint_targets(value, f"{where}[{i}]")


def module_from_checkpoint(checkpoint: dict[str, Any]) -> DiffusionModule:
    """Rebuild a trained module from the config stored in its checkpoint (EMA weights when present:
    Lightning's weight-averaging callback stores the average as ``state_dict``)."""
    info = checkpoint["diffusion"]
    for key in BUILT_FROM_CONFIG:
        check_checkpoint_targets(info["config"].get(key), key)
    cfg = OmegaConf.create(info["config"])
    module = build_module(cfg, len(info["class_names"]), info["image_size"], info["class_names"])
    module.load_state_dict(checkpoint["state_dict"])
    return module
