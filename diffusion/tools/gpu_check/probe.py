"""The callback ``gpu_check`` adds to its training runs (``+callbacks.gpu_probe``): what each rank ended with, when
its steps ended, and a pause at a chosen step so that the check can kill the run at a known point.

Not part of a normal run; it only writes into the folder it is given.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import lightning as L
import torch


class RankProbe(L.Callback):
    """Every rank writes ``<out>/rank<R>.pt``: the module's weights at the end of fit (by then Lightning's
    weight-averaging callback has copied the EMA average into the module, ``EMAWeightAveraging.on_train_end``)
    the wall-clock time at which each optimizer step ended, and a digest of each step's images (which data it
    trained on: where a resumed run parts from the uninterrupted one).

    ``pause_at_step``: at the start of the training batch after optimizer step N (a checkpoint written at step N
    is complete by then: Lightning saves it in the previous batch's end hooks, on rank 0, then barriers), each rank
    writes ``<out>/paused_rank<R>`` and waits; the check then kills the process group with SIGKILL, a crash at a
    point it knows.
    """

    def __init__(self, out: str, pause_at_step: int | None = None):
        self.out, self.pause_at_step = Path(out), pause_at_step
        self.step_ends: list[tuple[int, float]] = []
        self.batches: list[tuple[int, str]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.batches.append((trainer.global_step, hashlib.sha1(batch[0].detach().cpu().numpy().tobytes()).hexdigest()))
        if self.pause_at_step is not None and trainer.global_step == self.pause_at_step:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / f"paused_rank{trainer.global_rank}").touch()
            while True:  # until the check's SIGKILL
                time.sleep(1)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # the step's kernels finished, not only queued
        self.step_ends.append((trainer.global_step, time.perf_counter()))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        record = {"world_size": trainer.world_size, "weights": weights, "step_ends": self.step_ends, "batches": self.batches}
        torch.save(record, self.out / f"rank{trainer.global_rank}.pt")
