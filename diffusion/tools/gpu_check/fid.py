"""FID of a checkpoint on N processes (Lightning DDP, the training run's own FID callback) and the figure one
process gets on the very same images.

    python -m diffusion.tools.gpu_check.fid RUN_DIR --devices N --accelerator gpu --num-samples 1000 --out fid.json

RUN_DIR is a run of the GPU check: its ``config.yaml`` (the resolved run config) gives the data, the FID callback's
settings and the precision, its ``checkpoints/last.ckpt`` the EMA weights. ``trainer.validate`` runs the callback
once (it measures at a validation without training); rank 0 writes what the callback recorded.

Why N processes and one process need not agree exactly with the callback's defaults: rank r draws its
num_samples / N images from the noise seed ``seed + r``, so N processes score other images than one process does
(the same distribution: the figures differ by FID's sampling noise). ``same_images_figure`` therefore draws, in one
process, every rank's share with that rank's seed and labels, and scores them with one ``ImageQuality``: what the
N-process figure must equal, up to the order in which float64 feature sums are added.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffusion.core.errors import OneLineArgumentParser
from diffusion.core.labels import sample_labels
from diffusion.evaluation.fid_callback import FIDCallback
from diffusion.evaluation.metrics import ImageQuality, build_feature_net
from diffusion.training.checkpoints import load_checkpoint, module_from_checkpoint
from diffusion.training.precision import callback_bf16


def build(run_dir: Path, num_samples: int) -> tuple[DictConfig, FIDCallback, Any, Any]:
    """The run's config, its FID callback measuring once at any validation, its data module and the final model."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    node = OmegaConf.merge(cfg.callbacks.fid, {"every_n_steps": 1, "num_samples": num_samples, "dirpath": str(run_dir / "fid")})
    callback = instantiate(node)
    datamodule = instantiate(cfg.data)
    module = module_from_checkpoint(load_checkpoint(run_dir / "checkpoints" / "last.ckpt"))
    return cfg, callback, datamodule, module


def callback_figure(run_dir: Path, devices: int, accelerator: str, num_samples: int) -> dict[str, Any] | None:
    """The FID callback's measurement on ``devices`` processes (rank 0's record; None on the other ranks)."""
    cfg, callback, datamodule, module = build(run_dir, num_samples)
    trainer = L.Trainer(
        accelerator=accelerator, devices=devices, strategy="ddp" if devices > 1 else "auto",
        precision=cfg.trainer.precision, callbacks=[callback], logger=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False, limit_val_batches=1,
        max_steps=1,  # unused by validate; the callback's cadence asks for a run length
    )
    trainer.validate(module, datamodule=datamodule, verbose=False)
    return {**callback.history[-1], "world_size": trainer.world_size} if trainer.is_global_zero else None


@torch.no_grad()
def same_images_figure(run_dir: Path, world_size: int, num_samples: int, device: torch.device) -> dict[str, Any]:
    """FID in one process of the images ``world_size`` processes of the FID callback draw (``FIDCallback.measure``:
    rank r's share of the labels, noise from ``seed + r``), against the whole validation split."""
    cfg, callback, datamodule, module = build(run_dir, num_samples)
    bf16 = callback_bf16(callback.precision, cfg.trainer.precision, "callbacks.fid")  # as on the N processes
    datamodule.setup("fit")
    module = module.to(device).eval()
    net = build_feature_net(callback.features, datamodule, feature_weights=callback.feature_weights,
                            inception_weights=callback.inception_weights, cache_dir=callback.cache_dir,
                            train_settings=callback.train_settings)
    quality = ImageQuality(net, callback.kid_subsets, callback.kid_subset_size, seed=callback.seed).to(device)
    quality.update_real(datamodule.real_images("val"), batch_size=callback.batch_size)
    counts = datamodule.class_counts("val") if callback.labels == "data" and module.num_classes else None
    all_labels = sample_labels(num_samples, module.num_classes, counts, callback.labels)
    per_rank = num_samples // world_size
    for rank in range(world_size):
        generator = torch.Generator().manual_seed(callback.seed + rank)
        for offset in range(0, per_rank, callback.batch_size):
            count, first = min(callback.batch_size, per_rank - offset), rank * per_rank + offset
            labels = all_labels[first : first + count] if all_labels is not None else None
            quality.update_fake(module.sample(count, labels=labels, sampler=callback.sampler, guidance=callback.guidance,
                                              generator=generator, bf16=bf16))
    return quality.compute()


def main() -> None:
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = callback_figure(args.run_dir, args.devices, args.accelerator, args.num_samples)
    if result is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
