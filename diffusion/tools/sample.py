"""The body of sample.py: load a checkpoint, draw samples in batches, write the course's .npz layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from rich.progress import Progress

from diffusion.core.errors import ConfigError
from diffusion.core.labels import class_cycle, sample_labels
from diffusion.data import images
from diffusion.evaluation.searched_levels import with_searched_levels
from diffusion.tools.output_records import save_config
from diffusion.tools.sampler_fid import checkpoint_datamodule, fill_data_mean
from diffusion.training.builders import build_sampler
from diffusion.training.checkpoints import load_checkpoint, module_from_checkpoint
from diffusion.training.module import DiffusionModule
from diffusion.training.precision import pick_device, sampling_in_bf16


def parse_labels(label, n: int, module: DiffusionModule) -> torch.Tensor | None:
    """``label``: None cycles through the classes, "uncond" is the null class, "data" follows the training data's
    class mix (the counts the checkpoint stores), else a class name or index (a class named "data" wins)."""
    classes = module.class_names
    if module.num_classes == 0:
        if label not in (None, "uncond"):
            raise ConfigError("this model was trained without class labels; drop label=")
        return None
    if label is None:
        return class_cycle(n, module.num_classes)
    if str(label) == "data" and "data" not in classes:
        return sample_labels(n, module.num_classes, module.class_counts, "data")
    if str(label) == "uncond":
        return torch.full((n,), module.num_classes, dtype=torch.long)
    if str(label) in classes:
        index = classes.index(str(label))
    elif str(label).lstrip("-").isdigit() and 0 <= int(label) < module.num_classes:
        index = int(label)
    else:
        raise ConfigError(
            f"label={label} is not a class of this model; choose one of {', '.join(classes)}, "
            f"0..{module.num_classes - 1}, data (the training data's class mix) or uncond"
        )
    return torch.full((n,), index, dtype=torch.long)


def fill_mean_from_data(module: DiffusionModule, checkpoint: dict, ckpt: str) -> None:
    """A checkpoint from before the training images' mean travelled in it: the analytic first step's closed form
    takes the mean from the checkpoint's own data, or refuses in one line where that cannot be read (a zero mean
    would move every sample towards grey and lose most of the step's gain)."""
    try:
        fill_data_mean(module, checkpoint_datamodule(checkpoint))
    except Exception as err:  # whatever stops the data module (a moved folder, a bad file, Hydra's wrapping of either)
        cause = " ".join(str(err).split())  # one line, whatever wrapped it
        raise ConfigError(f"{ckpt} predates the training images' mean in checkpoints and its data cannot be read ({cause}); "
                          "sample with sampler.analytic_first_step=false, or on a machine with its data") from None
    if module.data_mean is None:
        raise ConfigError(f"{ckpt}: its data module gives no mean image; sample with sampler.analytic_first_step=false")


def sample_to_folder(cfg: DictConfig) -> Path:
    if cfg.n < 1:
        raise ConfigError(f"n={cfg.n} must be at least 1")
    if cfg.guidance < 0:
        raise ConfigError(f"guidance={cfg.guidance} must be >= 0 (0 = plain conditional sampling)")
    out = Path(cfg.out)
    if (out / "samples.npz").exists() and not cfg.overwrite:
        raise ConfigError(f"{out / 'samples.npz'} exists already; choose another out= or pass overwrite=true")

    device = pick_device(cfg.device)
    bf16 = sampling_in_bf16(cfg.get("precision", "32"), device)
    checkpoint = load_checkpoint(cfg.ckpt)
    module = module_from_checkpoint(checkpoint, trust=list(cfg.get("trust") or [])).to(device)
    sampler = build_sampler(cfg.sampler, cfg.steps) if cfg.get("sampler") else build_sampler(module.config["sampler"], cfg.steps)
    sampler = with_searched_levels(sampler, cfg.ckpt)  # spacing=optimized: the levels searched for this checkpoint
    sigmas = sampler.sigmas(module.schedule)  # also validates steps against the schedule before any work
    if sampler.analytic_first_step and module.data_mean is None:
        fill_mean_from_data(module, checkpoint, cfg.ckpt)
    labels = parse_labels(cfg.label, cfg.n, module)
    level, spread = cfg.get("level"), cfg.get("level_spread", 1.0)
    level = module.default_level() if level is None else level
    module.sampling_denoiser(level, spread)  # an unknown level, or predicted without a predictor: before any work
    generator = torch.Generator().manual_seed(cfg.seed)

    frames: list[np.ndarray] = []
    batches = []
    with Progress(transient=True) as progress:
        task = progress.add_task(f"sampling {cfg.n} images, {sampler}", total=cfg.n * sampler.steps)
        for start in range(0, cfg.n, cfg.batch_size):
            count = min(cfg.batch_size, cfg.n - start)
            record = cfg.trajectory and start == 0

            def callback(i, x, denoised, record=record):
                progress.advance(task, count)
                if record and (i % max(sampler.steps // 50, 1) == 0 or i == sampler.steps - 1):
                    # Shown in variance-preserving scale, x / sqrt(1 + sigma^2), as the course's animation.
                    view = x / module.schedule.input_scale / (1 + float(sigmas[i + 1]) ** 2) ** 0.5
                    frames.append(images.grid(images.to_uint8(view[:64]), ncols=8))

            batch_labels = labels[start : start + count] if labels is not None else None
            batches.append(module.sample(count, labels=batch_labels, sampler=sampler, guidance=cfg.guidance, generator=generator, callback=callback, bf16=bf16,
                                         level=level, level_spread=spread))

    pictures = images.to_uint8(torch.cat(batches))
    label_array = labels.numpy() if labels is not None else np.full(cfg.n, -1, dtype=np.int64)
    written = [images.save_npz(pictures, label_array, out / "samples.npz"), images.save_png(images.grid(pictures[:256], ncols=8), out / "grid.png")]
    if frames:
        written.append(images.save_gif(frames, out / "trajectory.gif"))
    written.append(save_config(cfg, out / "sample_config.yaml", ckpt_path=str(Path(cfg.ckpt).expanduser().resolve()), sampler_used=repr(sampler), level_used=level))
    print(f"wrote {cfg.n} samples ({sampler}, level={level}, guidance={cfg.guidance}, {'bf16' if bf16 else 'fp32'}) to: " + ", ".join(str(p) for p in written))
    return out
