"""Reading checkpoints safely: tensors and plain containers only, never code (``weights_only=True``)."""

from __future__ import annotations

import json
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusion.core.errors import ConfigError


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
            f"unexpected, {len(wrong)} mis-shaped tensors, e.g. {example}); use the model= settings it was trained with"
        )
