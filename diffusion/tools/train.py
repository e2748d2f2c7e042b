"""The body of train.py: build everything from the config, fit, and leave the run's artefacts behind."""

from __future__ import annotations

import json
import math
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion.core.errors import ConfigError
from diffusion.core.labels import class_cycle
from diffusion.data import images
from diffusion.training import experiment_tracking
from diffusion.training.builders import apply_speed_options, build_module
from diffusion.training.cadence import apply_validation_cadence
from diffusion.training.callbacks import StepCheckpoint
from diffusion.training.checkpoints import (
    check_compatible,
    check_run_dir,
    export_safetensors,
    initialize_from,
    load_checkpoint,
    resolve_ckpt_path,
)
from diffusion.training.precision import fast_bf16_available
from diffusion.training.progress_log import hide_lightning_noise
from diffusion.training.resume import StepSeeds
from diffusion.training.run_timer import RunTimer, describe

FAILED_VALUE = 1e9


def resolve_precision(cfg: DictConfig) -> None:
    if cfg.trainer.get("precision") == "auto":
        with open_dict(cfg):
            fast = fast_bf16_available(str(cfg.trainer.get("accelerator", "auto")))
            cfg.trainer.precision = "bf16-mixed" if fast else "32-true"


def instantiate_all(group: DictConfig | None) -> list[Any]:
    return [instantiate(node) for node in (group or {}).values() if node is not None]


def feature_versions(callbacks: list[Any]) -> dict[str, str]:
    """Which feature network produced the FID figures: they compare only under the same one."""
    from diffusion.evaluation.fid_callback import FIDCallback

    return {"fid_features": cb.version for cb in callbacks if isinstance(cb, FIDCallback) and cb.version}


def final_metrics(trainer: L.Trainer) -> dict[str, float]:
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    metrics.update(step=trainer.global_step, epoch=trainer.current_epoch)
    return metrics


def write_final_samples(module, cfg: DictConfig, run_dir: Path) -> None:
    n, seed = cfg.final_samples.n, cfg.final_samples.seed
    generator = torch.Generator().manual_seed(seed)
    labels = class_cycle(n, module.num_classes)
    # the network as it trained: bf16 autocast in a bf16-mixed run (as the grids and FID during training)
    x = module.sample(n, labels=labels, generator=generator, bf16=str(cfg.trainer.precision) == "bf16-mixed")
    pictures = images.to_uint8(x)
    images.save_png(images.grid(pictures, ncols=8), run_dir / "samples" / "final.png")
    label_array = labels.numpy() if labels is not None else -torch.ones(n, dtype=torch.long).numpy()
    images.save_npz(pictures, label_array, run_dir / "samples" / "final.npz")


def write_plots(run_dir: Path) -> None:
    from diffusion.evaluation.plots import plot_run

    try:
        plot_run(run_dir)
    except Exception as err:  # noqa: BLE001 - a plot must never fail a finished run
        print(f"warning: plots not written: {err}", file=sys.stderr)


def check_no_searched_levels(cfg: DictConfig) -> None:
    """Searched levels belong to a trained checkpoint; the samplers of a run's grids and final samples have none to
    read (the FID callback searches its own), so ``spacing: optimized`` there would fail only after training."""
    grid = OmegaConf.select(cfg, "callbacks.sample_grid.sampler")
    for key, sampler in (("sampler", cfg.get("sampler")), ("callbacks.sample_grid.sampler", grid)):
        if sampler is not None and sampler.get("spacing") == "optimized" and not sampler.get("levels"):
            raise ConfigError(f"{key}.spacing=optimized needs levels searched for a trained checkpoint: train with "
                              f"{key}.spacing=karras, then python -m diffusion.tools.search_steps RUN/checkpoints/last.ckpt")


def train(cfg: DictConfig) -> float:
    timer = RunTimer()
    hide_lightning_noise()
    check_no_searched_levels(cfg)
    run_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)
    check_run_dir(run_dir, resuming=ckpt_path is not None)
    resolve_precision(cfg)
    apply_validation_cadence(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # no INFO line on stderr ahead of a user error

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    # a user's data module may lack them
    counts = datamodule.class_counts("train") if hasattr(datamodule, "class_counts") else None
    mean = datamodule.mean_image("train") if hasattr(datamodule, "mean_image") else None
    module = build_module(cfg, datamodule.num_classes, datamodule.image_size, datamodule.class_names, counts, mean)
    if ckpt_path is not None:
        check_compatible(module, load_checkpoint(ckpt_path)["state_dict"], ckpt_path)
    elif cfg.get("init_from"):
        initialize_from(module, cfg.init_from)
    apply_speed_options(module.denoiser.net, cfg.training.get("channels_last", False), cfg.training.get("compile", False))

    callbacks = instantiate_all(cfg.get("callbacks")) + [StepSeeds(cfg.seed)]
    # The EMA swap-back at the end of validation must come after every callback that samples; last.ckpt at the end
    # of a validation after the best checkpoints, so that it holds their record of that validation too (Lightning
    # itself moves every checkpoint callback behind the others, keeping this order).
    callbacks.sort(key=lambda cb: 2 if isinstance(cb, StepCheckpoint) else isinstance(cb, WeightAveraging))
    experiment_tracking.prepare_wandb(cfg, run_dir)
    callbacks.append(experiment_tracking.RunTracker(experiment_tracking.run_hparams(cfg, module, datamodule), run_dir))
    callbacks.append(timer)
    strategy = {}
    if cfg.trainer.get("strategy") == "ddp" and getattr(module.method, "leaves_weights_unused", False):
        # DMD's fake-score steps give the student's weights no gradient at all, which plain DDP stops on.
        strategy = {"strategy": "ddp_find_unused_parameters_true"}
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate_all(cfg.get("logger")) or False,
                                     **strategy)

    if trainer.is_global_zero:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    try:
        # weights_only=True: Lightning's own load of the resumed checkpoint never unpickles code either.
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        # Pre-empted: SaveOnSigterm wrote last.ckpt. Lightning's exception would exit with status 0 as if the
        # run had finished; exit as a process killed by SIGTERM does instead (no metrics.json, no final samples).
        print(f"training stopped by SIGTERM at step {trainer.global_step}; resume with ckpt_path=last (or auto)", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)

    metrics = final_metrics(trainer)
    metrics.update(feature_versions(callbacks))
    if module.validated_at_step != trainer.global_step and trainer.global_step > 0 and datamodule.has_validation:
        # Stopped by max_steps mid-epoch: validate the final weights so the run ends with fresh figures.
        trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics.update(final_metrics(trainer))
    value = metrics.get(cfg.optimized_metric, math.nan)
    if not math.isfinite(value):
        # A NaN would stop an Optuna sweep: report a large finite figure and say why.
        reason = "was never logged" if cfg.optimized_metric not in metrics else f"was {value}"
        metrics["failed"] = f"{cfg.optimized_metric} {reason}; returned {FAILED_VALUE:g} to the sweeper"
        value = FAILED_VALUE
    if trainer.is_global_zero:
        # After fit the module holds the EMA weights (the averaging callback copies them in at the end).
        export_safetensors(module.state_dict(), module.checkpoint_info(), run_dir / "checkpoints" / "final.safetensors")
        write_final_samples(module, cfg, run_dir)
        metrics.update(timer.summary())
        rank_zero_info(describe(metrics))
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        write_plots(run_dir)
        experiment_tracking.finish_run(trainer, metrics, run_dir, artifact=cfg.get("wandb_artifact", False))
        if "failed" in metrics:
            print(f"warning: {metrics['failed']}", file=sys.stderr)
    return value
