"""Exact resumption: a run killed and resumed from any checkpoint ends bit for bit where the run left alone ends.

What a checkpoint must carry for that, and where each part lives:

* the weights, the EMA and post-hoc EMA averages, the optimizer and learning-rate schedule: Lightning's checkpoint
  and the callbacks' ``state_dict``;
* the data order's position in the epoch: ``data.datamodule.ResumableLoader`` (Lightning's stateful-loader hook);
* every random draw of a training step (noise levels, noise, label dropout, dropout inside the network, and the
  data module's flips, drawn from their own (seed, epoch, batch, rank)): ``StepSeeds`` reseeds the global generators
  of torch (the CPU's and this process's GPU's), numpy and Python at the start of each batch from
  ``derive_seed(seed, step, rank, micro-batch)``, so the generators' state at any step is a function of what the
  checkpoint holds (the run's seed in its config, the step, the process count) instead of the history of the
  process. Draws outside training steps (validation, FID, grids) cannot shift the next step;
* the cadences' counters (grids, FID): the callbacks' ``state_dict``;
* a checkpoint is written when its step is complete: after the step's validation, grids and FID where one runs
  (``validation_follows``), so a resumed run neither repeats nor skips them.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.types import _Stateful

from diffusion.core.errors import warn_inexact_resume
from diffusion.core.seeds import TRAIN_STEP, derive_seed

RECORD = "exact_resume"  # the checkpoint key of StepSeeds' record


def seed_step(seed: int, step: int, rank: int, micro_batch: int = 0) -> None:
    """Seed every global generator for one training batch of one process: the ``micro_batch``-th of the optimizer
    step ``step`` (gradient accumulation: each batch of a step draws its own noise).

    The generators are seeded directly (the CPU's, this process's CUDA device's): ``torch.manual_seed`` also walks
    every other backend, which cost ~0.3 ms a step. torch's CPU generator and numpy's take the seed's low 32 bits
    (MT19937): two (step, rank) pairs share a stream with probability ~ pairs^2 / 2^33, negligible below 10^5 of
    them; CUDA's Philox takes all 64."""
    value = derive_seed(seed, TRAIN_STEP, step, rank, micro_batch)
    torch.default_generator.manual_seed(value)
    if torch.cuda.is_initialized():
        torch.cuda.default_generators[torch.cuda.current_device()].manual_seed(value)
    elif torch.backends.mps.is_available():
        torch.mps.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


def validation_follows(trainer: L.Trainer) -> bool:
    """Whether Lightning validates right after the current training batch (called from ``on_train_batch_end``).

    Lightning's own decision (``_TrainingEpochLoop._should_check_val_fx``, private): a copy of its rules
    (val_check_interval counted across epochs or in the epoch, last batch, early stopping) would drift from it."""
    loop = trainer.fit_loop.epoch_loop
    try:
        return bool(loop._should_check_val_fx(trainer.fit_loop._data_fetcher))
    except AttributeError:  # another Lightning: the step's checkpoint is then written before its validation
        if not getattr(validation_follows, "warned", False):
            validation_follows.warned = True
            warn_inexact_resume("this Lightning has no _should_check_val_fx: checkpoints are written before their "
                                "step's validation, so a resumed run skips it (pin lightning as requirements.txt does)",
                                trainer.global_rank)
        return False


def match_callback_states(checkpoint: dict[str, Any], callbacks: list[L.Callback]) -> None:
    """Give a callback its state stored under an older key: a checkpoint names each callback's state by the
    callback's ``state_key`` (class name and settings), and a key that changed between versions (``StepCheckpoint``
    was keyed by its resolved interval before this change) would leave the state behind with Lightning's warning.
    A stored key is renamed when exactly one callback of its class has no state of its own in the checkpoint."""
    states = checkpoint.get("callbacks")
    if not states:
        return
    for callback in callbacks:
        claim = getattr(callback, "claim_old_states", None)
        if claim is not None:  # a callback that replaced several older ones takes their states itself (FIDCallback)
            claim(states)
        key, name = callback.state_key, type(callback).__name__
        if key in states:
            continue
        orphans = [k for k in states if isinstance(k, str) and k.split("{", 1)[0] == name
                   and k not in {cb.state_key for cb in callbacks}]
        if len(orphans) == 1 and sum(type(cb).__name__ == name for cb in callbacks) == 1:
            states[key] = states.pop(orphans[0])


class StepSeeds(L.Callback):
    """Reseed the global generators at the start of every training step from (seed, step, rank), and keep the
    record a resume checks: a checkpoint without it (written before exact resumption) or from another number of
    processes resumes with one warning line saying why it cannot be exact."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.restored = False  # set by a resume: the first step then checks the loggers' step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning gives the checkpoint's loader state to the training loader when it builds it after restoring
        # the loops; `estimated_stepping_batches` (asked by the LR schedule and the cadences when max_epochs is set)
        # builds it earlier, during set-up, and the state is then never given. Given now, it still takes effect:
        # ShardedBatches.__iter__ is a generator whose body runs at the epoch's first batch, and Lightning does not
        # prefetch from a loader with a length (a no-op where Lightning gave it, or on a fresh start).
        loop = trainer.fit_loop
        if getattr(loop, "_combined_loader_states_to_load", None):
            loop._load_combined_loader_states()
        loaders = loop._combined_loader.flattened if loop._combined_loader is not None else []
        if trainer.ckpt_path is not None and not all(isinstance(dl, _Stateful) for dl in loaders):
            warn_inexact_resume("the training loader keeps no position in its epoch (a data module other than the "
                                "framework's): the resumed epoch starts again from its first batch", trainer.global_rank)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        seed_step(self.seed, trainer.global_step, trainer.global_rank, batch_idx % trainer.accumulate_grad_batches)
        if self.restored:
            self.restored = False
            # The loggers' step (Lightning's `_batches_that_stepped`) is raised after a step's validation; a checkpoint
            # written at the end of that validation holds it one short, and Lightning adds the one back only where
            # the checkpoint was written in `on_train_batch_end`. It is never below the optimizer steps taken.
            loop = trainer.fit_loop.epoch_loop
            loop._batches_that_stepped = max(loop._batches_that_stepped, trainer.global_step)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[RECORD] = {"version": 1, "seed": self.seed, "world_size": trainer.world_size}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.restored = True
        record = checkpoint.get(RECORD)
        rank = trainer.global_rank
        if record is None:
            warn_inexact_resume("the checkpoint was written before exact resumption (no random-generator or data-order "
                                "state); training goes on from its weights and step with fresh draws", rank)
        elif record["world_size"] != trainer.world_size:
            warn_inexact_resume(f"it was written by {record['world_size']} processes and resumes on {trainer.world_size}: "
                                "each process draws other noise and takes other images", rank)
        elif record["seed"] != self.seed:
            warn_inexact_resume(f"it was written with seed={record['seed']} and resumes with seed={self.seed}; "
                                f"resume with seed={record['seed']}", rank)
