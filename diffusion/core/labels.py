"""Class labels of generated images: every class in turn (grids), or the training data's class mix (FID, which
compares with real images in their own proportions)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diffusion.core.errors import ConfigError


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
