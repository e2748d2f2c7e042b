"""The measuring kit every part of the bench shares: the plan, clocks, peak memory, a contender measured in
chunks, and the model built the same way for every contender."""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from diffusion.data.procedural import CLASSES
from diffusion.training.builders import build_module
from diffusion.training.module import DiffusionModule
from diffusion.training.renamed_groups import renamed_overrides

ROOT = Path(__file__).resolve().parents[3]
CONF_DIR = ROOT / "conf"
IMAGE_SIZE = 16
DDPM_LEVELS = 500
LIGHTNING_PRECISION = {"32": "32-true", "bf16": "bf16-mixed"}
WARMUP_STEPS = 2


@dataclass
class Plan:
    """How long to measure: turns, chunk length, sampling work, sizes."""

    train_reps: int
    sample_reps: int
    chunk_seconds: float
    nfes: list[int]
    ddpm_timed_levels: int
    sample_batch: int
    matmul_size: int
    data_size: int
    naive_workers: tuple[int, ...]

    @classmethod
    def make(cls, args: argparse.Namespace, device: torch.device) -> Plan:
        cuda = device.type == "cuda"
        nfes = [args.steps] if args.quick else sorted({max(args.steps // 2, 1), args.steps})
        return cls(
            train_reps=3 if args.quick else 5,
            sample_reps=2 if args.quick else 3,
            chunk_seconds=0.5 if args.quick else 1.5,
            nfes=nfes,
            ddpm_timed_levels=(100 if args.quick else DDPM_LEVELS) if cuda else (5 if args.quick else 10),
            sample_batch=args.sample_batch or (256 if cuda else 16 if args.quick else 32),
            matmul_size=8192 if cuda else 2048,
            data_size=max(10_000, 4 * args.batch),
            naive_workers=(0,) if args.quick else (0, 2),
        )


# -- timing and memory ------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory since the last reset (see the module docstring for what each method counts)."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated (reset per chunk)"
        elif self._reset_vmhwm():
            self.method = "peak RSS, VmHWM (reset per chunk through /proc/self/clear_refs)"
        else:
            self.method = "peak RSS, ru_maxrss (process lifetime peak)"

    @staticmethod
    def _reset_vmhwm() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif "VmHWM" in self.method:
            self._reset_vmhwm()

    def read(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        if "VmHWM" in self.method:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_of(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


class Stopwatch:
    """Wall time and peak memory of one chunk."""

    def __init__(self, device: torch.device):
        self.device, self.memory = device, PeakMemory(device)
        self.started = 0.0

    def start(self) -> None:
        synchronize(self.device)
        self.memory.reset()
        self.started = time.perf_counter()

    def stop(self) -> tuple[float, int]:
        synchronize(self.device)
        return time.perf_counter() - self.started, self.memory.read()


@dataclass
class Contender:
    """A loop measured in chunks of ``chunk`` steps: work per second (images, or FLOPs for the matmul) and
    peak memory per chunk."""

    name: str
    precision: str
    work: float  # per step
    step: Callable[[], object] = lambda: None
    lead_in: int = 0  # untimed steps at the start of each chunk
    chunk: int = 1
    rates: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)

    def record(self, seconds: float, peak: int) -> None:
        self.rates.append(self.chunk * self.work / seconds)
        self.peaks.append(peak)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


def warm_up(contender: Contender, chunk_seconds: float, device: torch.device) -> None:
    """Run the untimed warm-up steps and size the chunk from the faster of them (the first pays for
    allocation, optimizer state and compilation)."""
    seconds = [seconds_of(contender.step, device) for _ in range(WARMUP_STEPS)]
    contender.chunk = max(1, min(200, round(chunk_seconds / max(min(seconds[1:]), 1e-6))))


def run_chunk(contender: Contender, watch: Stopwatch) -> None:
    for _ in range(contender.lead_in):
        contender.step()
    watch.start()
    for _ in range(contender.chunk):
        contender.step()
    contender.record(*watch.stop())


# -- building the pieces ----------------------------------------------------------------------------


def compose_config(model: str, batch: int, overrides: list[str]) -> DictConfig:
    """The train config for this model and batch size, through Hydra's compose API."""
    fixed = [f"network={model}", f"data.batch_size={batch}", "paths.output_dir=."]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="bench"):
        return compose(config_name="train", overrides=fixed + renamed_overrides(overrides))  # model.* -> network.*


def fresh_module(cfg: DictConfig, device: torch.device) -> DiffusionModule:
    """A DiffusionModule with the same initial weights every time it is built."""
    torch.manual_seed(0)
    return build_module(cfg, len(CLASSES), IMAGE_SIZE, list(CLASSES)).to(device)


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
