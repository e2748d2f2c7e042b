"""Turning image tensors into files people look at: upscaled grids, animations, the course's .npz layout."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def quantize(images: Tensor) -> Tensor:
    """[-1, 1] tensors (N, 3, H, W) -> uint8 tensors of the same layout and device: the one rounding of generated
    images, so that figures measured during training match those of saved samples."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_uint8(images: Tensor) -> np.ndarray:
    """[-1, 1] tensors (N, 3, H, W) -> uint8 (N, H, W, 3), the layout of the course's sprite file."""
    return quantize(images).cpu().permute(0, 2, 3, 1).numpy()


def grid(images: np.ndarray, ncols: int | None = None, scale: int = 4, pad: int = 1, pad_value: int = 255) -> np.ndarray:
    """Tile uint8 (N, H, W, 3) images into one uint8 image, each enlarged ``scale`` times by
    nearest-neighbour so 16x16 sprites stay crisp."""
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    big = images.repeat(scale, axis=1).repeat(scale, axis=2)
    H, W = h * scale + pad, w * scale + pad
    out = np.full((nrows * H + pad, ncols * W + pad, c), pad_value, dtype=np.uint8)
    for i, im in enumerate(big):
        r, col = divmod(i, ncols)
        out[pad + r * H : pad + r * H + h * scale, pad + col * W : pad + col * W + w * scale] = im
    return out


def save_png(array: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def save_gif(frames: list[np.ndarray], path: str | Path, duration_ms: int = 60, hold_last_ms: int = 1500) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures = [Image.fromarray(f) for f in frames]
    durations = [duration_ms] * (len(pictures) - 1) + [hold_last_ms]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return path


def save_npz(images: np.ndarray, labels: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, labels=labels)
    return path
