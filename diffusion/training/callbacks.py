"""Training callbacks: sample grids over epochs, and end-of-run artefacts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from diffusion.core.errors import ConfigError
from diffusion.data import images
from diffusion.training.module import DiffusionModule
from diffusion.core.sampling import Sampler


def class_cycle(n: int, num_classes: int) -> torch.Tensor | None:
    """Labels 0, 1, ..., C-1, 0, 1, ... so a grid shows every class; None for unconditional models."""
    return torch.arange(n) % num_classes if num_classes else None


# How labels of generated images are drawn for FID: in the data's class proportions, or equally often.
LABEL_MIXES = ("data", "uniform")


def class_mix(n: int, counts: Sequence[int]) -> torch.Tensor:
    """n labels in the proportions of ``counts`` (class c a share counts[c] / sum(counts)), deterministic and
    interleaved: each draw, every class gains its count in credit and the class with the most credit is drawn
    and pays back the total (smooth weighted round-robin, ties to the lower index). The drawn counts match
    n * share within one label, and so does every prefix (a batch, one process's share of the indices)."""
    counts = [int(c) for c in counts]
    total = sum(counts)
    if not counts or min(counts) < 0 or total == 0:
        raise ConfigError(f"class counts {counts} must be non-negative with at least one image")
    credit = [0] * len(counts)
    labels = []
    for _ in range(n):
        credit = [have + gain for have, gain in zip(credit, counts)]
        pick = max(range(len(counts)), key=lambda c: (credit[c], -c))
        credit[pick] -= total
        labels.append(pick)
    return torch.tensor(labels, dtype=torch.long)


def sample_labels(n: int, num_classes: int, counts: Sequence[int] | None, mix: str = "data") -> torch.Tensor | None:
    """Labels of n generated images: ``mix="data"`` follows ``counts`` (``class_mix``), ``"uniform"`` cycles
    over the classes (``class_cycle``); None for unconditional models. FID compares with real images in their
    own class mix, so uniform labels on imbalanced data shift the figure by the mismatch alone."""
    if mix not in LABEL_MIXES:
        raise ConfigError(f"labels={mix!r} is not a label mix; choose one of {', '.join(LABEL_MIXES)}")
    if not num_classes:
        return None
    if mix == "uniform":
        return class_cycle(n, num_classes)
    if counts is None:
        raise ConfigError(
            "no class counts are known for labels=data (a checkpoint from before they were stored, or a data module "
            "without class_counts); use labels=uniform"
        )
    if len(counts) != num_classes:
        raise ConfigError(f"{len(counts)} class counts for a model of {num_classes} classes; use labels=uniform")
    return class_mix(n, counts)


class SampleGrid(L.Callback):
    """Every ``every_n_epochs`` validation epochs, sample a grid with a fixed seed (so grids over epochs
    are comparable) and save it as ``<dirpath>/epoch_XXXX.png``; the grids are also logged as images.

    Runs during validation, after Lightning's weight-averaging callback has swapped in the EMA
    weights: ``train.py`` puts that callback last so that the swap back happens after this one.
    """

    def __init__(self, dirpath: str, sampler: Sampler, n: int = 64, every_n_epochs: int = 1, seed: int = 0, scale: int = 4):
        self.dirpath, self.sampler, self.n = Path(dirpath), sampler, n
        self.every_n_epochs, self.seed, self.scale = every_n_epochs, seed, scale

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: DiffusionModule) -> None:
        if trainer.sanity_checking or self.every_n_epochs <= 0:
            return
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if (epoch + 1) % self.every_n_epochs and not last:
            return
        self._sample(trainer, pl_module, epoch)

    @rank_zero_only
    def _sample(self, trainer: L.Trainer, pl_module: DiffusionModule, epoch: int) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        labels = class_cycle(self.n, pl_module.num_classes)
        x = pl_module.sample(self.n, labels=labels, sampler=self.sampler, generator=generator)
        picture = images.grid(images.to_uint8(x), ncols=8, scale=self.scale)
        images.save_png(picture, self.dirpath / f"epoch_{epoch:04d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", picture, trainer.global_step, dataformats="HWC")
            elif hasattr(logger, "log_image"):
                logger.log_image(key="samples", images=[picture], step=trainer.global_step)
