"""The run's time budget: seconds in training steps, in validation, and the share outside training steps."""

from __future__ import annotations

import pytest

from diffusion.training import run_timer


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(run_timer.time, "perf_counter", clock)
    return clock


def test_the_share_outside_training_counts_everything_but_the_batches(clock):
    timer = run_timer.RunTimer()  # the job starts at 100 s
    clock.now = 110.0          # 10 s of start-up: data, feature network
    timer.on_train_start(None, None)
    for _ in range(3):         # three 2-second steps, 1 s between them (data loading)
        timer.on_train_batch_start(None, None, None, 0)
        clock.now += 2.0
        timer.on_train_batch_end(None, None)
        clock.now += 1.0
    timer.on_validation_start(None, None)
    clock.now += 5.0           # a validation with a grid and FID
    timer.on_validation_end(None, None)
    timer.on_train_end(None, None)
    clock.now += 6.0           # the final grid, the export
    summary = timer.summary()
    assert summary["time/total_s"] == 30.0
    assert summary["time/train_steps_s"] == 6.0
    assert summary["time/validation_s"] == 5.0
    assert summary["time/before_training_s"] == 10.0
    assert summary["time/after_training_s"] == 6.0
    assert summary["time/between_steps_s"] == 3.0
    assert summary["time/outside_share"] == pytest.approx(0.8)
    assert "80.0% outside training steps" in run_timer.describe(summary)


def test_a_resumed_fit_keeps_its_first_start(clock):
    timer = run_timer.RunTimer()
    clock.now += 3.0
    timer.on_train_start(None, None)
    clock.now += 4.0
    timer.on_train_start(None, None)  # trainer.validate after fit starts nothing; a second fit must not move it
    assert timer.summary()["time/before_training_s"] == 3.0


def test_a_batch_end_without_its_start_adds_nothing(clock):
    timer = run_timer.RunTimer()
    timer.on_train_batch_end(None, None)  # a resumed run: the batch began before the checkpoint
    timer.on_validation_end(None, None)
    clock.now += 4.0
    assert timer.summary()["time/train_steps_s"] == 0.0 and timer.summary()["time/outside_share"] == 1.0
