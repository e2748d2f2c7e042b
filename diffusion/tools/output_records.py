"""What sample.py and evaluate leave beside their outputs: the config they ran with, and (evaluate) a W&B run
linked to the training run whose samples it scored.

Why a linked run rather than resuming the training run: a finished run resumed from another process has its
summary and step counter rewritten, an offline resume of a run already synced conflicts with it, and W&B's own
pattern for evaluations is a separate run of ``job_type="evaluate"`` in the training run's group; its config
names the training run (``train_run_id``), so the two line up in the group view and link both ways.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from diffusion.core.errors import ConfigError
from diffusion.training.experiment_tracking import WANDB_RUN_FILE, flat_config, resolved


def save_config(cfg: DictConfig, path: Path, **extra: Any) -> Path:
    """The resolved config (and ``extra`` facts, e.g. the checkpoint's absolute path) as YAML."""
    container = {**resolved(cfg), **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(container), path)
    return path


def training_run_record(samples: Path) -> dict[str, Any] | None:
    """The W&B record (``wandb_run.json``) of the training run the samples come from: in a folder above them
    (train.py's ``samples/final.npz``) or above the checkpoint sample.py drew them from (its sample_config.yaml)."""
    folder = samples if samples.is_dir() else samples.parent
    candidates = [folder, *folder.parents][:3]
    sample_config = folder / "sample_config.yaml"
    if sample_config.is_file():
        ckpt = Path(str(OmegaConf.load(sample_config).get("ckpt_path", ""))).expanduser()
        candidates = [*ckpt.parents][:3] + candidates
    for directory in candidates:
        if (directory / WANDB_RUN_FILE).is_file():
            return json.loads((directory / WANDB_RUN_FILE).read_text())
    return None


def log_evaluation(cfg: DictConfig, report: dict[str, Any], samples: Path, pictures: list[Path]) -> str | None:
    """Log the figures and pictures of an evaluation to W&B as an ``evaluate`` run linked to the training run;
    ``cfg.wandb``: auto (only when the samples come from a run that logged to W&B), true or false. Returns the
    offline run's directory or the run's URL, or None when nothing was logged."""
    if str(cfg.wandb).lower() not in ("auto", "true", "false"):
        raise ConfigError(f"wandb={cfg.wandb} must be auto, true or false")
    record = training_run_record(samples)
    if str(cfg.wandb).lower() == "false" or (record is None and str(cfg.wandb).lower() == "auto"):
        return None
    import wandb

    from diffusion.tools.cli import wandb_mode

    record = record or {}
    config = {**flat_config(cfg), "train_run_id": record.get("id"), "train_run_dir": record.get("dir")}
    run = wandb.init(
        project=record.get("project") or "diffusion-sprites",
        group=record.get("group") or record.get("id"),
        name=f"evaluate {record.get('name') or record.get('id') or samples.name}",
        job_type="evaluate",
        config=config,
        dir=str(Path(cfg.out).parent if cfg.out else (samples if samples.is_dir() else samples.parent)),
        mode=wandb_mode(),
        reinit="finish_previous",
    )
    exit_code = 1
    try:
        figures = {f"eval/{k}": v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        run.log({**figures, **{f"eval/{p.stem}": wandb.Image(str(p)) for p in pictures if p.is_file()}})
        run.summary.update(figures)
        where = run.url or run.dir
        exit_code = 0
    finally:
        run.finish(exit_code=exit_code)
    return where
