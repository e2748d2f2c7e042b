"""What a checkpoint carries for an exact resume, piece by piece (the end-to-end runs are in test_exact_resume.py):
the batch order's position, the per-step seeds, and the one-line warnings of a resume that cannot be exact."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import torch

from diffusion.training.resume import RECORD, StepSeeds, seed_step


def test_the_batch_order_goes_on_where_the_checkpointed_sampler_stood():
    from diffusion.data.datamodule import ShardedBatches

    whole = ShardedBatches(100, 8, shuffle=True, seed=3)
    whole.set_epoch(2)
    expected = list(whole)
    first = ShardedBatches(100, 8, shuffle=True, seed=3)
    first.set_epoch(2)
    taken = iter(first)
    for _ in range(5):  # training takes five batches; the loader fetched them and no more
        next(taken)
        first.consume()
    resumed = ShardedBatches(100, 8, shuffle=True, seed=3)
    resumed.load_state_dict(first.state_dict())
    resumed.set_epoch(2)
    rest = list(resumed)
    assert len(rest) == len(expected) - 5 and all(torch.equal(a, b) for a, b in zip(rest, expected[5:]))
    resumed.set_epoch(3)  # the next epoch starts at its beginning
    assert len(list(resumed)) == len(expected)


def test_a_sampler_state_from_other_data_says_the_resume_is_not_exact(capsys):
    from diffusion.data.datamodule import ShardedBatches

    before = ShardedBatches(100, 8, shuffle=True, seed=3)
    ShardedBatches(120, 8, shuffle=True, seed=3).load_state_dict(before.state_dict())
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: this resume is not exact") and "n 100 -> 120" in err[0]



def draws() -> tuple[float, float, float]:
    return torch.rand(1).item(), float(np.random.rand()), random.random()


def test_a_step_draws_the_same_whatever_came_before_it_and_other_steps_and_ranks_draw_otherwise():
    seed_step(0, 7, 0)
    first = draws()
    torch.rand(100), np.random.rand(5), random.random()  # a validation, a restart: anything in between
    seed_step(0, 7, 0)
    assert draws() == first
    others = set()
    for step, rank in [(8, 0), (7, 1), (6, 0)]:
        seed_step(0, step, rank)
        others.add(draws()[0])
    seed_step(1, 7, 0)
    others.add(draws()[0])
    assert first[0] not in others and len(others) == 4


def fake_trainer(world_size: int) -> SimpleNamespace:
    return SimpleNamespace(world_size=world_size, global_rank=0)


def test_a_checkpoint_without_the_record_or_from_other_processes_warns_in_one_line(capsys):
    callback = StepSeeds(seed=3)
    checkpoint: dict = {}
    callback.on_save_checkpoint(fake_trainer(2), None, checkpoint)
    callback.on_load_checkpoint(fake_trainer(2), None, checkpoint)
    assert capsys.readouterr().err == ""  # the same run: nothing to say
    callback.on_load_checkpoint(fake_trainer(1), None, checkpoint)
    callback.on_load_checkpoint(fake_trainer(2), None, {k: v for k, v in checkpoint.items() if k != RECORD})
    StepSeeds(seed=4).on_load_checkpoint(fake_trainer(2), None, checkpoint)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("warning: this resume is not exact: ") for line in lines)
    assert "2 processes and resumes on 1" in lines[0]
    assert "before exact resumption" in lines[1]
    assert "resume with seed=3" in lines[2]


def test_each_batch_of_an_accumulated_step_draws_its_own_noise():
    seeds = StepSeeds(seed=0)
    trainer = SimpleNamespace(global_step=5, global_rank=0, accumulate_grad_batches=2)
    seeds.on_train_batch_start(trainer, None, None, batch_idx=10)
    first = torch.randn(4)
    seeds.on_train_batch_start(trainer, None, None, batch_idx=11)
    assert not torch.equal(torch.randn(4), first)
    seeds.on_train_batch_start(trainer, None, None, batch_idx=10)
    assert torch.equal(torch.randn(4), first)


def test_a_callback_state_under_an_older_key_finds_its_callback():
    from diffusion.training.callbacks import StepCheckpoint
    from diffusion.training.resume import match_callback_states

    callback = StepCheckpoint(dirpath="/tmp/x", every_n_steps=4, save_last=True, save_top_k=0)
    old_key = "StepCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 4, 'every_n_epochs': 0}"
    checkpoint = {"callbacks": {old_key: {"last_model_path": "a"}, "Other{}": {}}}
    match_callback_states(checkpoint, [callback])
    assert checkpoint["callbacks"] == {callback.state_key: {"last_model_path": "a"}, "Other{}": {}}
