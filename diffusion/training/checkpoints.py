"""Checkpoints: where a run keeps and resumes them, reading them safely (tensors and plain containers only, never
code: ``weights_only=True``), and restoring a trained model from one (the allow-list of what a stored config may
name, the aliases of older layouts, ``init_from``)."""

from __future__ import annotations

import json
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from diffusion.core.errors import ConfigError
from diffusion.training.builders import CONF_DIR, build_module
from diffusion.training.module import DiffusionModule
from diffusion.training.renamed_groups import renamed_keys


def check_run_dir(run_dir: Path, resuming: bool) -> None:
    """Refuse to train over an earlier run's checkpoints, and fail early on an unwritable directory."""
    ckpt_dir = run_dir / "checkpoints"
    if not resuming and ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
        raise ConfigError(
            f"run directory {run_dir} already holds checkpoints; resume it with ckpt_path=last "
            "or choose a new hydra.run.dir"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create run directory {run_dir} ({err.strerror or err}); choose another hydra.run.dir") from None
    # os.access judges by the real user id and permission bits, which can disagree with what a write meets (the
    # effective user id, some network file systems): creating a file (unnamed where possible: nothing is left) is the test.
    try:
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as err:
        raise ConfigError(f"run directory {run_dir} is not writable ({err.strerror or err}); choose another hydra.run.dir") from None


def hpc_checkpoint(run_dir: Path) -> Path | None:
    """Lightning's SLURM auto-requeue checkpoint (``hpc_ckpt_N.ckpt`` in ``default_root_dir``, the run
    directory, written on the requeue signal): the highest N, as Lightning itself resumes from."""
    found = [(int(m.group(1)), p) for p in run_dir.glob("hpc_ckpt_*.ckpt") if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name))]
    return max(found)[1] if found else None


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> Path | None:
    """``last`` means the run directory's own ``checkpoints/last.ckpt``; ``auto`` the newer of that and
    Lightning's hpc checkpoint, or None (a fresh start) where neither exists: the setting of a job that a
    cluster may requeue into the same directory (conf/hydra/launcher/slurm.yaml)."""
    if ckpt_path is None:
        return None
    last = run_dir / "checkpoints" / "last.ckpt"
    if str(ckpt_path) == "auto":
        found = [p for p in (last, hpc_checkpoint(run_dir)) if p is not None and p.is_file()]
        # newest written wins; on a tie last.ckpt (listed first: max keeps the first of equals)
        return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None
    path = last if str(ckpt_path) == "last" else Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; check ckpt_path (use ckpt_path=last inside the run directory)")
    return path


def export_safetensors(state_dict: dict[str, torch.Tensor], info: dict[str, Any], path: str | Path) -> Path:
    """Weights-only export: the tensors, and the config needed to rebuild the model as JSON metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # a run without checkpoints (debug=fdr) has no checkpoints/ yet
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(tmp), metadata={"diffusion": json.dumps(info)})
    tmp.replace(path)
    return path


def read_safetensors(path: str | Path, fix: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a .safetensors file; an unreadable one is a one-line error ending in ``fix``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError) as err:
        raise ConfigError(f"{path} is not a readable safetensors file ({str(err).splitlines()[0]}); {fix}") from None


def _load_safetensors(path: Path) -> dict[str, Any]:
    state_dict, metadata = read_safetensors(path, "export it again with train.py")
    if "diffusion" not in metadata:
        raise ConfigError(f"{path} lacks the model config in its metadata; export it with this framework's train.py")
    return {"state_dict": state_dict, "diffusion": json.loads(metadata["diffusion"])}


def _unpickling_detail(err: BaseException) -> str:
    """The informative part of torch's weights-only error (its first line advises weights_only=False)."""
    skip = ("Weights only load failed", "Check the documentation of torch.load")
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.strip().startswith(skip)]
    return " ".join(line.split("WeightsUnpickler error:", 1)[-1].strip() for line in lines).strip() or type(err).__name__


def load_plain(path: Path, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)``, its failures as one-line errors: a pickle that names code (a class
    or function other than torch's plain types) is refused, anything else unreadable is reported as such."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = _unpickling_detail(err)
        if "GLOBAL" in detail or "global" in detail:
            raise ConfigError(f"refusing to load {path}: it holds objects other than tensors and plain data ({detail})") from None
        raise ConfigError(f"{path} is not a readable {what} (truncated or another format: {detail})") from None
    except Exception as err:  # noqa: BLE001 - the unpickler meets garbage with IndexError, KeyError, RuntimeError...
        detail = (str(err).splitlines() or [""])[0] or type(err).__name__
        raise ConfigError(f"{path} is not a readable {what} (truncated or another format: {detail})") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A train.py checkpoint (.ckpt, read with ``weights_only=True``) or its .safetensors export."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"checkpoint {path} is a directory; pass a file, e.g. {path / 'checkpoints' / 'last.ckpt'}")
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; pass the path of a .ckpt written by train.py")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    checkpoint = load_plain(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "diffusion" not in checkpoint:
        raise ConfigError(f"{path} is not a checkpoint written by this framework's train.py")
    return checkpoint


def check_compatible(module: nn.Module, state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """Fail with one line when a checkpoint's weights do not fit the configured model."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = [k for k in own.keys() & state_dict.keys() if own[k].shape != state_dict[k].shape]
    if missing or unexpected or wrong:
        example = (wrong or missing or unexpected)[0]
        raise ConfigError(
            f"checkpoint {path} was trained with a different model config ({len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(wrong)} mis-shaped tensors, e.g. {example}); use the network= settings it was trained with"
        )


# The only code a checkpoint's stored config may name unless the user trusts more: classes and functions of these
# modules. Loading with weights_only=True keeps pickles from running code, but Hydra's instantiate would call any
# `_target_` (os.system, builtins.exec, ...) that a tampered config -- .ckpt or .safetensors metadata -- names.
CHECKPOINT_MODULES = (
    "diffusion.nets.", "diffusion.core.schedules", "diffusion.core.objectives", "diffusion.core.sampling",
    "diffusion.core.denoising_loss", "diffusion.core.consistency_tuning", "diffusion.core.distribution_matching",
    "diffusion.core.level_prediction",
    "diffusion.core.samplers.", "diffusion.training.module", "diffusion.training.checkpoints", "torch.optim",
)
BUILT_FROM_CONFIG = ("module", "network", "schedule", "objective", "optimizer", "sampler")
# Where the classes of older checkpoints moved (the split into layers; one file name per module): old prefix -> new.
MOVED = {
    "diffusion.unet.": "diffusion.nets.unet.",
    "diffusion.schedules.": "diffusion.core.schedules.",
    "diffusion.objectives.": "diffusion.core.objectives.",
    "diffusion.sampling.": "diffusion.core.sampling.",
    "diffusion.module.": "diffusion.training.module.",
    "diffusion.core.consistency.": "diffusion.core.consistency_tuning.",
    # issue 20's names for what records a run (a stored config's logger names its class)
    "diffusion.training.loggers.": "diffusion.training.csv_logger.",
    "diffusion.training.tracking.": "diffusion.training.experiment_tracking.",
    "diffusion.training.timing.": "diffusion.training.run_timer.",
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
    """The stored config with a ``module`` node: today's conf/module/default.yaml for configs from before it, less
    the settings that config predates (``training.max_nonfinite_steps``...), which keep DiffusionModule's defaults."""
    config = renamed_keys(upgrade_config(info["config"]))
    if "module" in config:
        return OmegaConf.create(config)
    merged = OmegaConf.merge({"module": OmegaConf.load(CONF_DIR / "module" / "default.yaml")}, config)
    for key in list(merged.module):
        try:
            OmegaConf.select(merged, f"module.{key}", throw_on_missing=True)
        except Exception:  # noqa: BLE001 - omegaconf's missing-key and interpolation errors alike
            del merged.module[key]
    return merged


def module_from_checkpoint(checkpoint: dict[str, Any], trust: tuple[str, ...] | list[str] = ()) -> DiffusionModule:
    """Rebuild a trained module from the config stored in its checkpoint (EMA weights when present:
    Lightning's weight-averaging callback stores the average as ``state_dict``). ``trust``: module prefixes
    (``mypkg``) whose code the stored config may name besides the framework's own."""
    info = checkpoint["diffusion"]
    cfg = stored_config(info)
    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in BUILT_FROM_CONFIG:
        check_checkpoint_targets(plain.get(key), key, tuple(trust or ()))
    module = build_module(cfg, len(info["class_names"]), info["image_size"], info["class_names"], info.get("class_counts"),
                          info.get("data_mean"))
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
                "(experiment=ect and cd set schedule=edm objective=edm; add objective=flow schedule=flow for a flow model)"
            )
    if info.get("image_size") != module.image_size:
        raise ConfigError(f"init_from={path} was trained on {info.get('image_size')}-pixel images, this run's data are {module.image_size}; use the same data")
    # A training method's own networks (DMD's fake score, a level predictor) that the checkpoint lacks keep the start
    # their method gives them.
    weights = {**{k: v for k, v in module.state_dict().items() if k.startswith("method.")}, **checkpoint["state_dict"]}
    check_compatible(module, weights, path)
    module.load_state_dict(weights)



class TeacherCheckpoint:
    """The teacher of a distillation method (``core.consistency_tuning.ConsistencyDistillation``): a trained run's
    denoiser (its EMA weights), frozen and in eval mode, read from ``path`` when the method first calls this. Until
    then it is only a path, so a distilled model's checkpoint loads for sampling without its teacher's file."""

    def __init__(self, path: str | Path | None):
        if path is None:
            raise ConfigError("distillation needs its teacher: init_from=RUN/checkpoints/last.ckpt (experiment=cd or experiment=dmd)")
        self.path = str(path)

    def __call__(self):
        module = module_from_checkpoint(load_checkpoint(self.path))
        if getattr(module.method, "few_step_student", False):  # ECT's, CD's and DMD's models alike
            raise ConfigError(f"init_from={self.path} is a few-step model, not a denoiser whose ODE or scores can be followed: "
                              "distil from the diffusion model it was tuned from")
        return module.denoiser.eval().requires_grad_(False)

    def __repr__(self) -> str:
        return f"TeacherCheckpoint({self.path!r})"
