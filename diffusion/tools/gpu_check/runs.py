"""The training runs of the GPU check: the real ``train.py`` as subprocesses with Hydra overrides, whole, or
killed with SIGKILL right after a mid-run checkpoint and resumed with ``ckpt_path=auto`` in the same directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffusion.core.errors import ConfigError
from diffusion.training.checkpoints import load_checkpoint

ROOT = Path(__file__).resolve().parents[3]
PROBE = "diffusion.tools.gpu_check.probe.RankProbe"


@dataclass
class Plan:
    """One training job, the same for every run of the check."""

    processes: int
    accelerator: str  # gpu | cpu
    precision: str
    steps: int
    batch_size: int
    checkpoint_every: int
    compile: bool = False
    extra: list[str] = field(default_factory=list)  # the user's own overrides, last so that they win

    def hardware(self) -> list[str]:
        """What puts any run of the check on its processes and precision, with plain logs (the distil check's too)."""
        return [
            "trainer=ddp",
            f"trainer.accelerator={self.accelerator}",
            f"trainer.devices={self.processes}",
            f"trainer.precision={self.precision}",
            "+trainer.enable_progress_bar=false",
            "~callbacks.progress",
            "logger=csv",
        ]

    def overrides(self) -> list[str]:
        """The short run of the repeat, ema, resume and fid checks."""
        return [
            *self.hardware(),
            f"trainer.max_steps={self.steps}",
            "trainer.max_epochs=-1",
            # Same inputs, same bits: torch's deterministic kernels (warn, not fail, where an op has none: the
            # repeat check then shows whether the bits differ).
            "trainer.deterministic=warn",
            f"data.batch_size={self.batch_size}",
            f"callbacks.checkpoint.every_n_steps={self.checkpoint_every}",
            "callbacks.sample_grid.every_n_steps=0",
            "callbacks.fid.every_n_steps=0",  # measured on its own (the FID check), from the final checkpoint
            "validation.fraction=1",
            "final_samples.n=8",
            "optimized_metric=val/loss",
            f"training.compile={str(self.compile).lower()}",
            *self.extra,
        ]


def environment(plan: Plan) -> dict[str, str]:
    env = dict(os.environ)
    env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # cuBLAS's deterministic mode (torch.use_deterministic_algorithms)
    if plan.accelerator == "cpu" and "OMP_NUM_THREADS" not in env:
        # The processes share the cores: more threads than cores make every op wait at OpenMP barriers.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // plan.processes))
    return env


class Failed(RuntimeError):
    """A run did not end as the check needs; the message says how, with the log's tail."""


def _launch(plan: Plan, run_dir: Path, probe_dir: Path, log: Path, extra: list[str]) -> subprocess.Popen:
    args = [sys.executable, str(ROOT / "train.py"), *plan.overrides(), f"hydra.run.dir={run_dir}",
            f"+callbacks.gpu_probe._target_={PROBE}", f"+callbacks.gpu_probe.out={probe_dir}", *extra]
    with open(log, "a") as out:
        out.write("$ " + " ".join(args) + "\n")
        out.flush()
        # A session of its own: SIGKILL reaches every rank (Lightning's launcher starts ranks 1.. as children).
        return subprocess.Popen(args, cwd=ROOT, env=environment(plan), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:]


def wait(proc: subprocess.Popen, log: Path, timeout: float, what: str = "train.py") -> None:
    """The process (started in a session of its own) to its end; past ``timeout`` its whole group is killed."""
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise Failed(f"{what} ran past {timeout:.0f} s; log {log}:\n{_tail(log)}") from None
    if code != 0:
        raise Failed(f"{what} exited with status {code}; log {log}:\n{_tail(log)}")


def run_whole(plan: Plan, run_dir: Path, timeout: float) -> Path:
    """One uninterrupted run; returns the folder of its ranks' probe records."""
    probe = run_dir.with_name(run_dir.name + "-ranks")
    wait(_launch(plan, run_dir, probe, run_dir.with_suffix(".log"), []), run_dir.with_suffix(".log"), timeout)
    return probe


def run_killed_and_resumed(plan: Plan, run_dir: Path, timeout: float) -> Path:
    """The run paused at the start of the step after its checkpoint at ``checkpoint_every`` (every rank), killed
    with SIGKILL, then the same command with ``ckpt_path=auto`` to the end. Returns the resumed run's probe folder."""
    log, probe = run_dir.with_suffix(".log"), run_dir.with_name(run_dir.name + "-killed-ranks")
    step = plan.checkpoint_every
    proc = _launch(plan, run_dir, probe, log, [f"+callbacks.gpu_probe.pause_at_step={step}"])
    deadline = time.monotonic() + timeout
    while len(list(probe.glob("paused_rank*"))) < plan.processes:
        if proc.poll() is not None:
            raise Failed(f"train.py ended (status {proc.returncode}) before step {step}; log {log}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise Failed(f"train.py never reached step {step} within {timeout:.0f} s; log {log}:\n{_tail(log)}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise Failed(f"no {last} after the kill at step {step}; log {log}")
    resumed_from = int(load_checkpoint(last)["global_step"])
    if resumed_from != step:
        raise Failed(f"{last} holds step {resumed_from}, not the checkpoint at step {step}")
    probe = run_dir.with_name(run_dir.name + "-resumed-ranks")
    wait(_launch(plan, run_dir, probe, log, ["ckpt_path=auto"]), log, timeout)
    return probe


def final_checkpoint(run_dir: Path, steps: int) -> dict:
    path = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = load_checkpoint(path)
    if checkpoint["global_step"] != steps:
        raise Failed(f"{path} holds step {checkpoint['global_step']}, not the run's last step {steps}")
    return checkpoint


def rank_records(probe: Path, processes: int) -> list[dict]:
    paths = [probe / f"rank{rank}.pt" for rank in range(processes)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise Failed(f"the ranks' records are missing: {', '.join(missing)}")
    return [torch.load(p, map_location="cpu", weights_only=True) for p in paths]


def mid_epoch_step(steps: int, batches_per_epoch: int) -> int:
    """Half-way through the run, moved off an epoch boundary (a resume there skips the hard part: the position in
    the epoch's data order)."""
    if steps < 3:
        raise ConfigError(f"--steps={steps} leaves no step mid-run to kill at; give at least 3")
    step = steps // 2
    if batches_per_epoch > 1 and step % batches_per_epoch == 0:
        step += 1
    return step
