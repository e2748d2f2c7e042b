"""Training callbacks: sample grids over the run, checkpoints on a step cadence, a progress bar for step-counted runs."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only

from diffusion.core.labels import class_cycle
from diffusion.core.sampling import Sampler
from diffusion.data import images
from diffusion.training.cadence import Cadence
from diffusion.training.module import DiffusionModule
from diffusion.training.precision import callback_bf16
from diffusion.training.resume import validation_follows


class SampleGrid(L.Callback):
    """At validations, every ``every_n_steps`` training steps or ``fraction`` of the run (and at the last
    step), sample a grid with a fixed seed (so grids over the run are comparable) and save it as
    ``<dirpath>/step_XXXXXXX.png``; the grids are also logged as images.

    Runs during validation, after Lightning's weight-averaging callback has swapped in the EMA
    weights: ``train.py`` puts that callback last so that the swap back happens after this one.
    """

    def __init__(
        self,
        dirpath: str,
        sampler: Sampler,
        n: int = 64,
        every_n_steps: int | None = None,
        fraction: float | None = 0.2,
        seed: int = 0,
        scale: int = 4,
        precision: str = "trainer",
    ):
        callback_bf16(precision, "32", "callbacks.sample_grid")  # a bad value fails here, not mid-run
        self.dirpath, self.sampler, self.n, self.precision = Path(dirpath), sampler, n, precision
        self.cadence = Cadence(every_n_steps, fraction, "callbacks.sample_grid")
        self.seed, self.scale = seed, scale

    def on_train_start(self, trainer: L.Trainer, pl_module: DiffusionModule) -> None:
        self.cadence.start(trainer)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: DiffusionModule) -> None:
        if not self.cadence.due(trainer):
            return
        self.cadence.done(trainer)
        self._sample(trainer, pl_module, trainer.global_step)

    def state_dict(self) -> dict:
        return {"cadence": self.cadence.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if "cadence" in state_dict:
            self.cadence.load_state_dict(state_dict["cadence"])

    @rank_zero_only
    def _sample(self, trainer: L.Trainer, pl_module: DiffusionModule, step: int) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        labels = class_cycle(self.n, pl_module.num_classes)
        bf16 = callback_bf16(self.precision, getattr(trainer, "precision", "32-true"), "callbacks.sample_grid")
        x = pl_module.sample(self.n, labels=labels, sampler=self.sampler, generator=generator, bf16=bf16)
        picture = images.grid(images.to_uint8(x), ncols=8, scale=self.scale)
        images.save_png(picture, self.dirpath / f"step_{step:07d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", picture, trainer.global_step, dataformats="HWC")
            elif hasattr(logger, "log_image"):
                logger.log_image(key="samples", images=[picture], step=trainer.global_step)


class StepCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` every ``every_n_steps`` training steps or ``fraction`` of the run, and
    at the last step (so a finished run's ``last.ckpt`` holds its final step, even mid-interval).

    A checkpoint holds a whole step: when Lightning validates after the step (grids, FID, best checkpoints),
    it is written at the end of that validation rather than before it, so a run resumed from it neither skips
    nor repeats them (``training.resume``).

    Configured as ``save_top_k=0, save_last=True`` it keeps ``last.ckpt`` alone: the disk holds one file
    however long the run. ``save_top_k=-1`` keeps every one as well (``filename``, e.g. ``step_{step:07d}``).
    """

    def __init__(self, *args, every_n_steps: int | None = None, fraction: float | None = 0.1, **kwargs):
        self.cadence = Cadence(every_n_steps, fraction, "callbacks.checkpoint")
        # A placeholder interval (set when training starts) that tells Lightning "by steps, not epochs".
        super().__init__(*args, every_n_train_steps=0 if self.cadence.off else 1, every_n_epochs=0, **kwargs)
        self._after_validation = False  # a save due at this step waits for the step's validation

    @property
    def state_key(self) -> str:
        # Named by the configured cadence, not by the interval resolved when training starts (Lightning's key): a
        # resumed run looks its state up before that, and would not find it under the resolved interval.
        return self._generate_state_key(monitor=self.monitor, mode=self.mode, every_n_steps=self.cadence.every_n_steps,
                                        fraction=self.cadence.fraction)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if not self.cadence.off:
            self.cadence.start(trainer)
            self._every_n_train_steps = self.cadence.every

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args, **kwargs) -> None:
        if self.cadence.off or self._should_skip_saving_checkpoint(trainer):
            return
        last = trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step
        if not (last or trainer.global_step % self._every_n_train_steps == 0):
            return
        if validation_follows(trainer):
            self._after_validation = True
        else:
            self._save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._after_validation and not trainer.sanity_checking and trainer.state.fn == TrainerFn.FITTING:
            self._after_validation = False
            self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.fast_dev_run:  # Lightning's save_last at the end ignores fast_dev_run's "no checkpoints"
            super().on_train_end(trainer, pl_module)


class BestCheckpoints(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` keeping the ``save_top_k`` best by ``monitor`` (``val/fid``) among the
    validations that measured it. FID is measured at some validations only: Lightning would rank the
    weights of the others by the last FID logged (a figure of other weights), or fail where FID is off
    for the run; here a validation that did not log the monitored figure saves nothing."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("save_on_train_epoch_end", False)  # at validation end, beside the fresh figure
        super().__init__(*args, **kwargs)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # trainer.callback_metrics keeps every figure ever logged: forget the last one, so that only a
        # figure logged by this validation is seen at its end.
        if self.monitor is not None:
            trainer.callback_metrics.pop(self.monitor, None)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.monitor is None or self.monitor in trainer.callback_metrics:
            super().on_validation_end(trainer, pl_module)


class StepProgressBar(RichProgressBar):
    """Rich's progress bar for runs counted in steps: ``Epoch 12/89`` with the last epoch that
    ``trainer.max_steps`` reaches, where Lightning writes ``Epoch 12/-2`` for ``max_epochs=-1``."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        per_epoch = trainer.num_training_batches
        if trainer.max_steps and trainer.max_steps > 0 and per_epoch and math.isfinite(per_epoch):
            last = math.ceil(trainer.max_steps / math.ceil(per_epoch / trainer.accumulate_grad_batches)) - 1
            if trainer.max_epochs is not None and trainer.max_epochs > 0:
                last = min(last, trainer.max_epochs - 1)
            description = f"Epoch {current_epoch}/{last}"
        elif trainer.max_epochs is not None and trainer.max_epochs > 0:
            description = f"Epoch {current_epoch}/{trainer.max_epochs - 1}"
        else:
            description = f"Epoch {current_epoch}"
        return f"{description:{len(self.validation_description)}}"
