"""Building the pieces from a (Hydra) config, shared by train.py, sample.py and the tools."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffusion.module import DiffusionModule
from diffusion.sampling import Sampler


def build_sampler(cfg: DictConfig | dict, steps: int | None = None) -> Sampler:
    sampler = instantiate(cfg)
    if steps is not None:
        sampler = Sampler(sampler.name, steps, sampler.spacing, sampler.rho, sampler.options)
    return sampler


def build_module(cfg: DictConfig, num_classes: int, image_size: int, class_names: list[str]) -> DiffusionModule:
    """The DiffusionModule a run config describes; the data decides the class count and image size."""
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # plain data for the checkpoint
    training = cfg.training
    return DiffusionModule(
        net=instantiate(cfg.model, num_classes=num_classes, image_size=image_size),
        schedule=instantiate(cfg.schedule),
        objective=instantiate(cfg.objective),
        optimizer=instantiate(cfg.optimizer),
        sampler=build_sampler(cfg.sampler),
        lr_warmup_steps=training.lr_warmup_steps,
        lr_schedule=training.lr_schedule,
        label_dropout=training.label_dropout,
        max_nonfinite_steps=training.get("max_nonfinite_steps", 10),
        class_names=class_names,
        config=config,
    )


def module_from_checkpoint(checkpoint: dict[str, Any]) -> DiffusionModule:
    """Rebuild a trained module from the config stored in its checkpoint (EMA weights when present:
    Lightning's weight-averaging callback stores the average as ``state_dict``)."""
    info = checkpoint["diffusion"]
    cfg = OmegaConf.create(info["config"])
    module = build_module(cfg, len(info["class_names"]), info["image_size"], info["class_names"])
    module.load_state_dict(checkpoint["state_dict"])
    return module
