"""What every logger learns about a run: its config, code, data and seed; one W&B run per job; a metric history.

``run_hparams`` flattens the resolved config (``optimizer.lr``, ``schedule._target_: LinearSchedule``) and adds
the parameter count, the git commit, the data set's size and fingerprint. ``RunTracker`` hands them to every
logger when training starts, keeps ``history.jsonl`` (the metrics the plots need, whatever the loggers) and the
W&B summary of ``val/fid`` (its minimum and the step of it). ``prepare_wandb`` names the W&B run of a job from
its overrides, groups a sweep's jobs and keeps the run id in the run directory, so that a resumed run continues
the same W&B run; ``finish_run`` writes the final figures (TensorBoard's HParams table, W&B images and summary).
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

WANDB_RUN_FILE = "wandb_run.json"
HISTORY_FILE = "history.jsonl"
# The figures TensorBoard's HParams table shows beside the hyperparameters of each trial.
FINAL_METRICS = ("val/fid", "val/fid_best", "val/loss")


# -- what a run is ---------------------------------------------------------------------------------------------
def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as {"optimizer.lr": 0.001, "schedule._target_": "LinearSchedule", ...}: one level, so
    every logger shows and compares it the same way; lists become strings and class paths their class name."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif prefix.endswith(("_target_", ".fn")) and isinstance(node, str):
            flat[prefix] = node.rsplit(".", 1)[-1]
        elif node is None or isinstance(node, (bool, int, float, str)):
            flat[prefix] = node
        else:
            flat[prefix] = str(node)

    walk(resolved(cfg), "")
    return flat


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain containers, interpolations resolved; outside a Hydra app (a config composed in a
    notebook or test) ``${hydra:...}`` cannot resolve, and the config is kept as written."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - omegaconf raises several error types for an unresolvable interpolation
        container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    return container


def git_state(path: Path = Path(__file__).resolve().parents[2]) -> dict[str, Any]:
    """The commit of the code that ran and whether the tree had uncommitted changes ("unknown" outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"run.git_commit": "unknown", "run.git_dirty": "unknown"}
    if commit.returncode != 0:
        return {"run.git_commit": "unknown", "run.git_dirty": "unknown"}
    return {"run.git_commit": commit.stdout.strip(), "run.git_dirty": bool(status.stdout.strip())}


def data_fingerprint(datamodule) -> dict[str, Any]:
    """Image counts and a SHA-1 of the images and labels of both splits: two runs with the same fingerprint
    trained and were validated on the same bytes."""
    digest, sizes = hashlib.sha1(), {}
    for split in ("train", "val"):
        dataset = getattr(datamodule, f"{split}_set", None)
        tensors = dataset.tensors if dataset is not None else ()
        sizes[split] = len(tensors[0]) if tensors else 0
        for tensor in tensors:
            digest.update(tensor.contiguous().numpy().tobytes())
    return {"run.data_train_images": sizes["train"], "run.data_val_images": sizes["val"], "run.data_fingerprint": digest.hexdigest()[:16]}


def run_hparams(cfg: DictConfig, module: L.LightningModule, datamodule) -> dict[str, Any]:
    params = sum(p.numel() for p in module.parameters())
    return {**flat_config(cfg), "run.parameters": params, **git_state(), **data_fingerprint(datamodule)}


# -- W&B: one run per job --------------------------------------------------------------------------------------
def _swept_keys() -> set[str]:
    """The keys a Hydra sweep varies: those of the command line written as sweeps (``lr=1,2``, ``choice(...)``)
    and those of the sweeper's search space (Optuna's ``hydra.sweeper.params``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_cfg = HydraConfig.get()
    keys = set((hydra_cfg.sweeper.get("params") or {}).keys())
    arguments = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
    try:
        keys |= {o.get_key_element() for o in OverridesParser.create().parse_overrides(arguments) if o.is_sweep_override()}
    except Exception:  # noqa: BLE001 - argv of a caller other than Hydra's command line: no swept keys
        pass
    return {k.lstrip("+~") for k in keys}


def job_identity() -> dict[str, Any]:
    """W&B name and group of the current Hydra job: in a sweep, the swept overrides and the study (Optuna) or
    sweep directory; in a single run, its overrides (paths left out) and no group."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {"name": None, "group": None}
    hydra_cfg = HydraConfig.get()
    overrides = [o for o in hydra_cfg.overrides.task if "=" in o]
    if hydra_cfg.mode == RunMode.MULTIRUN:
        swept = _swept_keys()
        parts = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in swept] or [f"job {hydra_cfg.job.num}"]
        group = hydra_cfg.sweeper.get("study_name") or str(hydra_cfg.sweep.dir)
    else:
        parts = [o for o in overrides if not o.split("=", 1)[0].endswith(("dir", "ckpt_path")) and not o.startswith("hydra.")]
        group = None
    return {"name": ",".join(parts)[:128] or None, "group": group}


def prepare_wandb(cfg: DictConfig, run_dir: Path) -> None:
    """Fill in the W&B logger's identity before it is built: a run id kept in ``<run dir>/wandb_run.json`` (a
    resumed run continues it, ``resume="allow"``), the name and group of the job, the run's ``tags``."""
    for node in (cfg.get("logger") or {}).values():
        if node is None or not str(node.get("_target_", "")).endswith("WandbLogger"):
            continue
        record_path = run_dir / WANDB_RUN_FILE
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        identity = job_identity()
        with open_dict(node):
            if not record.get("id"):
                # W&B's own id form: 8 lowercase letters and digits
                record["id"] = node.get("id") or "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
            node.id, node.resume = record["id"], "allow"
            node.name = node.get("name") or record.get("name") or identity["name"]
            node.group = node.get("group") or record.get("group") or identity["group"]
            node.tags = list(node.get("tags") or cfg.get("tags") or [])
        record.update(id=node.id, project=node.get("project"), name=node.name, group=node.group, dir=str(run_dir))
        if rank_zero_only.rank == 0:  # one writer; every rank of a DDP run reads the same id once it exists
            run_dir.mkdir(parents=True, exist_ok=True)
            record_path.write_text(json.dumps(record, indent=2) + "\n")


def finish_wandb(exit_code: int = 0) -> None:
    """Close the W&B run of the job that ends, so the next job of a sweep starts its own run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def _wandb_runs(trainer: L.Trainer) -> list:
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, WandbLogger)]


# -- during training ---------------------------------------------------------------------------------------
class RunTracker(L.Callback):
    """Hands ``hparams`` to every logger when training starts, appends the losses and ``val/fid`` to
    ``<run_dir>/history.jsonl`` (read by ``evaluation.plots``, so plots need no particular logger), and keeps
    W&B's ``val/fid_best_step`` beside its ``val/fid`` minimum. A resumed run first drops the history lines past
    its checkpoint's step, so no step appears twice.

    Every logger receives a validation's figures at ``trainer.global_step``, the step of ``fid.json``,
    ``history.jsonl`` and the grids' file names. Lightning would log them at its count of batches stepped, which
    a validation inside a training epoch reads before it counts the optimizer step just taken (one step lower);
    a logged ``step`` metric is the step Lightning's ``_LoggerConnector.log_metrics`` hands every logger instead
    (with ``epoch``, which it then no longer adds), so the figures land at the right step in any logger."""

    def __init__(self, hparams: dict[str, Any], run_dir: str | Path):
        self.hparams, self.run_dir = hparams, Path(run_dir)
        self.best: tuple[float, int] | None = None
        self.validated_at: int | None = None  # a resumed run validates its checkpoint's step again: kept once
        self.resumed_step = 0

    @property
    def history_path(self) -> Path:
        return self.run_dir / HISTORY_FILE

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.resumed_step = int(checkpoint.get("global_step", 0))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Before Lightning writes the loggers' hparams.yaml (after on_fit_start), so the files hold them too.
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and self.resumed_step and logger._experiment is None:
                # TensorBoard's own answer to a resumed run: events an interrupted process wrote past the checkpoint
                # are dropped on reading (SummaryWriter's purge_step), so no step shows twice.
                logger._kwargs["purge_step"] = self.resumed_step
        for logger in trainer.loggers:
            logger.log_hyperparams(self.hparams)
        for run in _wandb_runs(trainer):
            run.define_metric("val/fid", summary="min", step_metric="trainer/global_step", step_sync=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The step of a resumed checkpoint is restored by now (it is not yet at on_fit_start).
        if trainer.is_global_zero and self.history_path.is_file():
            lines = self.history_path.read_text().splitlines()
            kept = [json.loads(line) for line in lines if line.strip()]
            kept = [entry for entry in kept if entry["step"] <= trainer.global_step]
            self.history_path.write_text("".join(json.dumps(entry) + "\n" for entry in kept))
            self.validated_at = max((e["step"] for e in kept if "val/loss" in e or "val/fid" in e), default=None)

    def _append(self, entry: dict[str, Any]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.history_path.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def _scalars(self, trainer: L.Trainer, names: tuple[str, ...]) -> dict[str, float]:
        found = {}
        for name in names:
            value = trainer.callback_metrics.get(name)
            if value is not None and value.numel() == 1 and math.isfinite(float(value)):
                found[name.removesuffix("_step").removesuffix("_epoch")] = float(value)
        return found

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            for key, value in (("step", trainer.global_step), ("epoch", trainer.current_epoch)):
                pl_module.log(key, float(value), sync_dist=True)  # the same on every rank; synced, so no warning

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        # The validation's step and epoch would stay in callback_metrics, where ModelCheckpoint takes them for
        # the step and epoch of every later checkpoint's file name.
        for key in ("step", "epoch"):
            trainer.callback_metrics.pop(key, None)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.is_global_zero and trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            found = self._scalars(trainer, ("train/loss", "train/loss_step"))
            if found:
                self._append({"step": trainer.global_step, **found})

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.validated_at == trainer.global_step:
            return
        self.validated_at = trainer.global_step
        entry = {"step": trainer.global_step, **self._scalars(trainer, ("val/loss", "val/loss_epoch"))}
        fid = self._fid_measured_now(trainer)
        if fid is not None:
            entry["val/fid"] = fid
            if self.best is None or fid < self.best[0]:
                self.best = (fid, trainer.global_step)
                for run in _wandb_runs(trainer):
                    run.summary["val/fid_best_step"] = self.best[1]
        if len(entry) > 1:
            self._append(entry)

    @staticmethod
    def _fid_measured_now(trainer: L.Trainer) -> float | None:
        """``val/fid`` when the FID callback measured it in this validation (its history ends at this step)."""
        for callback in trainer.callbacks:
            history = getattr(callback, "history", None)
            if history and history[-1].get("step") == trainer.global_step and history[-1].get("fid") is not None:
                return float(history[-1]["fid"])
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = tuple(state_dict["best"]) if state_dict.get("best") else None


# -- at the end ------------------------------------------------------------------------------------------------
def finish_run(trainer: L.Trainer, metrics: dict[str, Any], run_dir: Path, artifact: bool = False) -> None:
    """Final figures for the dashboards: TensorBoard's HParams session (hyperparameters with ``val/fid``, its
    best and ``val/loss``), the W&B summary, the final sample grid and, when asked, the safetensors export as a
    W&B artifact. Rank zero only."""
    tracker = next((cb for cb in trainer.callbacks if isinstance(cb, RunTracker)), None)
    final = {k: float(metrics[k]) for k in ("val/fid", "val/loss") if isinstance(metrics.get(k), (int, float))}
    if tracker is not None and tracker.best is not None:
        final["val/fid_best"], best_step = tracker.best
    step = trainer.global_step
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and final:
            _tensorboard_session(logger, final, step)
    grid = run_dir / "samples" / "final.png"
    for logger in trainer.loggers:
        if not isinstance(logger, WandbLogger):
            continue
        if grid.is_file():
            logger.log_image(key="samples/final", images=[str(grid)], step=step)
        run = logger.experiment
        if tracker is not None and tracker.best is not None:
            run.summary["val/fid_best_step"] = best_step
        export = run_dir / "checkpoints" / "final.safetensors"
        if artifact and export.is_file():
            import wandb

            model = wandb.Artifact(f"model-{run.id}", type="model", metadata={k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            model.add_file(str(export))
            run.log_artifact(model, aliases=["final"])


def _tensorboard_session(logger: TensorBoardLogger, final: dict[str, float], step: int) -> None:
    """One HParams session: the run's hyperparameters and the tags of its final figures. ``val/fid`` and
    ``val/loss`` are curves already written; only ``val/fid_best`` is a new scalar, so no step is written twice
    (Lightning's ``log_hyperparams(params, metrics)`` would log every metric again)."""
    from lightning.fabric.utilities.logger import _flatten_dict
    from torch.utils.tensorboard.summary import hparams

    params = logger._sanitize_params(_flatten_dict(dict(logger.hparams)))  # lists as strings, as Lightning logs them
    experiment, start, end = hparams(params, final)
    writer = logger.experiment._get_file_writer()
    for summary in (experiment, start, end):
        writer.add_summary(summary, step)
    if "val/fid_best" in final:
        logger.experiment.add_scalar("val/fid_best", final["val/fid_best"], step)
    logger.experiment.flush()
