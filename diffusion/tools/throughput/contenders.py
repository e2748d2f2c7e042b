"""The training contenders, built and run in turns: ours through Lightning, the raw step, the course's naive
pipeline and the matmuls that give the machine's rate."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from diffusion.core.denoising_loss import DenoisingLoss
from diffusion.core.schedules import LinearSchedule
from diffusion.data.datamodule import IndexedTensors, SpriteDataModule
from diffusion.data.procedural import CLASSES
from diffusion.tools.throughput.measure import (
    DDPM_LEVELS,
    LIGHTNING_PRECISION,
    WARMUP_STEPS,
    Contender,
    Stopwatch,
    autocast,
    fresh_module,
    run_chunk,
    warm_up,
)
from diffusion.training.builders import apply_speed_options


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
            loss = DenoisingLoss.at(module.denoiser, x0, sigma, noise, y).mean()
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
            enable_checkpointing=False,  # a bare Trainer's switches, as in tests/test_fid.py (shape only)
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
