"""A resumed run is the same run: killed (SIGKILL), pre-empted (SIGTERM), requeued by Lightning's SLURM signal
(SIGUSR1) or extended after it finished, and resumed with ``ckpt_path=auto``/``last``, it ends with the weights, EMA
weights, post-hoc EMA averages and optimizer state of the run left alone, bit for bit, and with the same
``train/loss`` rows in ``history.jsonl`` and the same ``fid.json`` figures (issue 17).

Each chain runs the real ``train.py`` in one run directory, paused by tests/test_faults.py's harness at the start
of a training step and then signalled. 240 sprites at val_fraction 0.2 and batch 32: 6 steps an epoch; validation,
grids, FID and a checkpoint every 4 steps (4 and 8 mid-epoch, 12 at an epoch boundary), 16 steps in all. The chains
go side by side (two cores).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SUBPROCESS_ENV, TINY_TRAIN, write_sprites
from test_faults import HARNESS

pytestmark = pytest.mark.slow

MAX_STEPS = 16
RESUME_TRAIN = [
    "data=sprites",
    "data.val_fraction=0.2",
    "data.hflip=true",  # the flips are random draws too
    "validation.fraction=null",
    "validation.every_n_steps=4",
    "callbacks.checkpoint.every_n_steps=4",
    "callbacks.checkpoint.fraction=null",
    "callbacks.sample_grid.every_n_steps=4",
    "callbacks.fid.every_n_steps=4",
    "callbacks.fid.fraction=null",
    "callbacks=[default,posthoc_ema]",
    "callbacks.posthoc_ema.every_n_steps=4",
    "trainer.max_epochs=100",
    "network.dropout=0.1",  # dropout inside the network draws from the global generator
    "ckpt_path=auto",
]
SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}


def train(root: Path, run_dir: Path, data_dir: Path, name: str, *overrides: str, fault: str | None = None,
          sig: int | None = None, env: dict[str, str] | None = None) -> tuple[int | None, str]:
    """One ``train.py`` process; with ``fault`` it is paused there and sent ``sig`` (SIGUSR1: then killed once
    Lightning's hpc checkpoint is complete, as SLURM does)."""
    control = root / f"control-{name}"
    control.mkdir(parents=True)
    full = {**os.environ, **SUBPROCESS_ENV, **(env or {})}
    full.setdefault("DIFFUSION_ROOT", str(ROOT / ".cache" / "test-root"))
    if fault:
        (root / "harness").mkdir(exist_ok=True)
        (root / "harness" / "sitecustomize.py").write_text(HARNESS)
        full.update(PYTHONPATH=os.pathsep.join([str(root / "harness"), str(ROOT)]), DIFFUSION_FAULT=fault,
                    DIFFUSION_FAULT_DIR=str(control))
    args = [sys.executable, str(ROOT / "train.py"), *TINY_TRAIN, *RESUME_TRAIN, f"trainer.max_steps={MAX_STEPS}",
            f"data.dir={data_dir}", f"hydra.run.dir={run_dir}", *overrides]
    log = root / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=full, stdout=out, stderr=subprocess.STDOUT)
        try:
            if fault:
                deadline = time.monotonic() + 240
                while not (control / "paused").exists() and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert (control / "paused").exists(), log.read_text()[-3000:]
                proc.send_signal(sig)
                (control / "go").touch()
                if sig == signal.SIGUSR1:
                    hpc = run_dir / "hpc_ckpt_1.ckpt"
                    while not hpc.exists() and proc.poll() is None and time.monotonic() < deadline:
                        time.sleep(0.05)
                    assert hpc.exists(), log.read_text()[-3000:]
                    proc.kill()
            code = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return code, log.read_text(errors="replace")


def final_state(run_dir: Path) -> dict[str, object]:
    """What must be bit-identical: last.ckpt's tensors (EMA and raw weights, optimizer, post-hoc EMA averages)
    and the run's records."""
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    posthoc = next(v for k, v in ckpt["callbacks"].items() if k.startswith("PostHocEMA"))
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    fid = json.loads((run_dir / "fid.json").read_text())["history"]
    return {
        "step": ckpt["global_step"],
        "ema": ckpt["state_dict"],
        "raw": ckpt["current_model_state"],
        "optimizer": ckpt["optimizer_states"][0]["state"],
        "posthoc": posthoc["averages"],
        "train/loss": [(row["step"], row["train/loss"]) for row in history if "train/loss" in row],
        "val": [(row["step"], row.get("val/loss"), row.get("val/fid")) for row in history if "val/loss" in row],
        "fid": [{k: v for k, v in entry.items() if k != "seconds"} for entry in fid],
    }


def differences(a, b, path: str = "") -> list[str]:
    """Where two nested states differ (tensors compared bit for bit)."""
    if isinstance(a, torch.Tensor):
        same = isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [path]
    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            return [f"{path}: keys"]
        return [d for key in a for d in differences(a[key], b[key], f"{path}/{key}")]
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return [f"{path}: length {len(a)} vs {len(b) if isinstance(b, (list, tuple)) else b}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) if (d := differences(x, y, f"{path}[{i}]"))]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def assert_same_run(whole: Path, resumed: Path) -> None:
    a, b = final_state(whole), final_state(resumed)
    assert a["step"] == b["step"] == MAX_STEPS
    assert len(a["fid"]) == 4 and len(a["train/loss"]) == MAX_STEPS  # the comparison covers every record
    diff = differences(a, b)
    assert not diff, f"the resumed run differs from the uninterrupted one at {diff[:10]}"


def chain(root: Path, data: Path, name: str, stages: list[tuple], extra: tuple[str, ...] = (),
          env: dict[str, str] | None = None) -> tuple[Path, list[str]]:
    """Run the stages in one run directory: (fault, signal, overrides...) each; None as fault runs to the end."""
    run_dir, logs = root / name, []
    for i, (fault, sig, *overrides) in enumerate(stages):
        code, log = train(root, run_dir, data, f"{name}-{i}", *extra, *overrides, fault=fault, sig=sig, env=env)
        logs.append(log)
        if fault is None:
            assert code == 0, log[-3000:]
    return run_dir, logs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted runs and the interrupted chains, two at a time."""
    root = tmp_path_factory.mktemp("resume")
    data = write_sprites(root / "data", n=240)
    jobs = {
        "whole": (chain, root, data, "whole", [(None, None)]),
        # SIGKILL right after the checkpoint at step 4 (mid-epoch) and at step 12 (an epoch's end); SIGTERM in
        # step 14 (SaveOnSigterm writes last.ckpt when the step is done: step 14, between two intervals).
        "killed": (chain, root, data, "killed", [("train_step:4", signal.SIGKILL), ("train_step:12", signal.SIGKILL),
                                                 ("train_step:13", signal.SIGTERM), (None, None)]),
        # A finished 8-step run extended to 16 steps; Lightning's SLURM requeue signal in step 10 (hpc_ckpt_1.ckpt
        # when step 10 is done), then the job is killed and requeued.
        "extended": (chain, root, data, "extended", [(None, None, "trainer.max_steps=8"),
                                                     ("train_step:9", signal.SIGUSR1, "ckpt_path=last"),
                                                     (None, None)], (), SLURM_ENV),
        "whole_bf16": (chain, root, data, "whole_bf16", [(None, None)], ("trainer.precision=bf16-mixed",)),
        "killed_bf16": (chain, root, data, "killed_bf16", [("train_step:8", signal.SIGKILL), (None, None)],
                        ("trainer.precision=bf16-mixed",)),
    }
    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(*job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def test_a_run_killed_after_checkpoints_mid_epoch_and_at_an_epoch_end_ends_as_the_whole_run(runs):
    run_dir, logs = runs["killed"]
    assert "Restoring states from the checkpoint path" in logs[1] and "not exact" not in "".join(logs)
    assert "Please add the following callbacks" not in "".join(logs)  # every callback found its state again
    assert_same_run(runs["whole"][0], run_dir)


def test_an_extended_run_and_a_slurm_requeue_end_as_the_whole_run(runs):
    run_dir, logs = runs["extended"]
    hpc = torch.load(run_dir / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)
    assert hpc["global_step"] == 10  # written when the step under way was done, not inside it
    assert f"Restoring states from the checkpoint path at {run_dir / 'hpc_ckpt_1.ckpt'}" in logs[2]
    assert_same_run(runs["whole"][0], run_dir)


def test_a_bf16_mixed_run_killed_and_resumed_ends_as_the_whole_run(runs):
    assert_same_run(runs["whole_bf16"][0], runs["killed_bf16"][0])


def test_a_checkpoint_written_before_exact_resumption_resumes_with_one_warning(tmp_path):
    """tests/data/last_44e540d.ckpt: the last.ckpt of a 6-step run of this module's data and the test settings,
    written at commit 44e540d (before this change: no seed record, no loader position, StepCheckpoint's state
    under its old key)."""
    import shutil

    run_dir = tmp_path / "old"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "data" / "last_44e540d.ckpt", run_dir / "checkpoints" / "last.ckpt")
    data = write_sprites(tmp_path / "data", n=240)  # the data of the run that wrote it
    code, log = train(tmp_path, run_dir, data, "old", "ckpt_path=last", "trainer.max_steps=8",
                      "~callbacks.fid", "optimized_metric=val/loss", "data.hflip=false",
                      # the EMA that run had (the default then): a resumed run keeps its averaging
                      "callbacks.ema._target_=diffusion.training.ema.EMA", "~callbacks.ema.sigma_rel",
                      "+callbacks.ema.decay=0.999", "+callbacks.ema.warmup=true")
    assert code == 0, log[-3000:]
    warnings = [line for line in log.splitlines() if "not exact" in line or "Please add the following" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: this resume is not exact: the checkpoint was "
                                                         "written before exact resumption"), warnings


def test_a_run_with_lightnings_overfit_batches_checkpoints_and_finishes(tmp_path):
    """Lightning rebuilds the training loader around a SequentialSampler: it has no position to keep."""
    data = write_sprites(tmp_path / "data", n=240)
    code, log = train(tmp_path, tmp_path / "run", data, "overfit", "+trainer.overfit_batches=2", "trainer.max_steps=4",
                      "~callbacks.fid", "optimized_metric=val/loss")
    assert code == 0, log[-3000:]
