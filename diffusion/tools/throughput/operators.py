"""What the U-Net's operators cost: its FLOPs per image, and the time each aten operator takes in a step, from
which the convolution bound on ours / naive follows."""

from __future__ import annotations

import time

import torch
from omegaconf import DictConfig
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from diffusion.data.procedural import CLASSES
from diffusion.tools.throughput.measure import IMAGE_SIZE, Contender, fresh_module


def forward_flops_per_image(cfg: DictConfig, batch: int, device: torch.device) -> float:
    """FLOPs of one U-Net forward per image, counted by FlopCounterMode on one fp32 batch."""
    net = fresh_module(cfg, device).denoiser.net
    x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    c_noise, labels = torch.rand(batch, device=device), torch.randint(0, len(CLASSES), (batch,), device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, c_noise, labels)
    return counter.get_total_flops() / batch


class OperatorClock(TorchDispatchMode):
    """Wall time of every top-level aten operator, forward and backward (on the CPU, where they run synchronously
    on the calling thread); nested calls count toward the operator that made them."""

    def __init__(self):
        super().__init__()
        self.seconds: dict[str, float] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        return out


def fastest_naive(contenders: list[Contender]) -> Contender:
    """The naive pipeline to compare with: the faster of its worker settings."""
    return max((c for c in contenders if c.name.startswith("naive")), key=lambda c: c.rate)


def operator_times(contender: Contender, steps: int = 3) -> dict[str, float]:
    """Seconds per step in each aten operator (forward and backward), largest first."""
    with OperatorClock() as clock:
        for _ in range(steps):
            contender.step()
    return {name: t / steps for name, t in sorted(clock.seconds.items(), key=lambda item: -item[1])}


def convolution_bound(contenders: list[Contender], batch: int) -> dict:
    """The ceiling of ours / naive: the convolutions of our raw step alone against the naive step at its
    measured rate. Even if every other operator were free, the step cannot be faster than its convolutions."""
    raws = [c for c in contenders if c.name.startswith("raw")]
    naive = fastest_naive(contenders)
    profiled = {}
    for c in raws:
        times = operator_times(c)
        profiled[c.name] = {
            "convolution_ms": 1e3 * sum(t for name, t in times.items() if name.startswith("convolution")),
            "all_ops_ms": 1e3 * sum(times.values()),
            "top_ops_ms": {name: round(1e3 * t, 2) for name, t in list(times.items())[:8]},
        }
    conv_seconds = profiled[raws[0].name]["convolution_ms"] / 1e3
    return {
        "profiled": profiled,
        "naive_ms": 1e3 * batch / naive.rate,
        "ours_over_naive_bound": batch / naive.rate / conv_seconds,
    }
