"""Saving a checkpoint when a cluster pre-empts the job (SIGTERM) instead of losing the work since the last one."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException


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
