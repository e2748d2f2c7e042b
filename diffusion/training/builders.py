"""Building the pieces from a (Hydra) config, shared by train.py, sample.py and the tools."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffusion.core.errors import ConfigError
from diffusion.core.sampling import Sampler
from diffusion.training.checkpoints import check_compatible, load_checkpoint
from diffusion.training.module import DiffusionModule

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def build_sampler(cfg: DictConfig | dict, steps: int | None = None) -> Sampler:
    sampler = instantiate(cfg)
    return sampler if steps is None else sampler.with_steps(steps)


def sampler_names() -> list[str]:
    """The samplers that ``sampler=NAME`` offers: the files of conf/sampler/."""
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


def build_module(
    cfg: DictConfig, num_classes: int, image_size: int, class_names: list[str], class_counts: list[int] | None = None
) -> DiffusionModule:
    """The DiffusionModule a run config describes (its ``module`` node, whose parts interpolate the ``model``,
    ``schedule``, ``objective``, ``optimizer`` and ``sampler`` groups); the data decides the class count and image
    size, and its class counts travel in the checkpoint."""
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # plain data for the checkpoint
    check_optimizer(config["optimizer"])
    node = OmegaConf.create(config["module"])
    module = instantiate(node, net={"num_classes": num_classes, "image_size": image_size}, class_names=list(class_names))
    module.config = config
    module.class_counts = list(class_counts) if class_counts is not None else None
    return module


# The only code a checkpoint's stored config may name unless the user trusts more: classes and functions of these
# modules. Loading with weights_only=True keeps pickles from running code, but Hydra's instantiate would call any
# `_target_` (os.system, builtins.exec, ...) that a tampered config -- .ckpt or .safetensors metadata -- names.
CHECKPOINT_MODULES = (
    "diffusion.nets.", "diffusion.core.schedules", "diffusion.core.objectives", "diffusion.core.sampling", "diffusion.core.consistency",
    "diffusion.core.samplers.", "diffusion.training.module", "torch.optim",
)
BUILT_FROM_CONFIG = ("module", "model", "schedule", "objective", "optimizer", "sampler")
# Where the classes of older checkpoints moved (the package was split into layers): old prefix -> new prefix.
MOVED = {
    "diffusion.unet.": "diffusion.nets.unet.",
    "diffusion.schedules.": "diffusion.core.schedules.",
    "diffusion.objectives.": "diffusion.core.objectives.",
    "diffusion.sampling.": "diffusion.core.sampling.",
    "diffusion.module.": "diffusion.training.module.",
}


def _allowed(path: str, trusted: tuple[str, ...]) -> bool:
    return any(path == prefix or path.startswith(prefix if prefix.endswith(".") else prefix + ".") for prefix in trusted)


def check_checkpoint_targets(node: Any, where: str, trusted: tuple[str, ...] = ()) -> None:
    """Refuse a stored config naming code (a ``_target_``, a sampler ``fn``) outside ``CHECKPOINT_MODULES`` and the
    modules the user chose to ``trust``."""
    import importlib

    allowed_prefixes = CHECKPOINT_MODULES + tuple(trusted)
    if isinstance(node, dict):
        for key in ("_target_", "fn"):
            target = node.get(key)
            if target is None or (key == "fn" and "." not in str(target)):  # a short sampler name is ours
                continue
            module_name, _, name = str(target).rpartition(".")
            ok = _allowed(module_name, allowed_prefixes)
            if ok and not _allowed(module_name, tuple(trusted)):
                obj = getattr(importlib.import_module(module_name), name, None)
                ok = isinstance(obj, type) or (key == "fn" and callable(obj))
            if not ok:
                raise ConfigError(
                    f"refusing to build {where}.{key}={target!r} named by the checkpoint's config: only classes of "
                    f"the framework are built from a checkpoint; if you trust that code, add trust=[{module_name.split('.')[0]}]"
                )
        for key, value in node.items():
            check_checkpoint_targets(value, f"{where}.{key}", trusted)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_checkpoint_targets(value, f"{where}[{i}]", trusted)


def upgrade_config(node: Any) -> Any:
    """A stored config of an older checkpoint in today's terms: moved ``_target_`` paths, samplers named by
    ``name`` instead of ``fn``, and the ``module`` node that older configs did not have."""
    if isinstance(node, list):
        return [upgrade_config(value) for value in node]
    if not isinstance(node, dict):
        return node
    node = {key: upgrade_config(value) for key, value in node.items()}
    target = node.get("_target_")
    if isinstance(target, str):
        for old, new in MOVED.items():
            if target.startswith(old):
                node["_target_"] = new + target[len(old):]
        if node["_target_"] == "diffusion.core.sampling.Sampler" and "fn" not in node:
            node["fn"] = node.pop("name")  # a short name, resolved by core.samplers.by_name
    return node


def stored_config(info: dict[str, Any]) -> DictConfig:
    config = upgrade_config(info["config"])
    if "module" not in config:
        defaults = OmegaConf.load(CONF_DIR / "module" / "default.yaml")
        return OmegaConf.merge({"module": defaults}, config)
    return OmegaConf.create(config)


def module_from_checkpoint(checkpoint: dict[str, Any], trust: tuple[str, ...] | list[str] = ()) -> DiffusionModule:
    """Rebuild a trained module from the config stored in its checkpoint (EMA weights when present:
    Lightning's weight-averaging callback stores the average as ``state_dict``). ``trust``: module prefixes
    (``mypkg``) whose code the stored config may name besides the framework's own."""
    info = checkpoint["diffusion"]
    cfg = stored_config(info)
    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in BUILT_FROM_CONFIG:
        check_checkpoint_targets(plain.get(key), key, tuple(trust or ()))
    module = build_module(cfg, len(info["class_names"]), info["image_size"], info["class_names"], info.get("class_counts"))
    module.load_state_dict(checkpoint["state_dict"])
    return module


def initialize_from(module: DiffusionModule, path: str | Path) -> None:
    """Load a trained model's weights (the EMA average, the checkpoint's ``state_dict``) into ``module`` before a
    new run, e.g. the diffusion model that consistency tuning starts from. The checkpoint must describe the same
    network, noise conditioning and preconditioning, or its weights would mean something else here."""
    checkpoint = load_checkpoint(path)
    info = checkpoint["diffusion"]
    teacher = OmegaConf.to_container(stored_config(info), resolve=True)
    run = module.config
    for key in ("objective", "schedule"):
        theirs, ours = (teacher.get(key) or {}).get("_target_"), (run.get(key) or {}).get("_target_")
        if key == "objective" and theirs == ours:
            theirs, ours = teacher[key], run[key]  # sigma_data too
        if theirs != ours:
            raise ConfigError(
                f"init_from={path} was trained with {key} {theirs}, this run uses {ours}; set {key}= to the checkpoint's "
                "(experiment=ect fine-tunes a model trained with schedule=edm objective=edm)"
            )
    if info.get("image_size") != module.image_size:
        raise ConfigError(f"init_from={path} was trained on {info.get('image_size')}-pixel images, this run's data are {module.image_size}; use the same data")
    check_compatible(module, checkpoint["state_dict"], path)
    module.load_state_dict(checkpoint["state_dict"])
