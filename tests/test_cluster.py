"""Cluster runs and cadences: ckpt_path=auto (a requeued SLURM job resumes), step-counted validation, grids,
FID and checkpoints that fit any data size, the progress bar of a step-counted run, and the `debug` group.

The requeue tests run the real ``python train.py`` twice in one run directory with the environment SLURM
gives a job (and gives it again, SLURM_RESTART_COUNT=1, on a requeue). What the two requeue paths rerun:

* hydra-submitit-launcher: its ``checkpoint`` hook returns ``DelayedSubmission(self, *args)``, the launcher's
  ``__call__`` with the same sweep overrides and job number; ``load_sweep_config`` copies the master config's
  resolver cache (``${now:}``), so the job runs again in the same ``hydra.sweep.dir``/subdir, with the same
  command-line config. That is the second process here.
* Lightning's SLURM auto-requeue: on SIGUSR1 ``_SignalConnector`` saves ``hpc_ckpt_N.ckpt`` in
  ``default_root_dir`` (the run directory) and calls ``scontrol requeue`` (absent here: Lightning logs the
  failure and trains on, as it would until SLURM stops the job); SLURM then kills the job and starts the same
  batch script again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import CONF_DIR, ROOT, SUBPROCESS_ENV, TINY_TRAIN, describe, run_script, write_sprites

from diffusion.core.errors import ConfigError
from diffusion.training.cadence import Cadence, crossed, interval
from diffusion.training.checkpoints import resolve_ckpt_path


def compose(overrides=(), hydra=False):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="test"):
        return hydra_compose(config_name="train", overrides=list(overrides), return_hydra_config=hydra)


def touch(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


# --------------------------------------------------------------------------------- ckpt_path=auto


def test_auto_resumes_from_the_newest_of_last_and_the_hpc_checkpoint(tmp_path):
    assert resolve_ckpt_path("auto", tmp_path) is None  # nothing yet: a fresh start
    last = touch(tmp_path / "checkpoints" / "last.ckpt", 1000)
    assert resolve_ckpt_path("auto", tmp_path) == last
    # Lightning numbers its hpc checkpoints 1, 2, ... and resumes from the highest (10 > 9, not "10" < "9")
    touch(tmp_path / "hpc_ckpt_9.ckpt", 2000)
    hpc = touch(tmp_path / "hpc_ckpt_10.ckpt", 2000)
    assert resolve_ckpt_path("auto", tmp_path) == hpc
    touch(last, 3000)  # SaveOnSigterm wrote last.ckpt after the requeue signal's hpc checkpoint
    assert resolve_ckpt_path("auto", tmp_path) == last
    assert resolve_ckpt_path("last", tmp_path) == last
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_ckpt_path("last", tmp_path / "elsewhere")


def test_run_directory_guard_lets_a_resuming_job_in(tmp_path):
    from omegaconf import OmegaConf

    from diffusion.tools.hydra_callbacks import RunDirectoryGuard

    run_dir = tmp_path / "run"
    config = lambda ckpt: OmegaConf.create({"hydra": {"run": {"dir": str(run_dir)}}, "ckpt_path": ckpt})  # noqa: E731
    RunDirectoryGuard().on_run_start(config("auto"))  # a fresh directory: start
    touch(run_dir / "checkpoints" / "best_0000010_fid_3.00.ckpt", 1000)
    for ckpt in ("auto", None):  # checkpoints but no last.ckpt to resume: refuse as for a fresh run
        with pytest.raises(SystemExit) as info:
            RunDirectoryGuard().on_run_start(config(ckpt))
        assert info.value.code == 2
    touch(run_dir / "hpc_ckpt_1.ckpt", 1000)
    RunDirectoryGuard().on_run_start(config("auto"))  # the requeued job resumes


def test_slurm_launcher_sets_ckpt_path_auto(monkeypatch):
    monkeypatch.delenv("DIFFUSION_CKPT_PATH", raising=False)
    cfg = compose(["hydra/launcher=slurm"], hydra=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert dict(cfg.hydra.job.env_set) == {"DIFFUSION_CKPT_PATH": "auto"}
    assert cfg.ckpt_path is None  # outside the job
    monkeypatch.setenv("DIFFUSION_CKPT_PATH", "auto")  # what run_job's env_set does around the job
    assert cfg.ckpt_path == "auto"
    assert compose(["ckpt_path=last"]).ckpt_path == "last"


# --------------------------------------------------------------------------------- cadences


def test_interval_from_steps_or_a_share_of_the_run():
    assert interval(None, 0.5, 1780, "x") == 890
    assert interval(None, 0.1, 4, "x") == 1  # never 0 steps: at least every step
    assert interval(250, 0.5, 1780, "x") == 250  # a fixed interval wins
    assert interval(0, 0.5, 1780, "x") == 0 and interval(None, 0, 1780, "x") == 0  # off
    with pytest.raises(ConfigError, match="x.fraction=1.5 must be a share"):
        interval(None, 1.5, 1780, "x")
    with pytest.raises(ConfigError, match="set trainer.max_steps"):
        interval(None, 0.5, -1, "x")
    assert [s for s in range(30, 181, 30) if crossed(s - 30, s, 50)] == [60, 120, 150]


def fake_trainer(step: int, max_steps: int, max_epochs: int = -1, epoch: int = 0):
    return SimpleNamespace(global_step=step, max_steps=max_steps, max_epochs=max_epochs, current_epoch=epoch,
                           sanity_checking=False, estimated_stepping_batches=max_steps)


def schedule(cadence: Cadence, checks: list[int], max_steps: int) -> list[int]:
    """The steps among ``checks`` (validations) at which the cadence fires."""
    cadence.start(fake_trainer(0, max_steps))
    fired = []
    for step in checks:
        trainer = fake_trainer(step, max_steps)
        if cadence.due(trainer):
            cadence.done(trainer)
            fired.append(step)
    return fired


def test_the_main_job_keeps_its_schedule_in_steps():
    """`make train`: 1,780 steps (4 epochs of the procedural sprites); validation every tenth, FID after
    the second and the fourth epoch's worth of steps, a grid every other validation."""
    from diffusion.training.cadence import apply_validation_cadence

    cfg = compose()
    assert cfg.trainer.max_steps == 1780 and cfg.trainer.max_epochs == -1
    apply_validation_cadence(cfg)
    assert cfg.trainer.val_check_interval == 178 and cfg.trainer.check_val_every_n_epoch is None
    validations = list(range(178, 1781, 178))
    fid = cfg.callbacks.fid
    assert schedule(Cadence(fid.every_n_steps, fid.fraction, "fid"), validations, 1780) == [890, 1780]
    grid = cfg.callbacks.sample_grid
    assert schedule(Cadence(grid.every_n_steps, grid.fraction, "grid"), validations, 1780) == validations[1::2]
    # A run whose length is not a multiple: the last step is always measured (train.py validates it).
    assert schedule(Cadence(None, 0.5, "fid"), [300, 600, 900, 1000], 1000) == [600, 1000]
    # Resumed at step 900 of 1,780: the next measurement is the run's last, not one at once.
    cadence = Cadence(None, 0.5, "fid")
    cadence.start(fake_trainer(900, 1780))
    assert [s for s in (1068, 1246, 1780) if cadence.due(fake_trainer(s, 1780))] == [1780]


def test_a_small_data_set_gets_the_same_number_of_events(tmp_path):
    """1,780 images at batch 100 are 16 steps an epoch: the cadences stay a share of the run, not of an epoch."""
    cfg = compose(["trainer.max_steps=1440"])
    from diffusion.training.cadence import apply_validation_cadence

    apply_validation_cadence(cfg)
    assert cfg.trainer.val_check_interval == 144
    validations = list(range(144, 1441, 144))
    assert schedule(Cadence(None, cfg.callbacks.fid.fraction, "fid"), validations, 1440) == [720, 1440]
    assert cfg.callbacks.checkpoint.save_top_k == 0 and cfg.callbacks.checkpoint.save_last  # last.ckpt only
    assert cfg.callbacks.best_checkpoints.monitor == "val/fid" and cfg.callbacks.best_checkpoints.save_top_k == 3


def test_progress_bar_counts_epochs_from_max_steps():
    from diffusion.training.callbacks import StepProgressBar

    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(max_steps=1440, max_epochs=-1, num_training_batches=16, accumulate_grad_batches=1)
    assert bar._get_train_description(12).strip() == "Epoch 12/89"
    bar._trainer = SimpleNamespace(max_steps=-1, max_epochs=4, num_training_batches=445, accumulate_grad_batches=1)
    assert bar._get_train_description(1).strip() == "Epoch 1/3"


# --------------------------------------------------------------------------------- debug


@pytest.mark.parametrize("option", ["default", "fdr", "overfit", "limit", "profiler"])
def test_every_debug_option_composes(option):
    cfg = compose([f"debug={option}"], hydra=True)
    assert cfg.hydra.run.dir.startswith("runs/debug/") and cfg.hydra.sweep.dir.startswith("multirun/debug/")
    assert cfg.callbacks.get("fid") is None  # no feature network trained or loaded
    assert cfg.sampler.steps <= 8 and cfg.final_samples.n <= 16  # a fast final grid
    assert cfg.optimized_metric == "val/loss"
    expected = {"fdr": ("fast_dev_run", True), "overfit": ("overfit_batches", 3), "limit": ("limit_train_batches", 10)}
    if option in expected:
        key, value = expected[option]
        assert cfg.trainer[key] == value
    if option == "profiler":
        assert cfg.trainer.profiler._target_.endswith("SimpleProfiler")


@pytest.mark.slow
def test_debug_fdr_runs_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_script("train.py", "debug=fdr", f"hydra.run.dir={run_dir}", *TINY_TRAIN[:4], tiny=False)
    assert proc.returncode == 0, describe(proc)
    assert (run_dir / "samples" / "final.png").is_file() and (run_dir / "checkpoints" / "final.safetensors").is_file()
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()  # fast_dev_run writes no checkpoints
    assert not (run_dir / "fid.json").exists() and "FID features" not in proc.stdout + proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 1 and "failed" not in metrics
    assert 0 <= metrics["time/outside_share"] <= 1 and metrics["time/total_s"] >= metrics["time/train_steps_s"] > 0


# --------------------------------------------------------------------------------- requeue

MAX_STEPS = 12
# 240 sprites, 20% held out: 6 steps of 32 an epoch; last.ckpt every 3 steps, validation every 6
REQUEUE_TRAIN = [
    *TINY_TRAIN,
    "data=sprites",
    "data.val_fraction=0.2",
    f"trainer.max_steps={MAX_STEPS}",
    "trainer.max_epochs=-1",
    "validation.every_n_steps=6",
    "callbacks.checkpoint.every_n_steps=3",
    "~callbacks.fid",
    "optimized_metric=val/loss",
    "ckpt_path=auto",
]
SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
             "SLURM_RESTART_COUNT": "0"}


def launch(tmp_path: Path, run_dir: Path, data_dir: Path, env: dict[str, str], fault: str | None = None):
    """train.py as the SLURM job; with ``fault``, paused at that moment (tests/test_faults.py's harness)."""
    from test_faults import HARNESS

    full = {**os.environ, **SUBPROCESS_ENV, **env}
    full.setdefault("DIFFUSION_ROOT", str(ROOT / ".cache" / "test-root"))
    control = tmp_path / f"control-{env['SLURM_RESTART_COUNT']}"
    if fault:
        (tmp_path / "harness").mkdir(exist_ok=True)
        (tmp_path / "harness" / "sitecustomize.py").write_text(HARNESS)
        control.mkdir()
        full.update(PYTHONPATH=os.pathsep.join([str(tmp_path / "harness"), str(ROOT)]), DIFFUSION_FAULT=fault,
                    DIFFUSION_FAULT_DIR=str(control))
    args = [sys.executable, str(ROOT / "train.py"), *REQUEUE_TRAIN, f"data.dir={data_dir}", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(args, cwd=ROOT, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, control


def wait_paused(proc, control: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not (control / "paused").exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the fault was never reached"
        time.sleep(0.05)


def finish(proc, timeout: float = 240) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def requeued(tmp_path: Path, run_dir: Path, data_dir: Path) -> tuple[int, str]:
    """The requeued job: the same command, SLURM's restart count raised."""
    proc, _ = launch(tmp_path, run_dir, data_dir, {**SLURM_ENV, "SLURM_RESTART_COUNT": "1"})
    return finish(proc)


def assert_finished(run_dir: Path) -> None:
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == MAX_STEPS
    assert int(last["optimizer_states"][0]["state"][0]["step"]) == MAX_STEPS  # Adam's updates behind the weights
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == MAX_STEPS
    assert (run_dir / "samples" / "final.npz").is_file()


@pytest.mark.slow
def test_a_requeued_job_resumes_after_sigterm(tmp_path):
    """Pre-emption: SIGTERM in a training step (SaveOnSigterm writes last.ckpt), then submitit's resubmission."""
    data_dir = write_sprites(tmp_path / "data", n=240)
    run_dir = tmp_path / "run"
    proc, control = launch(tmp_path, run_dir, data_dir, SLURM_ENV, fault="train_step:7")
    wait_paused(proc, control)
    proc.send_signal(signal.SIGTERM)
    (control / "go").touch()
    code, out = finish(proc)
    assert code == 128 + signal.SIGTERM, out[-3000:]
    code, out = requeued(tmp_path, run_dir, data_dir)
    assert code == 0, out[-3000:]
    assert f"Restoring states from the checkpoint path at {run_dir / 'checkpoints' / 'last.ckpt'}" in out, out[-3000:]
    assert_finished(run_dir)


@pytest.mark.slow
def test_a_lightning_auto_requeued_job_resumes_from_its_hpc_checkpoint(tmp_path):
    """Lightning's path: SIGUSR1 -> hpc_ckpt_1.ckpt (newer than last.ckpt), SLURM kills the job, then reruns it."""
    data_dir = write_sprites(tmp_path / "data", n=240)
    run_dir = tmp_path / "run"
    proc, control = launch(tmp_path, run_dir, data_dir, SLURM_ENV, fault="train_step:7")
    wait_paused(proc, control)
    proc.send_signal(signal.SIGUSR1)  # noted now, acted on when the step under way is done: the hpc checkpoint at step 8
    (control / "go").touch()
    deadline = time.monotonic() + 120
    while not (run_dir / "hpc_ckpt_1.ckpt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()  # SLURM ends the requeued job (Lightning writes through a temporary file: the name means complete)
    finish(proc)
    hpc = torch.load(run_dir / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)
    assert hpc["global_step"] == 8  # a whole step (training.preemption.RequeueAtStepEnd), not wherever the signal landed
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 6  # the interval checkpoint is older: the hpc one must be chosen
    code, out = requeued(tmp_path, run_dir, data_dir)
    assert code == 0, out[-3000:]
    assert f"Restoring states from the checkpoint path at {run_dir / 'hpc_ckpt_1.ckpt'}" in out, out[-3000:]
    assert_finished(run_dir)


@pytest.mark.slow
def test_a_killed_run_relaunched_with_ckpt_path_auto_matches_an_uninterrupted_one(tmp_path):
    """SIGTERM, then the identical command: both processes together do what one uninterrupted run does."""
    data_dir = write_sprites(tmp_path / "data", n=240)
    whole = tmp_path / "whole"
    proc, _ = launch(tmp_path, whole, data_dir, {"SLURM_RESTART_COUNT": "0"})
    code, out = finish(proc)
    assert code == 0, out[-3000:]
    assert "Restoring states" not in out  # auto on a fresh directory: a fresh start
    split = tmp_path / "split"
    proc, control = launch(tmp_path, split, data_dir, {"SLURM_RESTART_COUNT": "1"}, fault="train_step:6")
    wait_paused(proc, control)
    proc.send_signal(signal.SIGTERM)
    (control / "go").touch()
    assert finish(proc)[0] == 128 + signal.SIGTERM
    proc, _ = launch(tmp_path, split, data_dir, {"SLURM_RESTART_COUNT": "2"})
    code, out = finish(proc)
    assert code == 0, out[-3000:]
    assert_finished(whole)
    assert_finished(split)
    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((split / "metrics.json").read_text())
    assert a.keys() == b.keys() and a["step"] == b["step"] == MAX_STEPS and a["epoch"] == b["epoch"]
