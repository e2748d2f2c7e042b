"""Distribution matching distillation (diffusion/core/distribution_matching.py, ``experiment=dmd``).

The closed form used: for Gaussian data N(0, v I) the exact denoiser is D(x, sigma) = v / (v + sigma^2) x, so a
teacher, a student and a fake score of that family, each with one weight (its v), make DMD a problem in two
numbers whose answer is known: the generator's samples must end with the data's variance.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import describe, raises_config_error, run_script, write_sprites
from test_consistency import save_teacher, tiny_module
from torch import nn

from diffusion.core.denoiser import Denoiser
from diffusion.core.distribution_matching import DistributionMatching
from diffusion.core.objectives import EDMPreconditioning
from diffusion.core.schedules import EDMSchedule
from diffusion.training.checkpoints import TeacherCheckpoint, initialize_from, module_from_checkpoint

SD = 0.5
SHAPE = (3, 4, 4)


class GaussianNet(nn.Module):
    """The raw network F that makes EDM's preconditioned D(x, sigma) the exact denoiser of N(0, v I) data, v = exp(log_v)
    a weight: it undoes c_in and c_noise (EDM's ln(sigma) / 4) and returns (D - c_skip x) / c_out."""

    def __init__(self, variance: float):
        super().__init__()
        self.objective = EDMPreconditioning(SD)
        self.log_v = nn.Parameter(torch.tensor(math.log(variance)))

    def forward(self, x_in, c_noise, labels=None):
        sigma = (4 * c_noise).exp().view(-1, 1, 1, 1)
        x = x_in / self.objective.c_in(sigma)
        v = self.log_v.exp()
        return (v / (v + sigma**2) * x - self.objective.c_skip(sigma) * x) / self.objective.c_out(sigma)


def gaussian(variance: float) -> Denoiser:
    return Denoiser(GaussianNet(variance), EDMPreconditioning(SD), EDMSchedule())


def generated_std(student: Denoiser, method: DistributionMatching, n: int = 4096) -> float:
    z = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return float(student(z * math.sqrt(method.levels[0] ** 2 + 1), torch.tensor(method.levels[0])).std())


def distil(steps: int = 750, fake_updates: int = 4) -> tuple[Denoiser, DistributionMatching]:
    """The student starts as the teacher (data variance 1/4), whose one-step sample D(x_T, 80) is nearly 0."""
    torch.manual_seed(0)
    teacher = gaussian(SD**2).requires_grad_(False)
    student = gaussian(SD**2)
    method = DistributionMatching(teacher=lambda: teacher, mid=0, fake_updates=fake_updates)
    method.check(student)
    optimizer = torch.optim.Adam([*student.parameters(), *method.parameters()], lr=0.1)
    x0 = torch.zeros(128, *SHAPE)
    for step in range(steps):
        optimizer.zero_grad()
        method(student, x0, None, step=step).mean().backward()
        optimizer.step()
    return student, method


def test_the_generator_matches_the_teachers_distribution():
    """From the teacher's one-step sample (std 0.003) to the data's std 0.5: the fixed point of DMD's gradient is the
    teacher's distribution (a wrong sign of the score difference, or a fake score that does not learn, fails), reached
    with DMD2's two time-scale rule (the default; BENCHMARKS.md, "Distribution matching distillation", has this
    problem with other ratios: at 1:1 the generator does not settle)."""
    student, method = distil(steps=0)
    assert generated_std(student, method) < 0.01
    student, method = distil()
    assert generated_std(student, method) == pytest.approx(SD, rel=0.05)
    # the fake score learned the generator's distribution (its variance, not the student's weight, about 40)
    assert float(method.fake.net.log_v.detach().exp()) == pytest.approx(generated_std(student, method) ** 2, rel=0.2)


def test_the_two_time_scale_rule_updates_the_generator_every_few_steps():
    teacher = gaussian(SD**2).requires_grad_(False)
    student = gaussian(SD**2)
    method = DistributionMatching(teacher=lambda: teacher, mid=0, fake_updates=2)
    method.check(student)
    x0 = torch.zeros(8, *SHAPE)
    for step in range(6):
        for p in [*student.parameters(), *method.parameters()]:
            p.grad = None
        method(student, x0, None, step=step).mean().backward()
        # no gradient at all (not a zero one, which Adam's momentum would still act on) between generator steps
        assert (student.net.log_v.grad is not None) == (step % 3 == 2), step
        assert method.fake.net.log_v.grad is not None and teacher.net.log_v.grad is None


def test_the_generators_gradient_is_dmds_closed_form():
    """d L_G / d x = (D_fake(x_t, t) - D_real(x_t, t)) / mean|x - D_real(x_t, t)| / pixels, x_t = x + t n, for Gaussian
    denoisers of variance 1/4 (teacher) and 1 (fake score): the score difference, its sign, DMD's w_t and the level."""
    teacher, fake = gaussian(SD**2), gaussian(1.0)
    method = DistributionMatching(teacher=lambda: teacher, mid=0)
    method.check(fake)
    x = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    method.matching_loss(x, None, torch.Generator().manual_seed(5)).sum().backward()
    g = torch.Generator().manual_seed(5)  # the same draws: t, then n
    t = EDMSchedule().sample_sigma(16, generator=g).view(-1, 1, 1, 1)
    x_t = x.detach() + t * torch.randn(x.shape, generator=g)
    real, fake_d = SD**2 / (SD**2 + t**2) * x_t, 1 / (1 + t**2) * x_t
    expected = (fake_d - real) / (x.detach() - real).abs().mean(dim=(1, 2, 3), keepdim=True) / x[0].numel()
    torch.testing.assert_close(x.grad, expected, rtol=1e-4, atol=1e-9)


def test_later_levels_start_from_the_generators_own_sample():
    """DMD2's backward simulation: at the second level the input is D(x_T, sigma_0) + sigma_1 n, as the 2-step
    consistency sampler makes it, with x_T = sqrt(sigma_0^2 + 1) z as sampling starts."""
    student = gaussian(1e4)  # D(x_T, 80) = 0.61 x_T: a sample of order 50, which a wrong input could not hide
    method = DistributionMatching(teacher=lambda: student, mid=0.821)
    method.check(student)
    assert method.levels == [80.0, 0.821]
    z = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(0))
    level = torch.arange(64) % 2
    inputs = method.generator_inputs(student, z, level, None, torch.Generator().manual_seed(1))
    n = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    x_T = z * math.sqrt(80**2 + 1)
    torch.testing.assert_close(inputs[level == 0], x_T[level == 0])
    with torch.no_grad():
        expected = student(x_T, torch.tensor(80.0)) + 0.821 * n
    torch.testing.assert_close(inputs[level == 1], expected[level == 1])


def test_bad_settings_are_one_line():
    message = raises_config_error(tiny_module, "experiment=dmd")
    assert "needs its teacher" in message and "init_from=" in message and "\n" not in message
    for kwargs, words in (({"levels": [0.5, 80]}, "descending"), ({"mid": -1}, "mid"), ({"fake_updates": -1}, "fake_updates"),
                          ({"teacher": None}, "teacher")):
        message = raises_config_error(DistributionMatching, **{"teacher": lambda: None, **kwargs})
        assert words in message and "\n" not in message
    message = raises_config_error(DistributionMatching(teacher=lambda: None, mid=100).check, gaussian(1.0))
    assert "sigma_max" in message and "\n" not in message
    # the levels as Hydra gives them (a ListConfig), and the example of the message itself
    assert tiny_module("experiment=dmd", "init_from=x.ckpt", "training.method.levels=[80,0.821]").method.levels == [80, 0.821]
    # eps-prediction's one-step sample multiplies the network's error by sigma_max
    message = raises_config_error(tiny_module, "experiment=dmd", "init_from=x.ckpt", "objective=eps", "schedule=linear")
    assert "bounded c_out" in message and "\n" not in message


def test_a_flow_teacher_starts_the_student_and_the_fake_score(tmp_path):
    """init_from loads the teacher's weights into the student; the fake score, which the teacher's checkpoint lacks,
    takes them at the first step; checkpoints hold the fake score but not the teacher; a DMD student is no teacher."""
    torch.manual_seed(0)
    teacher = save_teacher(tiny_module("objective=flow", "schedule=flow"), tmp_path / "flow.ckpt")
    student = tiny_module("experiment=dmd", "objective=flow", "schedule=flow", f"init_from={teacher}")
    initialize_from(student, teacher)
    assert isinstance(student.method, DistributionMatching)
    x0 = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    loss = student.method(student.denoiser, x0, torch.tensor([0, 1, 2, 5]), step=0)
    for name, value in student.method.teacher(x0).state_dict().items():
        assert torch.equal(student.method.fake.state_dict()[name], value), name
    loss.mean().backward()
    assert torch.isfinite(loss).all()
    names = list(student.state_dict())
    assert any(n.startswith("method.fake.") for n in names) and "method.fake_started" in names
    assert not any("teacher" in n for n in names)
    path = save_teacher(student, tmp_path / "dmd.ckpt")
    restored = module_from_checkpoint(torch.load(path, weights_only=True))
    assert float(restored.method.fake_started) == 1
    message = raises_config_error(TeacherCheckpoint(path))
    assert "few-step model" in message and "\n" not in message


@pytest.mark.slow
def test_a_resumed_distillation_ends_as_the_whole_run(tmp_path):
    """The fake score, its start flag, the optimizer's state for both networks and the two time-scale cycle come back
    from the checkpoint: stopped at step 7 (inside a cycle of 5) and resumed, the run ends with the whole run's bits."""
    torch.manual_seed(0)
    teacher = save_teacher(tiny_module("objective=flow", "schedule=flow"), tmp_path / "flow.ckpt")
    data = write_sprites(tmp_path / "sprites")
    common = ["data=sprites", f"data.dir={data}", "experiment=dmd", "objective=flow", "schedule=flow", f"init_from={teacher}",
              "network.dropout=0.1", "trainer.max_epochs=-1", "validation.fraction=null", "validation.every_n_steps=6",
              "callbacks.fid.every_n_steps=6", "callbacks.fid.fraction=null"]
    for run, steps, resume in (("whole", 12, []), ("part", 7, []), ("part", 12, ["ckpt_path=last"])):
        proc = run_script("train.py", *common, f"trainer.max_steps={steps}", *resume, f"hydra.run.dir={tmp_path / run}")
        assert proc.returncode == 0, describe(proc)
    whole, part = (torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True) for run in ("whole", "part"))
    assert whole["global_step"] == part["global_step"] == 12
    # the trained fake score started as the teacher, not as the random network it was built as (the EMA's swap
    # during the first validation must not take the copy)
    taught = torch.load(teacher, weights_only=True)["state_dict"]
    for name, value in taught.items():
        if name.startswith("denoiser.net.") and value.ndim > 1:
            fake = whole["current_model_state"]["method.fake." + name.removeprefix("denoiser.")]
            assert (fake - value).abs().max() < 0.1 * value.abs().max() + 1e-3, name
    for key in ("state_dict", "current_model_state"):
        assert any(name.startswith("method.fake.") for name in whole[key])
        assert [n for n, v in whole[key].items() if not torch.equal(v, part[key][n])] == [], key
    whole_fid, part_fid = ([{k: v for k, v in row.items() if k != "seconds"}
                            for row in json.loads((tmp_path / run / "fid.json").read_text())["history"]] for run in ("whole", "part"))
    assert len(whole_fid) == 2 and whole_fid == part_fid


@pytest.mark.slow
def test_ddp_takes_the_steps_that_leave_the_students_weights_without_gradients(tmp_path):
    """Plain DDP stops on weights that get no gradient (the fake-score steps); train.py runs such a method with
    find_unused_parameters, and the student still moves only on generator steps."""
    torch.manual_seed(0)
    teacher = save_teacher(tiny_module("objective=flow", "schedule=flow"), tmp_path / "flow.ckpt")
    proc = run_script("train.py", "data=sprites", f"data.dir={write_sprites(tmp_path / 'sprites')}", "experiment=dmd",
                      "objective=flow", "schedule=flow", f"init_from={teacher}", "trainer=ddp", "trainer.devices=1",
                      "trainer.accelerator=cpu", "trainer.max_steps=6", "trainer.max_epochs=-1", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, describe(proc)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
