"""The course's "blobs": DDPM over all T levels with and without the added noise, on trained models.

    python -m diffusion.tools.collapse CKPT [CKPT ...] [--n 64] [--seed 0] [--out collapse.png]

Ho et al. 2020's Algorithm 2 adds sigma_t z after every step; with z = 0 (``add_noise=false``) each step moves
to the posterior mean, and the samples fall toward the mean of the data (of each class, for a conditional
model): smooth blobs. For each checkpoint this draws the same n labelled samples both ways and prints their
spread (per-pixel variance across samples) and detail (mean absolute difference of vertical neighbours) beside
the data's own, and writes one picture: per checkpoint, a row of 16 samples with the noise and a row without.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from diffusion.core.errors import OneLineArgumentParser
from diffusion.core.labels import class_cycle
from diffusion.core.sampling import Sampler
from diffusion.data import images
from diffusion.tools.cli import integer_at_least, reports_user_errors
from diffusion.training.checkpoints import load_checkpoint, module_from_checkpoint


def spread(x: torch.Tensor) -> float:
    """Variance across samples, averaged over pixels: how different the images are from one another."""
    return x.var(0).mean().item()


def detail(x: torch.Tensor) -> float:
    """Mean absolute difference between vertically neighbouring pixels: the edges that blobs lack."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean().item()


def ddpm_both_ways(module, n: int, seed: int) -> dict[bool, torch.Tensor]:
    """n labelled DDPM samples over all of the schedule's levels, from the same noise, with and without z."""
    steps = module.schedule.full_steps
    labels = class_cycle(n, module.num_classes)
    return {
        add_noise: module.sample(n, labels=labels, sampler=Sampler("ddpm", steps, "schedule", options={"add_noise": add_noise}),
                                 generator=torch.Generator().manual_seed(seed)).cpu()
        for add_noise in (True, False)
    }


@reports_user_errors
def run(args: argparse.Namespace) -> list[dict]:
    rows, strips = [], []
    for ckpt in args.ckpts:
        checkpoint = load_checkpoint(ckpt)
        module = module_from_checkpoint(checkpoint).eval()
        datamodule = instantiate(OmegaConf.create(checkpoint["diffusion"]["config"]).data)
        datamodule.prepare_data()
        real = datamodule.real_images("val").float() / 127.5 - 1
        print(f"{ckpt}: validation images: spread {spread(real):.3f}, detail {detail(real):.3f}")
        for add_noise, x in ddpm_both_ways(module, args.n, args.seed).items():
            rows.append({"ckpt": str(ckpt), "add_noise": add_noise, "spread": spread(x), "detail": detail(x)})
            print(f"  DDPM add_noise={str(add_noise).lower():5}: spread {rows[-1]['spread']:.3f}, detail {rows[-1]['detail']:.3f}",
                  flush=True)
            strips.append(images.grid(images.to_uint8(x[:16]), ncols=16))
    gap = np.full((4, strips[0].shape[1], 3), 255, np.uint8)
    picture = np.concatenate([part for strip in strips for part in (strip, gap)][:-1])
    print(f"wrote {images.save_png(picture, args.out)}")
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpts", nargs="+", type=Path, help="checkpoints or .safetensors exports from train.py")
    parser.add_argument("--n", type=integer_at_least(1), default=64, help="samples per checkpoint and way")
    parser.add_argument("--seed", type=integer_at_least(0), default=0)
    parser.add_argument("--out", type=Path, default=Path("collapse.png"))
    return parser


def main(argv: list[str] | None = None) -> None:
    run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
