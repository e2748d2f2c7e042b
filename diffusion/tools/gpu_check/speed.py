"""Training throughput of the check's run and the share of the GPU's bf16 peak it reaches."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense bf16 tensor-core peaks in TFLOP/s (no sparsity), from the vendors' data sheets, by a part of the name
# torch.cuda.get_device_name() reports; the first match wins, so the longer names come first.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),  # the H100 SXM's compute with more memory; GH200 too
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
)


def bf16_peak(device_name: str) -> float | None:
    """The device's dense bf16 peak in FLOP/s, or None for a name not in the table."""
    for part, tflops in BF16_PEAK_TFLOPS:
        if part in device_name:
            return tflops * 1e12
    return None


def train_flops_per_image(net: torch.nn.Module, batch: int, num_classes: int, image_size: int, device: torch.device) -> float:
    """FLOPs of one forward and backward of the network per image, counted by FlopCounterMode at the run's batch."""
    net = net.to(device).train()
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    c_noise = torch.rand(batch, device=device)
    labels = torch.randint(0, num_classes, (batch,), device=device) if num_classes else None
    with FlopCounterMode(display=False) as counter:
        net(x, c_noise, labels).float().square().mean().backward()
    return counter.get_total_flops() / batch


def images_per_second(step_ends: list[tuple[int, float]], images_per_step: int, skip_share: float = 0.25) -> float | None:
    """Training images a second over the steps after the first ``skip_share`` of the run (warm-up: cuDNN's
    autotuning, torch.compile), from rank 0's step end times."""
    first = int(len(step_ends) * skip_share)
    if len(step_ends) - first < 2:
        return None
    (step0, t0), (step1, t1) = step_ends[first], step_ends[-1]
    return (step1 - step0) * images_per_step / (t1 - t0) if t1 > t0 else None
