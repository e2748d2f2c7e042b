"""Progress lines for a run whose stdout is a file: their cadence (every 2% of the run or every 60 s, whichever
is rarer), their figures, and which progress display a run gets. The clock is a fake one."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch
from test_timing import Clock

from diffusion.core.errors import ConfigError
from diffusion.training import progress_log
from diffusion.training.callbacks import StepProgressBar
from diffusion.training.progress_log import ProgressLog, progress_bar


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress_log.time, "monotonic", clock)
    return clock


def trainer(max_steps: int = 1000) -> SimpleNamespace:
    return SimpleNamespace(global_step=0, max_steps=max_steps, world_size=1, loggers=[], sanity_checking=False,
                           progress_bar_metrics={"train/loss": torch.tensor(0.04123)}, callback_metrics={})


def train(log: ProgressLog, run: SimpleNamespace, clock: Clock, steps: int, seconds_per_step: float) -> None:
    batch = (torch.zeros(32, 3, 2, 2), torch.zeros(32))
    for _ in range(steps):
        clock.now += seconds_per_step
        run.global_step += 1
        log.on_train_batch_end(run, None, None, batch, 0)


def printed_steps(out: io.StringIO) -> list[int]:
    return [int(line.split()[1].split("/")[0]) for line in out.getvalue().splitlines() if line.startswith("step ")]


def test_a_line_every_2_percent_or_60_seconds_whichever_is_rarer(clock):
    out, run = io.StringIO(), trainer(1000)
    log = ProgressLog(every_fraction=0.02, every_s=60, stream=out)
    log.on_train_start(run, None)
    train(log, run, clock, 200, seconds_per_step=1.0)  # 20 steps take 20 s: the 60 s are rarer
    assert printed_steps(out) == [60, 120, 180]
    # 20 steps take 200 s: the 2% are rarer (step 200 comes 20 s after the line at 180; 60 s have passed at 204)
    train(log, run, clock, 100, seconds_per_step=10.0)
    assert printed_steps(out)[3:] == [204, 224, 244, 264, 284]
    train(log, run, clock, 700, seconds_per_step=0.125)  # 60 s take 480 steps
    assert printed_steps(out)[8:] == [304, 784, 1000]  # and the last step, whenever it comes


def test_a_line_says_step_loss_speed_elapsed_and_eta(clock):
    out, run = io.StringIO(), trainer(1000)
    log = ProgressLog(stream=out)
    log.on_train_start(run, None)
    train(log, run, clock, 60, seconds_per_step=1.0)
    # 32 images a second; 940 steps left at 1 s each
    assert out.getvalue().splitlines()[-1] == "step 60/1000 (6%)  train/loss 0.04123  32 img/s  elapsed 1m00s  eta 15m40s"


def test_validation_gets_a_line_and_stays_out_of_the_speed(clock):
    out, run = io.StringIO(), trainer(100)
    log = ProgressLog(every_fraction=0.1, every_s=0, stream=out)
    log.on_train_start(run, None)
    train(log, run, clock, 5, seconds_per_step=1.0)
    log.on_validation_start(run, None)
    clock.now += 30.0
    run.callback_metrics = {"val/loss": torch.tensor(0.05), "val/fid": torch.tensor(1.25), "train/loss": torch.tensor(1.0)}
    log.on_validation_end(run, None)
    train(log, run, clock, 5, seconds_per_step=1.0)
    lines = out.getvalue().splitlines()
    assert lines[1] == "validation at step 5: val/loss 0.05  val/fid 1.25  (30s)"
    # img/s counts training time only; the eta spreads the time so far (validation too) over the steps so far
    assert lines[2].endswith("  32 img/s  elapsed 40s  eta 6m00s")


def test_a_terminal_gets_richs_bar_and_a_file_the_lines(monkeypatch):
    monkeypatch.setattr(progress_log.sys.stdout, "isatty", lambda: True, raising=False)
    assert isinstance(progress_bar(), StepProgressBar)
    monkeypatch.setattr(progress_log.sys.stdout, "isatty", lambda: False, raising=False)
    assert isinstance(progress_bar(), ProgressLog)
    assert isinstance(progress_bar("bar"), StepProgressBar) and isinstance(progress_bar("lines"), ProgressLog)
    with pytest.raises(ConfigError, match="callbacks.progress.style='quiet'; choose one of auto, bar, lines"):
        progress_bar("quiet")
