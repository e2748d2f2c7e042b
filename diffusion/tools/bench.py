"""Throughput of this framework's training and sampling, side by side with a course-style pipeline.

    python -m diffusion.tools.bench [--model small|course|large] [--batch 100] [--steps 20] [--precision 32|bf16|auto]
                              [--device auto|cpu|cuda] [--channels-last] [--compile] [--quick] [--json PATH]
                              [hydra overrides, e.g. model.base_channels=48]

Method. Everything is measured in one process and side by side: each contender is built once and warmed
up (warm-up steps, which include torch.compile's compilation, are never timed), then the contenders take
turns, one chunk of steps each per repetition (A B C A B C ...), so a burst of load from another process
hits all of them alike. A chunk is sized from the contender's warm-up to about 1.5 s (0.5 s with --quick,
which also takes 3 turns instead of 5, 2 sampling repetitions instead of 3, the fast samplers at --steps
only, and skips the naive loader with workers). Every figure is the median over repetitions (turns); a
training ratio is the median over turns of the two contenders' ratio within the turn, so load that lasts
a turn cancels out. On CUDA the clock is read after torch.cuda.synchronize(). The report gives the share
of CPU time that other processes took during the run (from /proc/stat): judge the figures by it.

Training contenders (the same U-Net, initial weights, batch size and AdamW from conf/; the data are
10,000 procedural sprites from ``data.procedural``, 16x16 uint8, in memory):

  ours       the framework: DiffusionModule from ``builders.build_module`` (Hydra's compose API on conf/),
             the SpriteDataModule path (the sprites as one uint8 tensor in device memory, batches as
             randperm slices, scaled to [-1, 1] in bulk after transfer), Lightning with gradient clipping
             1.0, --precision, and --channels-last / --compile. Its clock is read at consecutive
             on_train_batch_start hooks, so a chunk holds whole iterations: fetch, scaling, step,
             clipping, optimizer, Lightning's bookkeeping. EMA, sample-grid and checkpoint callbacks are
             not part of the step and are left out.
  raw        DiffusionModule's loss, backward, clipping and AdamW step on one fixed batch, no Lightning
             and no data: ours / raw is what the data path and Lightning cost.
  raw fp32   raw without bf16 autocast, channels_last or compile, only when one of them is on: raw / raw
             fp32 is what they buy (run with one option at a time to see each one's share).
  naive      the DeepLearning.AI course's pipeline: a per-item Dataset (PIL image -> ToTensor -> Normalize
             to [-1, 1]), a DataLoader with shuffle and default collate, fp32, the course's loss on the
             same U-Net, no clipping (as in the course). Run with num_workers=0 and 2 (persistent workers,
             prefetch_factor=1); with workers each chunk first runs as many untimed steps as the workers
             prefetch, so batches queued while the other contenders ran are not counted. ours / naive
             uses the faster of the two.

Options: --channels-last stores the U-Net's weights as NHWC, which makes the convolutions (oneDNN on
CPU, cuDNN on CUDA) work and return NHWC; --compile runs ``Module.compile()`` (TorchInductor) on the
U-Net; bf16 is autocast (Lightning's ``bf16-mixed``): weights and optimizer stay fp32.

Sampling: ``sampling.generate`` under inference_mode, in fp32 and under bf16 autocast, for the fast
samplers (conf/sampler/*.yaml) at about --steps and --steps / 2 model evaluations (NFE; Heun's steps are
chosen so that 2 * steps - 1 stays within it), unconditional, and for ``samplers.sample_ddpm`` over the 500
levels of conf/sampler/ddpm.yaml. DDPM is timed over all 500 levels on CUDA (100 with --quick) and over the
first 10 (5) on CPU, and scaled to 500: every DDPM step is the same evaluation and update.

Peak memory: on CUDA torch.cuda.max_memory_allocated (tensors only), reset before each chunk; on CPU the
process's peak resident set (VmHWM in /proc/self/status), reset through /proc/self/clear_refs before each
chunk, or getrusage's ru_maxrss (the process's lifetime peak) where that file cannot be written. Either
way it is the whole process: every contender's weights and optimizer state and the data set are in it,
so the differences between contenders are what each step adds. DataLoader workers are not counted.

Hardware fraction: forward FLOPs per image are counted with torch.utils.flop_counter.FlopCounterMode on
one batch; a training step is taken as 3x the forward; achieved FLOP/s = 3 * forward FLOPs per image *
images/s, divided by the rate of a large square matmul in the contender's precision (what this machine
reaches in practice, not a datasheet peak), which takes its turns among the training contenders so that it
is measured under the same load. On CUDA the fp32 matmul is true fp32 (torch's default) while cuDNN
convolutions may use TF32 (``torch.backends.cudnn.allow_tf32``, on by default); both flags are reported.

Convolution bound (CPU only): after the turns, the raw steps run 3 more steps under a dispatch mode that
clocks every aten operator (``OperatorClock``), which gives the time spent in convolutions, forward and
backward. The step can never be faster than its convolutions, so the naive step's time over the
convolutions' time bounds ours / naive from above.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from diffusion.training.builders import apply_speed_options, build_module, build_sampler
from diffusion.data.datamodule import IndexedTensors, SpriteDataModule
from diffusion.data.procedural import CLASSES, generate_sprites
from diffusion.core.denoiser import conditioned
from diffusion.training.module import DiffusionModule
from diffusion.core.samplers.ancestral import sample_ddpm
from diffusion.core.samplers.common import steps_for_nfe
from diffusion.core.sampling import generate
from diffusion.core.schedules import LinearSchedule

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "conf"
IMAGE_SIZE = 16
FAST_SAMPLERS = ("euler", "heun", "dpmpp_2m", "ddim", "lms")
DDPM_LEVELS = 500
LIGHTNING_PRECISION = {"32": "32-true", "bf16": "bf16-mixed"}
MiB = 2**20
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
    fixed = [f"model={model}", f"data.batch_size={batch}", "paths.output_dir=."]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="bench"):
        return compose(config_name="train", overrides=fixed + list(overrides))


def fresh_module(cfg: DictConfig, device: torch.device) -> DiffusionModule:
    """A DiffusionModule with the same initial weights every time it is built."""
    torch.manual_seed(0)
    return build_module(cfg, len(CLASSES), IMAGE_SIZE, list(CLASSES)).to(device)


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


class DeviceSprites(SpriteDataModule):
    """The framework's data module over given arrays, its uint8 tensors moved to ``data_device``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, data_device: torch.device, batch_size: int):
        super().__init__(batch_size=batch_size, val_fraction=0.0)
        self.images, self.labels, self.data_device = images, labels, data_device

    def load(self):
        return self.images, self.labels, list(CLASSES)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self.train_set = IndexedTensors(*(t.to(self.data_device) for t in self.train_set.tensors))


class CourseSprites(Dataset):
    """The course's dataset: one sprite at a time through torchvision transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def forever(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


# -- the training contenders ------------------------------------------------------------------------


def raw_contender(cfg, images, labels, device, precision, channels_last, compile_net, name) -> Contender:
    """DiffusionModule's loss, backward, clipping and AdamW step on one fixed batch."""
    module = fresh_module(cfg, device)
    apply_speed_options(module.denoiser.net, channels_last, compile_net)
    optimizer = module.optimizer_factory(module.parameters())
    batch = cfg.data.batch_size
    x0 = torch.from_numpy(images[:batch]).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    y = torch.from_numpy(labels[:batch]).to(device)
    sigma = module.schedule.sample_sigma(batch, device=device)
    noise = torch.randn_like(x0)
    clip = cfg.trainer.gradient_clip_val

    def step() -> None:
        with autocast(device, precision):
            loss = module.denoiser.loss(x0, sigma, noise, y).mean()
        loss.backward()
        nn.utils.clip_grad_norm_(module.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return Contender(name, precision, batch, step)


def matmul_contender(size: int, precision: str, device: torch.device) -> Contender:
    """One size x size matmul per step; its rate is FLOP/s."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    return Contender(f"matmul {size}^2", precision, 2 * size**3, lambda: a @ b)


def naive_contender(cfg, images, labels, device, workers: int) -> Contender:
    """The course's loop: per-item PIL transforms, default collate, its noising and MSE on the noise, fp32."""
    net = fresh_module(cfg, device).denoiser.net
    optimizer = instantiate(cfg.optimizer)(net.parameters())
    batch = cfg.data.batch_size
    worker_options = {"persistent_workers": True, "prefetch_factor": 1} if workers else {}
    dataset = CourseSprites(images, labels)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, **worker_options)
    batches = forever(loader)
    schedule = LinearSchedule(T=DDPM_LEVELS)
    alpha_bar = schedule.alpha_bar.float().to(device)

    def step() -> None:
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        noise = torch.randn_like(x)
        t = torch.randint(1, schedule.T + 1, (x.shape[0],), device=device)
        ab = alpha_bar[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(net(ab.sqrt() * x + (1 - ab).sqrt() * noise, t / schedule.T, y), noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return Contender(f"naive course, num_workers={workers}", "32", batch, step, lead_in=workers)


class TakeTurns(L.Callback):
    """Times Lightning's loop in chunks of ``contender.chunk`` batches, the clock read at on_train_batch_start,
    and hands over to the other contenders after each chunk."""

    def __init__(self, contender: Contender, watch: Stopwatch, reps: int, others: Callable[[], None]):
        self.contender, self.watch, self.reps, self.others = contender, watch, reps, others
        self.started = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        done = self.started - WARMUP_STEPS  # whole batches since the timed phase began
        self.started += 1
        if done < 0 or done % self.contender.chunk:
            return
        if done > 0:
            self.contender.record(*self.watch.stop())
            self.others()
        if done < self.contender.chunk * self.reps:
            self.watch.start()


def fit_in_turns(cfg, images, labels, device, precision, options, chunk, reps, others) -> Contender:
    """The framework's training, driven by Lightning, taking turns with ``others``."""
    module = fresh_module(cfg, device)
    apply_speed_options(module.denoiser.net, *options)
    data = DeviceSprites(images, labels, device, cfg.data.batch_size)
    data.setup("fit")
    contender = Contender("ours (Lightning)", precision, cfg.data.batch_size, chunk=chunk)
    turns = TakeTurns(contender, Stopwatch(device), reps, others)
    with tempfile.TemporaryDirectory() as root:
        trainer = instantiate(
            cfg.trainer,
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            precision=LIGHTNING_PRECISION[precision],
            max_epochs=-1,
            max_steps=WARMUP_STEPS + chunk * reps + 1,
            callbacks=[turns],
            logger=False,
            default_root_dir=root,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
        )
        trainer.fit(module, datamodule=data)
    return contender


def compare_training(cfg, images, labels, device, precision, options, plan) -> tuple[list[Contender], list[Contender]]:
    """All training contenders (ours first) and the fp32 and bf16 matmuls, taking turns."""
    others = [raw_contender(cfg, images, labels, device, precision, *options, f"raw step ({precision})")]
    if precision != "32" or any(options):
        others.append(raw_contender(cfg, images, labels, device, "32", False, False, "raw step (fp32, no options)"))
    for workers in plan.naive_workers:
        others.append(naive_contender(cfg, images, labels, device, workers))
    matmuls = [matmul_contender(plan.matmul_size, p, device) for p in ("32", "bf16")]
    for contender in others + matmuls:
        warm_up(contender, plan.chunk_seconds, device)
    watch = Stopwatch(device)

    def others_turn() -> None:
        for contender in others + matmuls:
            run_chunk(contender, watch)

    ours = fit_in_turns(cfg, images, labels, device, precision, options, others[0].chunk, plan.train_reps, others_turn)
    return [ours, *others], matmuls


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


# -- sampling -------------------------------------------------------------------------------------------


@dataclass
class SamplingJob:
    name: str
    steps: int
    nfe: int
    run: Callable[[], object]
    scale: float = 1.0  # full runs per timed run
    rates: dict[str, list[float]] = field(default_factory=dict)


def sampler_config(name: str) -> DictConfig:
    return OmegaConf.load(CONF_DIR / "sampler" / f"{name}.yaml")


def sampling_jobs(module: DiffusionModule, plan: Plan, device: torch.device) -> list[SamplingJob]:
    denoiser, n = module.denoiser, plan.sample_batch
    ddpm = build_sampler(sampler_config("ddpm"), DDPM_LEVELS)
    sigmas = ddpm.sigmas(module.schedule).to(device)[: plan.ddpm_timed_levels + 1]
    noise = torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, device=device) * math.sqrt(float(sigmas[0]) ** 2 + 1)
    jobs = [
        SamplingJob(
            "ddpm", DDPM_LEVELS, DDPM_LEVELS,
            lambda: sample_ddpm(conditioned(denoiser, None), noise, sigmas, **ddpm.options),
            scale=DDPM_LEVELS / plan.ddpm_timed_levels,
        )
    ]
    for nfe in plan.nfes:
        for name in FAST_SAMPLERS:
            config = sampler_config(name)
            sampler = build_sampler(config, steps_for_nfe(build_sampler(config).function, nfe))
            run = lambda s=sampler: generate(denoiser, s, n, image_size=IMAGE_SIZE, device=device)  # noqa: E731
            jobs.append(SamplingJob(name, sampler.steps, sampler.nfe, run))
    return jobs


def sampling_precisions(device: torch.device) -> list[str]:
    return ["32", "bf16"] if device.type == "cpu" or torch.cuda.is_bf16_supported() else ["32"]


def compare_sampling(cfg: DictConfig, plan: Plan, device: torch.device) -> list[SamplingJob]:
    """Every sampler in fp32 and under bf16 autocast, taking turns within each repetition."""
    module = fresh_module(cfg, device).eval()
    jobs = sampling_jobs(module, plan, device)
    precisions = sampling_precisions(device)
    with torch.inference_mode():
        for precision in precisions:  # warm-up: the truncated DDPM run
            with autocast(device, precision):
                jobs[0].run()
        for _ in range(plan.sample_reps):
            for job in jobs:
                for precision in precisions:
                    with autocast(device, precision):
                        seconds = seconds_of(job.run, device) * job.scale
                    job.rates.setdefault(precision, []).append(plan.sample_batch / seconds)
    return jobs


# -- FLOPs and the machine's matmul rate ------------------------------------------------------------------


def forward_flops_per_image(cfg: DictConfig, batch: int, device: torch.device) -> float:
    """FLOPs of one U-Net forward per image, counted by FlopCounterMode on one fp32 batch."""
    net = fresh_module(cfg, device).denoiser.net
    x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    c_noise, labels = torch.rand(batch, device=device), torch.randint(0, len(CLASSES), (batch,), device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, c_noise, labels)
    return counter.get_total_flops() / batch


# -- the machine ------------------------------------------------------------------------------------------


def cpu_flags_and_model() -> tuple[str, str]:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", platform.processor() or platform.machine()
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
    return info, names[0] if names else platform.machine()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device("cuda", torch.cuda.current_device()) if name == "cuda" else torch.device("cpu")


def pick_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        from diffusion.training.precision import fast_bf16_available

        return "bf16" if fast_bf16_available(device.type) else "32"
    return name


def git_commit() -> str:
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)

    head = git("rev-parse", "--short", "HEAD")
    if head.returncode != 0:
        return "uncommitted"
    dirty = git("diff", "--quiet", "HEAD").returncode != 0
    return head.stdout.strip() + ("+local changes" if dirty else "")


def tf32_flags(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    return {"matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32}


class OtherLoad:
    """The share of the machine's CPU time that other processes (and the hypervisor) took while the bench
    ran: all busy time in /proc/stat less this process's own (DataLoader workers count as others); None where
    /proc is missing."""

    def __init__(self):
        self.started = self._jiffies()
        self.wall = time.perf_counter()

    @staticmethod
    def _jiffies() -> tuple[int, int] | None:
        try:
            machine = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
            own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        busy = sum(machine) - machine[3] - machine[4]  # less idle and iowait; steal counts as taken
        return busy, int(own[11]) + int(own[12])  # this process's utime + stime

    def share(self) -> float | None:
        now = self._jiffies()
        if now is None or self.started is None:
            return None
        (busy0, own0), (busy1, own1) = self.started, now
        available = (time.perf_counter() - self.wall) * os.sysconf("SC_CLK_TCK") * os.cpu_count()
        return max(0.0, (busy1 - busy0 - (own1 - own0)) / available)


def describe_machine(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_flags_and_model()[1]
    return {
        "device": str(device),
        "device_name": name,
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "commit": git_commit(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        **tf32_flags(device),
    }


# -- report -----------------------------------------------------------------------------------------------


def training_rows(contenders: list[Contender], train_flops: float, rates: dict[str, float]) -> list[dict]:
    rows = []
    for c in contenders:
        achieved = train_flops * c.rate
        rows.append({
            "name": c.name,
            "precision": c.precision,
            "steps_per_chunk": c.chunk,
            "images_per_s": round(c.rate, 2),
            "images_per_s_reps": [round(r, 2) for r in c.rates],
            "peak_memory_mib": round(max(c.peaks) / MiB, 1),
            "achieved_flop_per_s": achieved,
            "fraction_of_matmul_rate": achieved / rates[c.precision],
        })
    return rows


def paired_ratio(a: Contender, b: Contender) -> float:
    """Median over turns of a's rate over b's in the same turn: load that lasts a turn cancels out."""
    return statistics.median(x / y for x, y in zip(a.rates, b.rates))


def training_ratios(contenders: list[Contender]) -> dict:
    ours, raw = contenders[0], contenders[1]
    naive = fastest_naive(contenders)
    return {
        "ours_over_naive": paired_ratio(ours, naive),
        "naive_used": naive.name,
        "ours_over_raw": paired_ratio(ours, raw),
    }


def sampling_rows(jobs: list[SamplingJob], plan: Plan) -> list[dict]:
    rows = []
    for job in jobs:
        row = {"sampler": job.name, "steps": job.steps, "nfe": job.nfe}
        for precision, rates in job.rates.items():
            row[f"images_per_s_{precision}"] = round(statistics.median(rates), 3)
        if job.scale != 1:
            row["timed_levels"] = plan.ddpm_timed_levels
        rows.append(row)
    return rows


def format_training(result: dict) -> list[str]:
    t = result["training"]
    lines = [
        f"training: batch {t['batch']}, {t['reps']} turns of a chunk of steps each, median images/s "
        f"(min..max over turns); peak memory: {t['memory_method']}",
        f"  {'contender':<30} {'prec':>5} {'steps':>5} {'img/s':>8} {'min..max':>13} {'ms/step':>8} "
        f"{'peak MiB':>8} {'GFLOP/s':>8} {'of matmul':>9}",
    ]
    for r in t["rows"]:
        ms = 1e3 * t["batch"] / r["images_per_s"]
        spread = f"{min(r['images_per_s_reps']):.0f}..{max(r['images_per_s_reps']):.0f}"
        lines.append(
            f"  {r['name']:<30} {r['precision']:>5} {r['steps_per_chunk']:>5} {r['images_per_s']:8.1f} {spread:>13} "
            f"{ms:8.0f} {r['peak_memory_mib']:8.0f} {r['achieved_flop_per_s'] / 1e9:8.1f} "
            f"{r['fraction_of_matmul_rate']:9.1%}"
        )
    ratios = t["ratios"]
    lines.append(
        f"  ours / naive = {ratios['ours_over_naive']:.2f}x (vs {ratios['naive_used']}, the faster naive); "
        f"ours / raw = {ratios['ours_over_raw']:.2f} (data path + Lightning); both medians of per-turn ratios"
    )
    if "convolutions" in t:
        c = t["convolutions"]
        spent = ", ".join(f"{name} {v['convolution_ms']:.0f} of {v['all_ops_ms']:.0f} ms" for name, v in c["profiled"].items())
        lines.append(
            f"  convolutions per step (forward + backward): {spent}; naive step {c['naive_ms']:.0f} ms: with every "
            f"other operator free, ours / naive <= {c['ours_over_naive_bound']:.2f}x"
        )
        for name, v in c["profiled"].items():
            lines.append(f"    {name} top operators, ms/step: " + ", ".join(f"{op} {ms:.1f}" for op, ms in v["top_ops_ms"].items()))
    if "skipped" in t:
        lines.append(f"  {t['skipped']}")
    return lines


def format_sampling(result: dict) -> list[str]:
    s = result["sampling"]
    precisions = s["precisions"]
    lines = [
        f"sampling: batch {s['batch']}, inference_mode, {s['reps']} repetitions, median images/s; "
        f"DDPM timed over {s['ddpm_timed_levels']} of its {DDPM_LEVELS} levels and scaled",
        f"  {'sampler':<10} {'steps':>5} {'NFE':>5} " + " ".join(f"{'img/s ' + p:>11}" for p in precisions)
        + (f" {'bf16/fp32':>9}" if len(precisions) == 2 else ""),
    ]
    for r in s["rows"]:
        cells = " ".join(f"{r[f'images_per_s_{p}']:11.2f}" for p in precisions)
        ratio = f" {r['images_per_s_bf16'] / r['images_per_s_32']:9.2f}" if len(precisions) == 2 else ""
        lines.append(f"  {r['sampler']:<10} {r['steps']:>5} {r['nfe']:>5} {cells}{ratio}")
    return lines


def cpu_taken(share: float | None) -> str:
    return "unknown" if share is None else f"{share:.0%}"


def format_report(result: dict) -> str:
    m, f = result["machine"], result["flops"]
    head = [
        f"diffusion.tools.bench: model={result['model']} ({result['parameters'] / 1e6:.2f}M parameters), "
        f"precision {result['precision']}, channels_last {result['channels_last']}, compile {result['compile']}",
        f"machine: {m['device']} ({m['device_name']}), {m['cpu_cores']} CPU cores, torch {m['torch']}, "
        f"{m['threads']} threads, commit {m['commit']}, "
        f"load average {m['load_average_start']} -> {m['load_average_end']}, "
        f"{cpu_taken(m['cpu_share_taken_by_others'])} of the CPU time taken by other processes during the run"
        + (f", TF32 matmul {m['matmul_tf32']} cuDNN {m['cudnn_tf32']}" if "matmul_tf32" in m else ""),
        f"model: {f['forward_per_image'] / 1e9:.3f} GFLOP per image forward (FlopCounterMode), training taken as 3x; "
        f"matmul {f['matmul_size']}^2 (timed in the training turns): fp32 {f['matmul_rate']['32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {f['matmul_rate']['bf16'] / 1e9:.0f} GFLOP/s",
    ]
    return "\n".join(head + format_training(result) + format_sampling(result) + [f"total {result['seconds']:.0f} s"])


# -- entry point ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="small", help="a conf/model config: small, course or large")
    parser.add_argument("--batch", type=int, default=100, help="training batch size")
    parser.add_argument("--steps", type=int, default=20,
                        help="fast samplers' model evaluations (NFE); the full run also does half")
    parser.add_argument("--precision", choices=["32", "bf16", "auto"], default="auto",
                        help="ours and raw: fp32, bf16 autocast, or bf16 where the hardware has fast bf16")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--channels-last", action="store_true", help="NHWC weights for ours and raw")
    parser.add_argument("--compile", action="store_true", help="torch.compile the U-Net of ours and raw")
    parser.add_argument("--quick", action="store_true",
                        help="fewer turns, shorter chunks, fast samplers at --steps only, naive without workers")
    parser.add_argument("--sample-batch", type=int, default=None,
                        help="images per sampling run (default 256 on CUDA, 32 on CPU, 16 on CPU with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the JSON result here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the train config, e.g. model.base_channels=48")
    return parser.parse_args(argv)


def quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")


def run(args: argparse.Namespace) -> dict:
    start, other_load = time.perf_counter(), OtherLoad()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    precision = pick_precision(args.precision, device)
    plan = Plan.make(args, device)
    cfg = compose_config(args.model, args.batch, args.overrides)
    images, labels = generate_sprites(plan.data_size, seed=0)
    machine = describe_machine(device)
    forward = forward_flops_per_image(cfg, args.batch, device)
    options = (args.channels_last, args.compile)
    contenders, matmuls = compare_training(cfg, images, labels, device, precision, options, plan)
    rates = {m.precision: m.rate for m in matmuls}
    jobs = compare_sampling(cfg, plan, device)
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["cpu_share_taken_by_others"] = other_load.share()
    rows = training_rows(contenders, 3 * forward, rates)
    training = {
        "batch": args.batch, "reps": plan.train_reps,
        "memory_method": PeakMemory(device).method, "rows": rows, "ratios": training_ratios(contenders),
    }
    if device.type == "cpu":  # CUDA kernels run asynchronously: their time is not the profiler's CPU time
        training["convolutions"] = convolution_bound(contenders, args.batch)
    if 2 not in plan.naive_workers:
        training["skipped"] = "--quick: naive with num_workers=2 not run"
    return {
        "model": args.model,
        "parameters": sum(p.numel() for p in fresh_module(cfg, device).parameters()),
        "precision": precision,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "machine": machine,
        "flops": {
            "forward_per_image": forward, "matmul_size": plan.matmul_size, "matmul_rate": rates,
            "matmul_rate_reps": {m.precision: m.rates for m in matmuls},
        },
        "training": training,
        "sampling": {
            "batch": plan.sample_batch, "reps": plan.sample_reps, "ddpm_timed_levels": plan.ddpm_timed_levels,
            "precisions": sampling_precisions(device), "rows": sampling_rows(jobs, plan),
        },
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    quiet_lightning()
    result = run(args)
    print(format_report(result))
    line = json.dumps(result)
    print(line)
    if args.json:
        args.json.write_text(line + "\n")
    return result


if __name__ == "__main__":
    main()
