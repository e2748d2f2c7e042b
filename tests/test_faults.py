"""Faults: runs killed at chosen moments and resumed, pre-emption by SIGTERM, unwritable run directories.

Every training run here is the real ``python train.py ...`` as a subprocess, killed for real. To hit a
moment exactly (inside a training step, inside validation, half-way through writing a checkpoint) the
subprocess gets a ``sitecustomize.py`` on its PYTHONPATH (``HARNESS`` below; inert unless DIFFUSION_FAULT
is set). It pauses the process at that moment and says so in a file; the test then sends the signal
(and, for SIGTERM, lets the process go on so that it can save and exit). Nothing in the framework knows.

Two chains of runs share one run directory each and go side by side (two cores):

    kill: SIGKILL in a training step -> resume, SIGKILL half-way through writing last.ckpt
          -> resume, SIGKILL during validation -> resume to the end
    term: SIGTERM during validation -> resume, SIGTERM in a training step -> resume to the end

Lightning writes checkpoints through an fsspec transaction (``lightning.fabric.utilities.cloud_io._atomic_save``):
the bytes go to a temporary file from ``tempfile.mkstemp()`` -- in $TMPDIR, not next to the checkpoint -- which
``shutil.move`` renames over the target on commit. The rename is atomic only when $TMPDIR is on the same file
system as the run directory (otherwise ``shutil.move`` copies); each run here gets its own $TMPDIR next to the
run directory, which the test checks, so the half-written temporary file can be found and inspected.
"""

from __future__ import annotations

import csv
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SUBPROCESS_ENV, TINY_TRAIN, describe, run_script, write_sprites

pytestmark = pytest.mark.slow

# 240 sprites, val_fraction 0.2: 48 validation images (two batches, 32 + 16, so SIGTERM can land between
# them) and 192 training images, 6 steps of 32 an epoch. A checkpoint every 3 steps; 15 steps end mid-epoch.
N_SPRITES = 240
STEPS_PER_EPOCH = 6
INTERVAL = 3
MAX_STEPS = 15

FAULT_TRAIN = [
    "data=sprites",
    "data.val_fraction=0.2",
    f"callbacks.checkpoint.every_n_steps={INTERVAL}",
    "callbacks.checkpoint.save_top_k=-1",  # every interval's checkpoint kept as step_NNNNNNN.ckpt, beside last.ckpt
    "validation.fraction=null",  # validation at the end of each epoch (Lightning's check_val_every_n_epoch=1)
    f"trainer.max_steps={MAX_STEPS}",
    "trainer.max_epochs=100",  # max_steps decides (a resumed end-of-epoch checkpoint may run an empty epoch)
    "~callbacks.fid",  # not what is tested here, and the slowest callback
    "optimized_metric=val/loss",
]

HARNESS = r'''
"""Test harness (tests/test_faults.py): pause this process at DIFFUSION_FAULT, announce it in
$DIFFUSION_FAULT_DIR/paused, and wait for $DIFFUSION_FAULT_DIR/go (a SIGKILL usually comes first)."""
import os
import time
from pathlib import Path


def _pause(what):
    control = Path(os.environ["DIFFUSION_FAULT_DIR"])
    (control / "paused.tmp").write_text(what)
    (control / "paused.tmp").replace(control / "paused")
    while not (control / "go").exists():
        time.sleep(0.02)


def _install(kind, n):
    if kind in ("train_step", "val_step"):  # pause at the start of the step at global_step n
        from diffusion.training.module import DiffusionModule

        name = "training_step" if kind == "train_step" else "validation_step"
        original, done = getattr(DiffusionModule, name), []

        def hooked(self, *args, **kwargs):
            if not done and self.global_step == n and not self.trainer.sanity_checking:
                done.append(True)
                _pause(f"{name} at global_step {self.global_step}")
            return original(self, *args, **kwargs)

        setattr(DiffusionModule, name, hooked)
    elif kind == "ckpt_write":  # the n-th checkpoint this process writes: pause after half its bytes
        from fsspec.implementations.local import LocalFileOpener

        original, count = LocalFileOpener.write, []

        def hooked(self, data, *args, **kwargs):
            if str(self.path).endswith(".ckpt") and not self.autocommit:
                count.append(True)
                if len(count) == n:
                    half = len(data) // 2
                    original(self, data[:half])
                    self.f.flush()
                    _pause(f"writing {self.path} through {self.temp}: {half} of {len(data)} bytes written")
                    return half + original(self, data[half:])
            return original(self, data, *args, **kwargs)

        LocalFileOpener.write = hooked
    else:
        raise ValueError(kind)


if os.environ.get("DIFFUSION_FAULT"):
    _kind, _, _n = os.environ["DIFFUSION_FAULT"].partition(":")
    _install(_kind, int(_n))
'''


@dataclass
class Stage:
    """One process of a chain, and what it left behind (recorded before the next process changes it)."""

    name: str
    fault: str | None
    sig: int | None
    returncode: int | None = None
    paused: str | None = None
    log: str = ""
    rows_before: int = 0  # rows of csv/metrics.csv before this process started
    start_step: int | None = None  # global_step of last.ckpt it resumed from
    ckpt_steps: dict[str, object] = field(default_factory=dict)  # checkpoint file -> global_step or error
    tmp_files: dict[str, int] = field(default_factory=dict)  # files left in its $TMPDIR -> size
    saved: Path | None = None  # a copy of checkpoints/ as this process left it
    finished: bool = False  # whether metrics.json (written at the end of a run) existed afterwards

    def describe(self) -> str:
        return f"{self.name}: rc={self.returncode} paused={self.paused!r}\n{self.log[-3000:]}"


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "csv" / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def ckpt_steps(directory: Path) -> dict[str, object]:
    from diffusion.core.errors import ConfigError
    from diffusion.training.checkpoints import load_checkpoint

    steps: dict[str, object] = {}
    for path in sorted(directory.glob("*.ckpt")):
        try:
            steps[path.name] = load_checkpoint(path)["global_step"]
        except ConfigError as err:
            steps[path.name] = f"unreadable: {err}"
    return steps


def run_stage(root: Path, run_dir: Path, data_dir: Path, stage: Stage, resume: bool, timeout: float = 240) -> Stage:
    control, tmpdir = root / f"control-{stage.name}", root / f"tmp-{stage.name}"
    control.mkdir()
    tmpdir.mkdir()
    stage.rows_before = len(read_rows(run_dir))
    if resume:
        stage.start_step = ckpt_steps(run_dir / "checkpoints").get("last.ckpt")
    env = {**os.environ, **SUBPROCESS_ENV, "TMPDIR": str(tmpdir)}
    env.setdefault("DIFFUSION_ROOT", str(ROOT / ".cache" / "test-root"))
    if stage.fault:
        env.update(PYTHONPATH=os.pathsep.join([str(root / "harness"), str(ROOT)]), DIFFUSION_FAULT=stage.fault,
                   DIFFUSION_FAULT_DIR=str(control))
    args = [*TINY_TRAIN, *FAULT_TRAIN, f"data.dir={data_dir}", f"hydra.run.dir={run_dir}"]
    if resume:
        args.append("ckpt_path=last")
    log_path = root / f"{stage.name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            if stage.fault:
                deadline = time.monotonic() + timeout
                while not (control / "paused").exists() and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                if (control / "paused").exists():
                    stage.paused = (control / "paused").read_text()
                    proc.send_signal(stage.sig)
                    (control / "go").touch()  # SIGTERM: the process goes on to save and exit
            stage.returncode = proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stage.log = log_path.read_text(errors="replace")
    stage.ckpt_steps = ckpt_steps(run_dir / "checkpoints")
    stage.tmp_files = {p.name: p.stat().st_size for p in tmpdir.iterdir() if p.is_file()}
    stage.finished = (run_dir / "metrics.json").exists()
    stage.saved = root / f"after-{stage.name}"
    shutil.copytree(run_dir / "checkpoints", stage.saved)
    return stage


def run_chain(root: Path, data_dir: Path, stages: list[Stage]) -> tuple[Path, dict[str, Stage]]:
    run_dir = root / "run"
    done: dict[str, Stage] = {}
    for i, stage in enumerate(stages):
        done[stage.name] = run_stage(root, run_dir, data_dir, stage, resume=i > 0)
        if stage.sig is not None and stage.paused is None:
            break  # the fault was never reached: the tests report it
    return run_dir, done


@pytest.fixture(scope="module")
def chains(tmp_path_factory) -> dict[str, tuple[Path, dict[str, Stage]]]:
    base = tmp_path_factory.mktemp("faults")
    data_dir = write_sprites(base / "data", n=N_SPRITES)
    plans = {
        "kill": [
            Stage("kill-in-step", "train_step:4", signal.SIGKILL),
            Stage("kill-writing-ckpt", "ckpt_write:2", signal.SIGKILL),
            Stage("kill-in-validation", f"val_step:{2 * STEPS_PER_EPOCH}", signal.SIGKILL),
            Stage("kill-resumed-to-end", None, None),
        ],
        "term": [
            Stage("term-in-validation", f"val_step:{STEPS_PER_EPOCH}", signal.SIGTERM),
            Stage("term-in-step", f"train_step:{STEPS_PER_EPOCH + 1}", signal.SIGTERM),
            Stage("term-resumed-to-end", None, None),
        ],
    }
    roots = {}
    for name in plans:
        roots[name] = base / name
        (roots[name] / "harness").mkdir(parents=True)
        (roots[name] / "harness" / "sitecustomize.py").write_text(HARNESS)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_chain, roots[name], data_dir, plan) for name, plan in plans.items()}
        return {name: future.result() for name, future in futures.items()}


def stage_of(chains, chain: str, name: str) -> Stage:
    stages = chains[chain][1]
    if name not in stages:
        pytest.fail(f"{name} did not run: an earlier stage of the {chain} chain missed its fault\n"
                    + "\n".join(s.describe() for s in stages.values()))
    stage = stages[name]
    if stage.sig is not None:
        assert stage.paused is not None, f"the fault {stage.fault} was never reached\n{stage.describe()}"
    return stage


def ckpt(step: int) -> str:
    """The name of the interval checkpoint kept at ``step`` (callbacks.checkpoint.save_top_k=-1)."""
    return f"step_{step:07d}.ckpt"


def train_steps(rows: list[dict[str, str]]) -> list[int]:
    return [int(row["step"]) for row in rows if row.get("train/loss")]


# --------------------------------------------------------------------------------- SIGKILL


def test_kill_during_a_training_step(chains):
    stage = stage_of(chains, "kill", "kill-in-step")
    assert stage.paused == "training_step at global_step 4"
    assert stage.returncode == -signal.SIGKILL, stage.describe()
    # The last complete checkpoint is the interval's, at step 3; step 4 was never finished.
    assert stage.ckpt_steps == {ckpt(INTERVAL): INTERVAL, "last.ckpt": INTERVAL}, stage.ckpt_steps


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(chains):
    stage = stage_of(chains, "kill", "kill-writing-ckpt")
    assert stage.returncode == -signal.SIGKILL, stage.describe()
    assert stage.start_step == INTERVAL
    # Killed half-way through writing last.ckpt at step 6 (step_0000006.ckpt, written just before, is complete).
    assert stage.paused.startswith(f"writing {stage.saved.parent / 'run' / 'checkpoints' / 'last.ckpt'} through "), stage.paused
    assert stage.ckpt_steps == {ckpt(INTERVAL): INTERVAL, ckpt(2 * INTERVAL): 2 * INTERVAL, "last.ckpt": INTERVAL}, stage.ckpt_steps
    assert sorted(p.name for p in stage.saved.iterdir()) == ["last.ckpt", ckpt(INTERVAL), ckpt(2 * INTERVAL)], "a partial file in checkpoints/"

    # The half-written bytes are in the temporary file, in $TMPDIR, and are not mistaken for a checkpoint.
    from diffusion.core.errors import ConfigError
    from diffusion.training.checkpoints import load_checkpoint

    tmpdir = stage.saved.parent / f"tmp-{stage.name}"
    assert os.stat(tmpdir).st_dev == os.stat(stage.saved.parent / "run").st_dev, "rename is atomic on one file system only"
    partial = [tmpdir / name for name in stage.tmp_files]
    assert len(partial) == 1, stage.tmp_files
    complete = (stage.saved / ckpt(2 * INTERVAL)).stat().st_size
    assert 0 < partial[0].stat().st_size < complete
    assert str(partial[0]) in stage.paused
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        load_checkpoint(partial[0])


def test_kill_during_validation(chains):
    stage = stage_of(chains, "kill", "kill-in-validation")
    assert stage.returncode == -signal.SIGKILL, stage.describe()
    assert stage.paused == f"validation_step at global_step {2 * STEPS_PER_EPOCH}"
    assert stage.start_step == INTERVAL  # the previous kill left last.ckpt at step 3
    # A step's checkpoint holds the whole step, its validation included (training.resume): killed during the
    # validation of step 12, the run's last complete checkpoint is the one of step 9.
    assert stage.ckpt_steps["last.ckpt"] == 2 * STEPS_PER_EPOCH - INTERVAL, stage.ckpt_steps


@pytest.mark.parametrize("chain", ["kill", "term"])
def test_resumed_runs_reach_max_steps_with_no_gap_in_the_loss_curve(chains, chain):
    run_dir, stages = chains[chain]
    final = stage_of(chains, chain, f"{chain}-resumed-to-end")
    assert final.returncode == 0, final.describe()
    # The optimizer steps of an uninterrupted run: the step count, and Adam's own count of the updates behind the weights.
    assert final.ckpt_steps["last.ckpt"] == MAX_STEPS
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert int(last["optimizer_states"][0]["state"][0]["step"]) == MAX_STEPS
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == MAX_STEPS
    assert (run_dir / "checkpoints" / "final.safetensors").is_file() and (run_dir / "samples" / "final.npz").is_file()
    assert not list((run_dir / "checkpoints").glob("*-v*.ckpt")), "resuming in place must not version the checkpoints"

    rows = read_rows(run_dir)
    order = list(stages.values())
    for stage, following in zip(order, order[1:] + [None]):
        # Each process appends its own rows; a resumed one starts at the step of the checkpoint it resumed from
        # (one higher after an end-of-epoch checkpoint: Lightning's numbering of the first logged step).
        segment = train_steps(rows[stage.rows_before : following.rows_before if following else len(rows)])
        assert segment, f"{stage.name} logged no training step"
        if stage.start_step is not None:
            assert stage.start_step <= segment[0] <= stage.start_step + 1, (stage.name, stage.start_step, segment)
        assert segment == sorted(segment) and len(set(segment)) == len(segment), (stage.name, segment)
    # Together: every step up to max_steps (so no gap, let alone one wider than the checkpoint interval). Steps
    # done after the last checkpoint of a killed process are done, and logged, again by the next one.
    steps = sorted(set(train_steps(rows)))
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    assert max(gaps) <= INTERVAL and steps == list(range(MAX_STEPS)), steps


# --------------------------------------------------------------------------------- SIGTERM


def test_sigterm_during_validation_saves_the_raw_and_averaged_weights(chains):
    stage = stage_of(chains, "term", "term-in-validation")
    assert stage.paused == f"validation_step at global_step {STEPS_PER_EPOCH}"
    assert stage.returncode == 128 + signal.SIGTERM, stage.describe()  # not 0: the run did not finish
    assert "SIGTERM: saved" in stage.log and "resume with ckpt_path=last" in stage.log, stage.describe()
    # The interval checkpoint of step 6 waits for the end of the step's validation, which SIGTERM cut short; the
    # SIGTERM checkpoint is written at step 6, after the EMA weights were swapped back out.
    assert stage.ckpt_steps == {ckpt(INTERVAL): INTERVAL, "last.ckpt": STEPS_PER_EPOCH}, stage.ckpt_steps
    during = torch.load(stage.saved / "last.ckpt", map_location="cpu", weights_only=True)
    assert any(not torch.equal(v, during["current_model_state"][k]) for k, v in during["state_dict"].items()), \
        "the checkpoint holds one set of weights twice: the average was saved as the raw weights or the other way"
    # That they are the right way round shows at the end: this chain ends with the bits of the killed chain
    # (test_both_chains_end_with_the_same_bits); raw weights swapped for the average would not.
    assert not stage.finished  # no end-of-run artefacts for an unfinished run


def test_both_chains_end_with_the_same_bits(chains):
    """Killed three times, or pre-empted twice, and resumed each time: the same run as the other chain, bit for bit."""
    kill, term = (torch.load(chains[c][0] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
                  for c in ("kill", "term"))
    for key in ("state_dict", "current_model_state"):
        assert kill[key].keys() == term[key].keys()
        assert all(torch.equal(kill[key][name], term[key][name]) for name in kill[key]), key
    for a, b in zip(kill["optimizer_states"][0]["state"].values(), term["optimizer_states"][0]["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_sigterm_in_a_training_step_saves_the_step_reached(chains):
    stage = stage_of(chains, "term", "term-in-step")
    assert stage.paused == f"training_step at global_step {STEPS_PER_EPOCH + 1}"
    assert stage.returncode == 128 + signal.SIGTERM, stage.describe()
    assert stage.start_step == STEPS_PER_EPOCH
    # The interrupted step finishes, then last.ckpt is written at the step reached: past the last interval checkpoint.
    reached = STEPS_PER_EPOCH + 2
    assert stage.ckpt_steps["last.ckpt"] == reached > max(INTERVAL * (reached // INTERVAL), STEPS_PER_EPOCH), stage.ckpt_steps
    assert f"saved {stage.saved.parent / 'run' / 'checkpoints' / 'last.ckpt'} at step {reached}" in stage.log
    final = stage_of(chains, "term", "term-resumed-to-end")
    assert final.start_step == reached  # the next run resumes from the SIGTERM checkpoint


# --------------------------------------------------------------------------------- the run directory


def test_lightning_saves_checkpoints_through_a_temporary_file(tmp_path, monkeypatch):
    """What the kill test relies on, in-process: nothing is written at the checkpoint's path until the move."""
    import fsspec.implementations.local as local
    from lightning.fabric.utilities.cloud_io import _atomic_save

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    target = tmp_path / "checkpoints" / "last.ckpt"
    target.parent.mkdir()
    seen = []
    original = local.LocalFileOpener.write

    def spy(self, data, *args, **kwargs):
        seen.append((Path(self.temp).parent, target.exists()))
        return original(self, data, *args, **kwargs)

    monkeypatch.setattr(local.LocalFileOpener, "write", spy)
    _atomic_save({"x": torch.arange(3)}, target)
    assert seen == [(tmp_path / "tmp", False)]
    assert torch.equal(torch.load(target, weights_only=True)["x"], torch.arange(3))
    assert not list((tmp_path / "tmp").iterdir())


def test_run_dir_that_cannot_be_created(tmp_path):
    from diffusion.core.errors import ConfigError
    from diffusion.training.checkpoints import check_run_dir

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot create run directory .*a-file/run"):
        check_run_dir(blocker / "run", resuming=False)
    assert blocker.read_text() == "not a directory"


DAC_CAPABILITIES = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER (linux/capability.h)


def drop_dac_capabilities() -> None:
    """In the child before exec: remove from the bounding set the capabilities that let root write through file
    modes (or change them), so that the command, still root, meets 0o500 as its owner does (PR_CAPBSET_DROP = 24)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in DAC_CAPABILITIES:
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap})")


def can_drop_dac_capabilities() -> bool:
    try:
        return subprocess.run(["true"], preexec_fn=drop_dac_capabilities).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@contextmanager
def unwritable(directory: Path):
    """Make ``directory`` refuse new files to a command run with the yielded ``run_script`` keywords, then undo it.

    Mode 0o500 does that for an ordinary user. Root writes through file modes (os.access rightly says yes), so as
    root the command also runs without the capabilities that allow it (``drop_dac_capabilities``); where root may not
    drop them, the directory is made immutable (chattr +i), which stops root too; only where neither is allowed is
    the test skipped."""
    directory.chmod(0o500)
    try:
        if os.geteuid() != 0:
            yield {}
        elif can_drop_dac_capabilities():
            yield {"preexec_fn": drop_dac_capabilities}
        elif shutil.which("chattr") is None:
            pytest.skip("running as root, which may neither drop CAP_DAC_OVERRIDE nor use chattr (not installed)")
        else:
            proc = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
            if proc.returncode != 0:
                pytest.skip(f"running as root, which may neither drop CAP_DAC_OVERRIDE nor chattr +i: {proc.stderr.strip()}")
            try:
                yield {}
            finally:
                subprocess.run(["chattr", "-i", str(directory)], check=True)
    finally:
        directory.chmod(0o700)


def test_unwritable_run_dir_is_reported_before_training(tmp_path):
    data_dir = write_sprites(tmp_path / "data")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with unwritable(run_dir) as how:
        probe = subprocess.run([sys.executable, "-c", f"open({str(run_dir / 'probe')!r}, 'w')"], capture_output=True, **how)
        assert probe.returncode != 0 and not (run_dir / "probe").exists()  # the fault is in place
        proc = run_script("train.py", "data=sprites", f"data.dir={data_dir}", f"hydra.run.dir={run_dir}", **how)
    assert proc.returncode == 2, describe(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: run directory {run_dir} is not writable"), describe(proc)
    assert "hydra.run.dir" in lines[0]
    assert not list(run_dir.iterdir())  # refused before Hydra wrote .hydra/ or anything else
