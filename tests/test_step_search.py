"""Searched noise levels (``spacing: optimized``, issue 18): the search, the sampler's levels, the file beside the
checkpoint and the three places that read it (sample.py, sampler_fid, the FID callback)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import describe, run_script

from diffusion.core.errors import ConfigError
from diffusion.core.exact import gaussian_gap
from diffusion.core.level_search import check_levels, compass_search
from diffusion.core.samplers.ode import sample_euler
from diffusion.core.sampling import Sampler
from diffusion.core.schedules import EDMSchedule
from diffusion.evaluation.searched_levels import levels_path, read_levels, with_searched_levels
from diffusion.tools import sampler_fid, search_steps
from diffusion.training.builders import sampler_from_conf


def test_compass_search_reaches_the_minimum_of_a_known_objective():
    """A bowl in log sigma with its minimum at known levels: the search ends within its last step of them, the
    first level never moves, and it spends no more than its budget."""
    target = [80.0, 6.0, 0.9, 0.05]
    calls = []

    def bowl(levels):
        calls.append(list(levels))
        return sum((math.log(a) - math.log(b)) ** 2 for a, b in zip(levels, target, strict=True))

    result = compass_search(bowl, [80.0, 2.0, 0.1, 0.002], evaluations=200, min_step=0.01)
    assert result.levels[0] == 80.0 and all(call[0] == 80.0 for call in calls)
    assert max(abs(math.log(a) - math.log(b)) for a, b in zip(result.levels, target, strict=True)) < 0.02
    assert result.value < 1e-3 < result.start_value and result.evaluations == len(calls) <= 200
    assert [value for _, value in result.history] == [bowl_value for bowl_value in map(lambda c: sum(
        (math.log(a) - math.log(b)) ** 2 for a, b in zip(c, target, strict=True)), calls)]


def test_the_search_keeps_levels_descending_above_the_floor_and_within_budget():
    """An objective that rewards low levels pushes against both constraints."""
    seen = []

    def low(levels):
        seen.append(list(levels))
        return sum(levels)

    result = compass_search(low, [10.0, 3.0, 1.0], evaluations=25, floor=0.5, min_step=1e-4)
    assert len(seen) == 25 == result.evaluations
    for levels in seen:
        assert levels[0] == 10.0 and all(a > b for a, b in zip(levels, levels[1:], strict=False)) and levels[-1] >= 0.5 - 1e-9
    assert result.value < 14.0


def test_a_time_budget_ends_the_search_between_evaluations():
    """``stop`` is asked before each evaluation after the first: the search ends at the first True, with the best
    levels found so far (search_steps --max-share, a share of the run's training time)."""
    seen = []

    def low(levels):
        seen.append(list(levels))
        return sum(levels)

    result = compass_search(low, [10.0, 3.0, 1.0], evaluations=25, floor=0.5, stop=lambda: len(seen) >= 4)
    assert len(seen) == 4 == result.evaluations
    assert result.stopped and not compass_search(low, [10.0, 3.0, 1.0], evaluations=2, floor=0.5).stopped
    assert result.value == min(sum(levels) for levels in seen) < sum([10.0, 3.0, 1.0])


def test_the_search_goes_on_from_the_best_start():
    """Levels searched before are evaluated once after Karras' and the search continues from the better; a start
    with another first level (sigma_max is fixed) is not evaluated."""
    seen = []

    def low(levels):
        seen.append(list(levels))
        return sum(levels)

    result = compass_search(low, [10.0, 3.0, 1.0], evaluations=2, floor=0.5, others=[[9.0, 2.0, 0.6], [10.0, 2.0, 0.6]])
    assert seen == [[10.0, 3.0, 1.0], [10.0, 2.0, 0.6]]
    assert result.levels == [10.0, 2.0, 0.6] and result.start_value == 14.0 and result.evaluations == 2


def test_levels_searched_before_are_a_start(searched):
    """A search starts also from levels searched for the same checkpoint bytes with as many levels: under the other
    first step, and this setting's own file (so that a search run again cannot end worse than the levels it
    replaces); a file of the zero-centred analytic first step of an earlier version is neither a start nor read."""
    from diffusion.evaluation.searched_levels import file_digest, searched_before

    ckpt, rows = searched
    digest = file_digest(ckpt)

    def levels(sampler, digest=digest):
        return [start["levels"] for start in searched_before(ckpt, sampler, digest)]

    plain_four = Sampler("dpmpp_2m_sde", steps=4)  # NFE 4: as many levels as the analytic first step's NFE 3
    afs_three = Sampler("dpmpp_2m_sde", steps=4, analytic_first_step=True)
    assert levels(plain_four) == [rows[1]["levels"]]
    assert levels(plain_four, "another checkpoint") == []
    assert levels(Sampler("dpmpp_2m_sde", steps=3, analytic_first_step=True)) == [rows[0]["levels"]]
    assert levels(Sampler("dpmpp_2m_sde", steps=3)) == [rows[0]["levels"]]  # its own file
    assert levels(afs_three) == [rows[1]["levels"]]
    assert levels(Sampler("dpmpp_2m_sde", steps=5)) == []

    path = levels_path(ckpt, afs_three)
    record = json.loads(path.read_text())
    assert record["analytic_first_step_centre"] == "training mean"
    saved = path.read_text()
    try:
        del record["analytic_first_step_centre"]
        path.write_text(json.dumps(record))
        assert levels(afs_three) == [] == levels(plain_four)
        with pytest.raises(ConfigError, match="zero-centred analytic first step"):
            read_levels(ckpt, afs_three.replace(spacing="optimized"))
    finally:
        path.write_text(saved)


def test_the_time_budget_is_not_overrun_by_the_last_evaluation(monkeypatch):
    """search_levels starts no evaluation that would end past its budget at the pace so far: with evaluations of 1 s
    and a budget of 3.5 s it runs 3 of them (ending at 3 s), not a 4th that would end at 4 s."""
    from diffusion.core.schedules import EDMSchedule
    from diffusion.evaluation import searched_levels

    clock = [0.0]
    monkeypatch.setattr(searched_levels.time, "perf_counter", lambda: clock[0])

    class OneSecond:
        sampler = sampler_from_conf("dpmpp_2m_sde", 3)

        def __call__(self, levels):
            clock[0] += 1.0
            return sum(levels)

    result, seconds = searched_levels.search_levels(OneSecond(), EDMSchedule(), evaluations=30, seconds=3.5)
    assert result.evaluations == 3 and seconds == 3.0 and result.stopped


def test_the_search_metric_makes_no_collective_call(tmp_path, monkeypatch):
    """In a multi-process run the FID callback searches on rank 0 while the other ranks wait in a broadcast: the
    search's FID must be this process's alone (a collective there would hang the run), unlike the measurement's."""
    import torch.distributed as dist
    from torch import nn

    from diffusion.evaluation.metrics import ImageQuality
    from diffusion.evaluation.searched_levels import training_reference

    class Pixels(nn.Module):
        num_features = 6

        def forward(self, x):
            return x.float().flatten(1)[:, :6] / 255

    images = torch.randint(0, 256, (40, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        def collective(*args, **kwargs):
            raise AssertionError("a collective call")

        for name in ("all_reduce", "all_gather", "broadcast"):
            monkeypatch.setattr(dist, name, collective)
        local = training_reference(Pixels(), images[:20], seed=0)
        local.update_fake(images[20:])
        assert math.isfinite(local.compute()["fid"])
        synced = ImageQuality(Pixels(), kid_subsets=1)
        synced.update_real(images[:20])
        synced.update_fake(images[20:])
        with pytest.raises(AssertionError, match="collective"):
            synced.compute()
    finally:
        monkeypatch.undo()
        dist.destroy_process_group()


def test_levels_go_with_optimized_spacing_and_their_nfe_only():
    walked = Sampler("euler", steps=3, spacing="optimized", levels=[80.0, 2.0, 0.3])
    assert walked.replace(steps=3).levels == [80.0, 2.0, 0.3]  # sample.py passes steps= even when unchanged
    assert walked.replace(steps=4).levels is None and walked.replace(spacing="karras").levels is None
    with pytest.raises(ConfigError, match="walked with spacing=optimized only"):
        Sampler("euler", steps=3, spacing="karras", levels=[80.0, 2.0, 0.3])


def test_searched_levels_beat_karras_on_gaussian_data():
    """The closed form of issue 18's sampler check as the objective: Euler's relative error against the exact ODE
    solution on Gaussian data (``core.exact.gaussian_gap``), at NFE 3 on the EDM range. Karras' levels leave a
    large error; the searched ones cut it, which a search that ignored its objective would not."""
    schedule, scales = EDMSchedule(), torch.tensor([0.5])

    def gap(levels):
        return float(gaussian_gap(sample_euler, torch.tensor([*levels, 0.0]), scales).abs().max())

    start = schedule.karras_sigmas(3)[:-1].tolist()
    result = compass_search(gap, start, evaluations=40, floor=schedule.sigma_min)
    assert result.start_value > 0.7 and result.value < result.start_value / 2, (result.start_value, result.value)  # 0.80 -> 0.35


@pytest.mark.parametrize(
    ("levels", "steps", "message"),
    [
        ([3.0, 1.0, 1.0], 3, "strictly descending"),
        ([3.0, -1.0], 2, "positive finite"),
        ([3.0, float("nan")], 2, "positive finite"),
        ([3.0, 1.0], 3, "2 searched levels for a sampler with steps=3"),
        ("abc", None, "must be a list of numbers"),
        (3.0, None, "must be a list of numbers"),
    ],
)
def test_bad_levels_are_refused_in_one_line(levels, steps, message):
    with pytest.raises(ConfigError, match=message):
        check_levels(levels, steps)


def test_a_sampler_with_optimized_spacing_walks_its_levels_and_names_the_search_without_them():
    sampler = Sampler("dpmpp_2m_sde", steps=3, spacing="optimized", levels=[80.0, 2.0, 0.3])
    assert sampler.sigmas(EDMSchedule()).tolist() == pytest.approx([80.0, 2.0, 0.3, 0.0])
    with pytest.raises(ConfigError, match="2 searched levels for a sampler with steps=3"):
        Sampler("euler", steps=3, spacing="optimized", levels=[80.0, 2.0]).sigmas(EDMSchedule())
    with pytest.raises(ConfigError, match=r"python -m diffusion.tools.search_steps CKPT --samplers euler --nfe 4"):
        Sampler("euler", steps=4, spacing="optimized").sigmas(EDMSchedule())


@pytest.fixture(scope="module")
def searched(tiny_run, tmp_path_factory):
    """A copy of the tiny run's checkpoint with levels searched at NFE 3 (8 samples, 4 evaluations)."""
    folder = tmp_path_factory.mktemp("searched")
    ckpt = folder / "last.ckpt"
    shutil.copy(tiny_run.ckpt, ckpt)
    rows = search_steps.run(search_steps.build_parser().parse_args(
        [str(ckpt), "--nfe", "3", "--samplers", "dpmpp_2m_sde", "--n", "8", "--evaluations", "4", "--first-step", "network", "analytic"]))
    return ckpt, rows


def test_search_steps_writes_the_levels_beside_the_checkpoint(searched):
    ckpt, rows = searched
    path = levels_path(ckpt, sampler_from_conf("dpmpp_2m_sde", 3))
    assert path.name == "last.dpmpp_2m_sde.nfe3.levels.json" and path.parent == ckpt.parent
    record = json.loads(path.read_text())
    assert record["levels"] == rows[0]["levels"] and len(record["levels"]) == 3 and record["evaluations"] <= 4
    assert record["objective"]["searched"] <= record["objective"]["karras"]
    assert record["reference"] == "training images" and record["n"] == 8 and record["search_seconds"] > 0
    assert read_levels(ckpt, Sampler("dpmpp_2m_sde", steps=3, spacing="optimized")) == record["levels"]
    # with the analytic first step: four levels for the same 3 evaluations, in a file of their own
    afs = Sampler("dpmpp_2m_sde", steps=4, spacing="optimized", analytic_first_step=True)
    record = json.loads(levels_path(ckpt, afs).read_text())
    assert record["analytic_first_step"] and record["nfe"] == 3 and len(record["levels"]) == 4
    assert read_levels(ckpt, afs) == record["levels"] == rows[1]["levels"]


def test_a_search_run_again_never_replaces_levels_with_worse_ones(searched, tmp_path, capsys):
    """Run again with a budget too small to reach the levels already in the file (1 evaluation: Karras'), the search
    keeps the file; with room for them (2), it starts from them, so what it writes scores no worse under its own
    objective than the levels it replaces."""
    ckpt, _ = searched
    copy = tmp_path / "last.ckpt"
    shutil.copy(ckpt, copy)
    plain = sampler_from_conf("dpmpp_2m_sde", 3)
    shutil.copy(levels_path(ckpt, plain), levels_path(copy, plain))
    before = levels_path(copy, plain).read_text()

    def search(evaluations):
        return search_steps.run(search_steps.build_parser().parse_args(
            [str(copy), "--nfe", "3", "--samplers", "dpmpp_2m_sde", "--n", "8", "--evaluations", str(evaluations)]))

    assert search(1) == [] and levels_path(copy, plain).read_text() == before
    assert "kept them" in capsys.readouterr().out
    old = json.loads(before)["levels"]
    (row,) = search(2)
    record = json.loads(levels_path(copy, plain).read_text())
    history = {tuple(entry["levels"]): entry["objective"] for entry in record["history"]}
    assert tuple(old) in history and row["searched"] <= history[tuple(old)]
    assert record["also_started_from"] == [{"file": levels_path(copy, plain).name, "levels": old}]


def test_sampler_fid_compares_both_spacings_in_one_run(searched):
    ckpt, _ = searched
    rows = sampler_fid.run(sampler_fid.build_parser().parse_args([
        str(ckpt), "--n", "4", "--kid-subsets", "2", "--samplers", "dpmpp_2m_sde", "dpmpp_2m", "--nfe", "3",
        "--spacing", "karras", "optimized", "--first-step", "network", "analytic",
    ]))
    # dpmpp_2m has no levels at NFE 3: its optimized rows are skipped, not an error
    assert [(r["sampler"], r["spacing"], r["first_step"]) for r in rows] == [
        ("dpmpp_2m_sde", "karras", "network"), ("dpmpp_2m_sde", "optimized", "network"),
        ("dpmpp_2m_sde +AFS", "karras", "analytic"), ("dpmpp_2m_sde +AFS", "optimized", "analytic"),
        ("dpmpp_2m", "karras", "network"), ("dpmpp_2m +AFS", "karras", "analytic")]
    assert rows[0]["fid"] != rows[1]["fid"] and all(r["nfe"] == 3 for r in rows) and rows[2]["steps"] == 4


def test_sample_py_walks_the_searched_levels(searched, tmp_path):
    ckpt, rows = searched
    proc = run_script("sample.py", f"ckpt={ckpt}", "n=4", f"out={tmp_path / 'a'}", "sampler=dpmpp_2m_sde", "steps=3",
                      "sampler.spacing=optimized")
    assert proc.returncode == 0, describe(proc)
    assert "spacing=optimized, nfe=3" in proc.stdout
    # no levels for 4 steps: one line naming the command that searches them
    with pytest.raises(ConfigError, match=f"run python -m diffusion.tools.search_steps {ckpt} --samplers dpmpp_2m_sde --nfe 4"):
        with_searched_levels(Sampler("dpmpp_2m_sde", steps=4, spacing="optimized"), ckpt)


def test_levels_of_another_version_of_the_checkpoint_are_refused(searched, tmp_path):
    ckpt, _ = searched
    changed = tmp_path / "last.ckpt"
    shutil.copy(ckpt, changed)
    three = sampler_from_conf("dpmpp_2m_sde", 3)
    shutil.copy(levels_path(ckpt, three), levels_path(changed, three))
    with open(changed, "ab") as handle:
        handle.write(b"\0")  # last.ckpt overwritten by a later step
    with pytest.raises(ConfigError, match="searched for another version of last.ckpt"):
        with_searched_levels(Sampler("dpmpp_2m_sde", steps=3, spacing="optimized"), changed)


def test_the_fid_callback_searches_levels_for_the_weights_it_measures(tmp_path):
    """A run with a second FID sampler at spacing: optimized logs val/fid_nfe3, and each fid_nfe3.json entry holds
    the levels its samples walked and what the search cost."""
    from conftest import write_sprites

    write_sprites(tmp_path / "data")
    run = tmp_path / "run"
    proc = run_script(
        "train.py", "data=sprites", f"data.dir={tmp_path / 'data'}", f"hydra.run.dir={run}",
        "+sampler@callbacks.fid.samplers.nfe3=dpmpp_2m_sde", "callbacks.fid.samplers.nfe3.steps=3",
        "callbacks.fid.samplers.nfe3.spacing=optimized", "callbacks.fid.search_samples=8", "callbacks.fid.search_evaluations=3",
    )
    assert proc.returncode == 0, describe(proc)
    history = json.loads((run / "fid_nfe3.json").read_text())["history"]
    assert history and all(len(entry["levels"]) == 3 and entry["search_seconds"] > 0 for entry in history)
    assert all(entry["search_fid"] <= entry["search_fid_karras"] for entry in history)
    assert "spacing=optimized" in history[0]["sampler"]



def test_max_share_is_a_share_or_zero_written_any_way(capsys):
    parse = search_steps.build_parser().parse_args
    assert [parse(["last.ckpt", "--max-share", text]).max_share for text in ("0", "0.0", "0e0", "0.05")] == [0, 0, 0, 0.05]
    for bad in ("1.5", "-0.1", "five"):
        with pytest.raises(SystemExit):
            parse(["last.ckpt", "--max-share", bad])
        assert "--max-share" in capsys.readouterr().err
