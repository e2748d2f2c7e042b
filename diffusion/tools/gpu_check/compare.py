"""Bit-for-bit comparison of nested checkpoint contents (dicts, lists, tensors, numbers)."""

from __future__ import annotations

from typing import Any

import torch

# What a resumed run must reproduce exactly: the EMA weights (Lightning's weight averaging stores the average as
# `state_dict`), the raw weights (`current_model_state`), the optimizer's moments and step counts, the
# learning-rate schedule, and the step.
RESUME_KEYS = ("state_dict", "current_model_state", "optimizer_states", "lr_schedulers", "global_step")


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Paths at which ``a`` and ``b`` differ: a tensor's dtype, shape or any bit (torch.equal), a key, a value."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        if not (torch.is_tensor(a) and torch.is_tensor(b)):
            return [f"{where}: a tensor on one side only"]
        if a.dtype != b.dtype or a.shape != b.shape:
            return [f"{where}: {a.dtype}{list(a.shape)} against {b.dtype}{list(b.shape)}"]
        return [] if torch.equal(a, b) else [f"{where}: {_largest_gap(a, b)}"]
    if isinstance(a, dict) and isinstance(b, dict):
        found = [f"{where}.{k}: only in one" for k in sorted(set(a) ^ set(b), key=str)]
        for key in sorted(set(a) & set(b), key=str):
            found += differences(a[key], b[key], f"{where}.{key}" if where else str(key))
        return found
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items against {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} against {b!r}"]


def _largest_gap(a: torch.Tensor, b: torch.Tensor) -> str:
    if not a.is_floating_point():
        return f"{int((a != b).sum())} of {a.numel()} values differ"
    gap = (a.double() - b.double()).abs()
    return f"{int((gap > 0).sum())} of {a.numel()} values differ, by up to {float(gap.max()):.3g}"


def resume_differences(whole: dict, resumed: dict) -> list[str]:
    """Where a resumed run's final checkpoint differs from the uninterrupted run's, over ``RESUME_KEYS``."""
    found = []
    for key in RESUME_KEYS:
        if key in whole or key in resumed:
            found += differences(whole.get(key), resumed.get(key), key)
    return found
