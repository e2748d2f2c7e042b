"""Building the pieces from a (Hydra) config, shared by train.py, sample.py and the tools; rebuilding them from a
checkpoint's stored config is ``checkpoints.module_from_checkpoint``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffusion.core.errors import ConfigError
from diffusion.core.sampling import Sampler
from diffusion.training.module import DiffusionModule

NETWORK_ARGUMENTS = "a network's constructor takes num_classes and image_size, which the data decides (docs/architecture.md)"

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def build_sampler(cfg: DictConfig | dict, steps: int | None = None) -> Sampler:
    sampler = instantiate(cfg)
    return sampler if steps is None else sampler.with_steps(steps)


def sampler_names() -> list[str]:
    """The samplers that ``sampler=NAME`` offers: the files of conf/sampler/, each naming its function (``fn:``)
    with its settings. Every ``sample_<name>`` of ``core.samplers.all_samplers()`` has its file (tests/test_extension.py:
    the functions are what the exact-denoiser harness runs, the files what a user names); a file may also name a
    user's own function, which needs nothing else."""
    return sorted(path.stem for path in (CONF_DIR / "sampler").glob("*.yaml"))


def sampler_from_conf(name: str, steps: int | None = None, **options: Any) -> Sampler:
    """The sampler ``sampler=NAME`` configures (its function, spacing and options), with ``steps`` and extra
    ``options`` replaced."""
    path = CONF_DIR / "sampler" / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(sampler_names())}")
    cfg = OmegaConf.load(path)
    cfg.options = {**(cfg.get("options") or {}), **options}
    return build_sampler(cfg, steps)


def check_optimizer(cfg: DictConfig | dict) -> None:
    """A zero or negative learning rate is refused here (torch takes lr=0 silently and raises on lr<0 only once
    training has started)."""
    lr = cfg.get("lr")
    if lr is not None and not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"optimizer.lr={lr} must be a positive number, e.g. optimizer.lr=1e-3")


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


def build_network(cfg: DictConfig, num_classes: int, image_size: int) -> torch.nn.Module:
    """The network of a ``network`` node, built for the data's class count and image size; a constructor that
    refuses them (the contract of docs/architecture.md) is one line naming the rule instead of Hydra's traceback."""
    try:
        return instantiate(cfg, num_classes=num_classes, image_size=image_size)
    except InstantiationException as err:
        cause = err.__cause__ or err
        if isinstance(cause, ConfigError):
            raise cause from None
        detail = (str(cause).splitlines() or [type(cause).__name__])[0]
        rule = f"; {NETWORK_ARGUMENTS}" if isinstance(cause, TypeError) else ""
        raise ConfigError(f"network {cfg.get('_target_')} could not be built ({detail}){rule}") from None


def build_module(
    cfg: DictConfig, num_classes: int, image_size: int, class_names: list[str], class_counts: list[int] | None = None,
    data_mean: Any = None,
) -> DiffusionModule:
    """The DiffusionModule a run config describes (its ``module`` node, whose parts interpolate the ``network``,
    ``schedule``, ``objective``, ``optimizer`` and ``sampler`` groups); the data decides the class count and image
    size, and its class counts and mean image (a tensor or nested lists, (3, H, W) in [-1, 1]) travel in the checkpoint."""
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # plain data for the checkpoint
    check_optimizer(config["optimizer"])
    node = OmegaConf.create(config["module"])
    net = build_network(node.net, num_classes, image_size)
    module = instantiate(node, net=net, num_classes=num_classes, image_size=image_size, class_names=list(class_names))
    module.config = config
    module.class_counts = list(class_counts) if class_counts is not None else None
    module.data_mean = None if data_mean is None else torch.as_tensor(data_mean, dtype=torch.float32)
    return module
