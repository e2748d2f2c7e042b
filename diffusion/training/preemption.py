"""Saving a checkpoint when a cluster pre-empts the job (SIGTERM) instead of losing the work since the last one."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint, WeightAveraging
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from diffusion.training.resume import validation_follows


class SaveOnSigterm(L.Callback):
    """On SIGTERM, write ``last.ckpt`` (atomically, through Lightning) before the process exits.

    Lightning turns SIGTERM into a ``SIGTERMException`` at the next batch boundary, on every rank;
    every rank then reaches this hook, as ``save_checkpoint`` needs. If the signal came during
    validation, the EMA callback has the averaged weights swapped into the model: they are swapped
    back first, or the checkpoint would store the average as the raw weights.
    """

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        if trainer.validating or trainer.sanity_checking:
            for callback in trainer.callbacks:
                if isinstance(callback, WeightAveraging) and callback._average_model is not None:
                    callback._swap_models(pl_module)
        checkpoint = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)), None)
        directory = Path(checkpoint.dirpath) if checkpoint is not None and checkpoint.dirpath else Path(trainer.default_root_dir) / "checkpoints"
        path = directory / "last.ckpt"
        trainer.save_checkpoint(path)
        rank_zero_info(f"SIGTERM: saved {path} at step {trainer.global_step}; resume with ckpt_path=last")


class RequeueAtStepEnd(Checkpoint):
    """Lightning's SLURM auto-requeue (on the requeue signal, SIGUSR1 by default: write ``hpc_ckpt_N.ckpt`` and call
    ``scontrol requeue``), done when the step under way is complete instead of wherever the signal lands.

    Lightning's own handler saves inside the signal handler: in the middle of an optimizer step, before the
    EMA's update or the step's validation, so the resumed run could not be the same run. This callback takes
    the signal first (Lightning leaves a signal that already has a handler alone), and calls Lightning's
    handler at the end of the step: after the EMA's update (checkpoint callbacks run after every other
    callback) and after the step's validation where one follows. Every process takes the decision together
    (one process may get the signal first), as the checkpoint's barrier needs.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: Any = None
        self._installed: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        environment = trainer._accelerator_connector.cluster_environment
        requeue = isinstance(environment, SLURMEnvironment) and environment.auto_requeue and stage == "fit"
        if requeue and hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
            self._installed = environment.requeue_signal or signal.SIGUSR1
            self._previous = signal.signal(self._installed, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        if self._installed is not None and not validation_follows(trainer):
            self._requeue_if_asked(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._installed is not None and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._requeue_if_asked(trainer)

    def _requeue_if_asked(self, trainer: L.Trainer) -> None:
        if trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False):
            signum, self.signum = self.signum or self._installed, None
            trainer._signal_connector._slurm_sigusr_handler_fn(signum, None)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._installed is not None and threading.current_thread() is threading.main_thread():
            signal.signal(self._installed, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = None
