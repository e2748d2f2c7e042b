"""Easy Consistency Tuning (diffusion/core/consistency_tuning.py), the consistency sampler and ``init_from``.

The closed form used throughout: for a one-point data set {y}, every probability-flow ODE trajectory ends at y,
so the exact consistency function is f(x, t) = y for every x and t > 0 (and f(x, 0) = x).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_MODEL, compose_config, describe, raises_config_error, run_script, write_sprites
from torch import nn

from diffusion.core.consistency_tuning import (
    ConsistencyDistillation,
    ConsistencyTuning,
    dpm_solver_path,
    ect_r,
    pseudo_huber,
)
from diffusion.core.denoiser import Denoiser
from diffusion.core.objectives import EDMPreconditioning, EpsPrediction, FlowMatching, VPrediction, X0Prediction
from diffusion.core.samplers.consistency import sample_consistency
from diffusion.core.schedules import EDMSchedule, FlowSchedule, LinearSchedule
from diffusion.training.builders import build_module, sampler_from_conf
from diffusion.training.checkpoints import TeacherCheckpoint, initialize_from, load_checkpoint, module_from_checkpoint

SD = 0.5


class OnePointNet(nn.Module):
    """The raw network F that makes the preconditioned D(x, t) equal to y for every x and t: it undoes c_in and
    c_noise (``level`` is c_noise's inverse) and returns (y - c_skip x) / c_out. ``offset`` and ``drift`` * t are
    added to that D (wrong consistency functions with a known loss); ``drift`` is a weight, 0 at the exact function."""

    def __init__(self, y: torch.Tensor, offset: float = 0.0, objective=None, level=None):
        super().__init__()
        self.y, self.offset = y, offset
        self.objective = objective or EDMPreconditioning(SD)
        self.level = level or (lambda c_noise: (4 * c_noise).exp())  # EDM's c_noise = ln(t) / 4
        self.drift = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x_in, c_noise, labels=None):
        t = self.level(c_noise.double()).view(-1, 1, 1, 1)
        x = x_in.double() / self.objective.c_in(t)
        return (self.y + self.offset + self.drift * t - self.objective.c_skip(t) * x) / self.objective.c_out(t)


def one_point(offset: float = 0.0, preconditioning: str = "edm"):
    """The one-point set's exact consistency function (plus ``offset``) under EDM's or rectified flow's
    preconditioning (flow: c_noise = t_flow = sigma / (1 + sigma))."""
    y = torch.linspace(-1, 1, 3 * 4 * 4, dtype=torch.float64).reshape(1, 3, 4, 4)
    if preconditioning == "flow":
        objective, schedule = FlowMatching(), FlowSchedule()
        return y, Denoiser(OnePointNet(y, offset, objective, lambda c: c / (1 - c)), objective, schedule)
    return y, Denoiser(OnePointNet(y, offset), EDMPreconditioning(SD), EDMSchedule())


# ------------------------------------------------------------------------------------ the mapping r(t)


def test_mapping_function_is_ects():
    t = torch.logspace(-3, 2, 200, dtype=torch.float64)
    previous = torch.zeros_like(t)
    for stage in range(12):
        r = ect_r(t, stage)
        assert (r >= 0).all() and (r < t).all()
        assert (r >= previous).all()  # every stage moves r towards t
        previous = r
    # At stage 11 t - r is at most n(0) / q^12 = (1 + 8 / 2) / 2^12 of t: r -> t.
    assert ((t - previous) / t).max() <= 5 / 2**12
    # The closed form at one point: r / t = 1 - (1 + 8 sigmoid(-2)) / 2^(stage + 1), stage 2, t = 2.
    expected = 2 * (1 - (1 + 8 / (1 + math.e**2)) / 2**3)
    assert ect_r(torch.tensor([2.0], dtype=torch.float64), 2).item() == pytest.approx(expected, rel=1e-12)
    # Stage 0 at small t: n(t) = 1 + 8 * 0.5 > 2, so r is clamped to 0 (the denoising loss).
    assert ect_r(torch.tensor([1e-3]), 0).item() == 0


# -------------------------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("preconditioning", ["edm", "flow"])
def test_loss_is_zero_for_the_exact_consistency_function(preconditioning):
    y, f = one_point(preconditioning=preconditioning)
    x0 = y.expand(64, -1, -1, -1)
    method = ConsistencyTuning(stage_steps=1000)
    for step in (0, 1000, 5000):  # r = 0 for some samples at stage 0, r close to t later
        loss = method(f, x0, step=step, generator=torch.Generator().manual_seed(step))
        assert loss.shape == (64,)
        t = method.sample_t(64, generator=torch.Generator().manual_seed(step))
        distance = loss * (t - ect_r(t, method.stage(step)))  # ||f(x_t) - f(x_r)||, float32 rounding only
        assert distance.abs().max() < 1e-5 * y.norm()


@pytest.mark.parametrize("preconditioning", ["edm", "flow"])
def test_loss_of_a_wrong_consistency_function_has_its_closed_form(preconditioning):
    """f = y + a for t > 0: f(x_t) - f(x_r) is 0 where r > 0 and a where r = 0 (the target is x0 = y there), so the
    per-sample loss is ||a|| / t exactly where r = 0, and 0 elsewhere."""
    a = 0.1
    y, f = one_point(offset=a, preconditioning=preconditioning)
    x0 = y.expand(256, -1, -1, -1)
    method = ConsistencyTuning()
    loss = method(f, x0, step=0, generator=torch.Generator().manual_seed(0))
    t = method.sample_t(256, generator=torch.Generator().manual_seed(0)).double()
    at_zero = ect_r(t, 0) == 0
    assert 0 < at_zero.sum() < 256  # both cases present
    norm = a * math.sqrt(y.numel())
    torch.testing.assert_close(loss[at_zero].double(), norm / t[at_zero], rtol=1e-4, atol=0)
    assert loss[~at_zero].abs().max() < 1e-3
    # iCT's pseudo-Huber: sqrt(||d||^2 + c^2) - c.
    assert pseudo_huber(torch.full((1, 48), a), 0.2).item() == pytest.approx(math.sqrt(norm**2 + 0.04) - 0.2)


def test_target_is_a_stopped_gradient():
    """Only f(x_t, t) carries the gradient. With f = y + w t (w > 0) and r > 0, the loss is ||w (t - r) 1|| / (t - r);
    through f(x_t) alone its gradient in w is t sqrt(d) / (t - r) per sample, through both sides it would be sqrt(d)."""
    y, f = one_point()
    x0 = y.expand(8, -1, -1, -1)
    method = ConsistencyTuning(stage_steps=1)
    with torch.no_grad():
        f.net.drift.fill_(0.5)
    loss = method(f, x0, step=3, generator=torch.Generator().manual_seed(0))  # stage 3: r >= t (1 - 5 / 16) > 0
    loss.sum().backward()
    t = method.sample_t(8, generator=torch.Generator().manual_seed(0)).double()
    r = ect_r(t, 3)
    assert (r > 0).all()
    expected = (t * math.sqrt(y.numel()) / (t - r)).sum()
    torch.testing.assert_close(f.net.drift.grad, expected, rtol=1e-3, atol=0)


def test_consistency_tuning_takes_a_preconditioning_with_the_boundary_condition():
    """f(x, 0) = x for every network needs c_skip(0) = 1 and c_out(0) = 0 (not x0-prediction's), a well-conditioned
    one-step sample a bounded c_out (not eps-prediction's c_out = -sigma; EDM's tends to sigma_data, which may exceed
    1), and ECT's own levels a schedule of any sigma."""
    method = ConsistencyTuning()
    for objective, schedule in ((EDMPreconditioning(), EDMSchedule()), (FlowMatching(), FlowSchedule()), (VPrediction(), EDMSchedule()),
                                (EDMPreconditioning(sigma_data=2.0), EDMSchedule()),
                                (EDMPreconditioning(sigma_data=2.0), EDMSchedule(sigma_max=1.0))):
        method.check(Denoiser(nn.Identity(), objective, schedule))
    message = raises_config_error(method.check, Denoiser(nn.Identity(), X0Prediction(), EDMSchedule()))
    assert "objective=x0" in message and "objective=flow" in message and "\n" not in message
    message = raises_config_error(method.check, Denoiser(nn.Identity(), EpsPrediction(), EDMSchedule()))
    assert "objective=eps" in message and "bounded c_out" in message and "80" in message and "\n" not in message
    for sigma_max in (1.0, 3.0e38):  # below the probe's scale, and where c_out overflows
        message = raises_config_error(method.check, Denoiser(nn.Identity(), EpsPrediction(), EDMSchedule(sigma_max=sigma_max)))
        assert "bounded c_out" in message
    message = raises_config_error(method.check, Denoiser(nn.Identity(), EDMPreconditioning(), LinearSchedule()))
    assert "LinearSchedule" in message and "schedule=edm" in message and "\n" not in message


# ------------------------------------------------------------------------------ consistency distillation
# On Gaussian data x0 ~ N(0, s^2) the denoiser is exact, D(x, sigma) = x s^2 / (s^2 + sigma^2), the ODE through x at
# level t passes x sqrt(s^2 + r^2) / sqrt(s^2 + t^2) at r, and the exact consistency function is
# f(x, t) = x s / sqrt(s^2 + t^2). Unlike the one-point set, x0 + r eps is *not* on x_t's trajectory here, so
# distillation (the teacher's path) and tuning (the same noise direction) give different targets.

S = 0.5


def gaussian_denoiser(x, sigma, labels=None):
    sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
    return x * S**2 / (S**2 + sigma**2)


def gaussian_consistency(x, t, labels=None):
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1, 1)
    return x * S / (S**2 + t**2).sqrt()


def test_teacher_path_is_a_second_order_solution():
    """Against the closed form x_t sqrt(s^2 + r^2) / sqrt(s^2 + t^2): doubling the steps divides the error by
    about 4 (2nd order; DDIM's would halve it), and r = 0 ends at the solution (within sigma_min)."""
    t = torch.tensor([80.0, 5.0, 1.0, 0.3], dtype=torch.float64)
    r = torch.tensor([20.0, 0.5, 0.0, 0.1], dtype=torch.float64)
    x_t = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * (S**2 + t**2).sqrt().view(-1, 1, 1, 1)
    exact = x_t * ((S**2 + r**2) / (S**2 + t**2)).sqrt().view(-1, 1, 1, 1)
    errors = [(dpm_solver_path(gaussian_denoiser, x_t, t, r, n, 0.002) - exact).flatten(1).norm(dim=1) / exact.flatten(1).norm(dim=1)
              for n in (4, 8, 16)]
    assert (errors[2] < 1e-2).all(), errors[2]
    ratio = errors[1] / errors[2]
    assert (ratio > 3.3).all() and (ratio < 4.5).all(), ratio
    # one step from 5 to 0.5, a hop of ECT's first stages: 10% off (a Heun step in sigma lands 120% off)
    one = dpm_solver_path(gaussian_denoiser, x_t, t, r, 1, 0.002)
    assert (one[1] - exact[1]).norm() / exact[1].norm() < 0.11


def test_distillation_targets_the_teachers_trajectory():
    """With the exact teacher and the exact consistency function, distillation's loss is ~0 at every stage (r = 0
    and r -> t alike): f(x_r, r) is where f(x_t, t) already is, up to the teacher path's discretisation. Tuning's
    target x0 + r eps is off that trajectory: its loss is large for the same function."""
    x0 = torch.randn(256, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * S

    def distance(method, stage):  # ||f(x_t, t) - f(x_r, r)|| / ||f(x_t, t)|| per sample (f(x_t, t) ~ N(0, s^2))
        loss = method(gaussian_consistency, x0, step=stage, generator=torch.Generator().manual_seed(stage))
        t = method.sample_t(256, generator=torch.Generator().manual_seed(stage))
        return loss * (t - ect_r(t, stage)) / (S * math.sqrt(x0[0].numel()))

    cd = ConsistencyDistillation(teacher=lambda: gaussian_denoiser, teacher_steps=16, stage_steps=1)
    ect = ConsistencyTuning(stage_steps=1)
    for stage, bound in ((0, 2e-2), (2, 1e-4)):  # stage 0: hops to r = 0 through sigma_min, the widest
        assert distance(cd, stage).max() < bound
        assert distance(ect, stage).median() > 0.1
    # one step suffices once r is close to t (the last stages)
    one_step = ConsistencyDistillation(teacher=lambda: gaussian_denoiser, teacher_steps=1, stage_steps=1)
    assert distance(one_step, 8).max() < 1e-5 and distance(ect, 8).median() > 1e-3


def test_distillation_needs_its_teacher_and_keeps_it_out_of_the_model(tmp_path):
    message = raises_config_error(tiny_module, "experiment=cd")
    assert "init_from=" in message and "\n" not in message
    teacher = save_teacher(tiny_module("schedule=edm", "objective=edm"), tmp_path / "teacher.ckpt")
    student = tiny_module("experiment=cd", f"init_from={teacher}")
    assert isinstance(student.method, ConsistencyDistillation)
    frozen = student.method.teacher(torch.zeros(1))
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    # not the student's: no optimizer, EMA or checkpoint holds the teacher
    assert all(not name.startswith("method.") for name in student.state_dict())
    assert {id(p) for p in frozen.parameters()}.isdisjoint(id(p) for p in student.parameters())
    assert isinstance(TeacherCheckpoint(teacher)(), Denoiser)
    # a consistency model is no teacher: its output is not a denoiser whose ODE the path follows
    tuned = save_teacher(tiny_module("experiment=ect"), tmp_path / "ect.ckpt")
    message = raises_config_error(TeacherCheckpoint(tuned))
    assert "few-step model" in message and "\n" not in message


def test_a_flow_model_is_a_teacher_by_the_same_path(tmp_path):
    """experiment=cd with objective=flow schedule=flow on the command line: the student keeps the flow
    preconditioning (its c_skip(0) = 1, c_out(0) = 0) and starts from the flow teacher, which the method follows."""
    torch.manual_seed(0)
    teacher = save_teacher(tiny_module("objective=flow", "schedule=flow"), tmp_path / "flow.ckpt")
    student = tiny_module("experiment=cd", "objective=flow", "schedule=flow", f"init_from={teacher}")
    assert isinstance(student.method, ConsistencyDistillation)
    assert isinstance(student.denoiser.objective, FlowMatching) and isinstance(student.denoiser.schedule, FlowSchedule)
    initialize_from(student, teacher)
    frozen = student.method.teacher(torch.zeros(1))
    assert isinstance(frozen.objective, FlowMatching)
    for name, value in frozen.state_dict().items():
        assert torch.equal(student.denoiser.state_dict()[name], value), name
    x0 = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = torch.tensor([0, 1, 2, 5])  # 5: the null class
    loss = student.method(student.denoiser, x0, labels, step=0, generator=torch.Generator().manual_seed(0))
    loss.mean().backward()
    assert torch.isfinite(loss).all() and (loss > 0).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in student.parameters())


# ----------------------------------------------------------------------------------------- the sampler


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sampler_lands_on_the_point(steps):
    y, f = one_point()
    calls = []

    def counted(x, sigma):
        calls.append((x.clone(), float(sigma)))
        return f(x, sigma)

    sampler = sampler_from_conf("consistency", steps)
    sigmas = sampler.sigmas(EDMSchedule())
    x = torch.randn(16, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    out = sample_consistency(counted, x, sigmas, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, y.expand_as(out).float(), rtol=0, atol=1e-5)
    assert len(calls) == steps == sampler.nfe
    assert calls[0][1] == pytest.approx(80)
    if steps == 2:  # the CM papers' 2-step levels, and the noise added back at the second one
        assert calls[1][1] == pytest.approx(0.821)
        assert (calls[1][0] - y).std().item() == pytest.approx(0.821, rel=0.2)


# ---------------------------------------------------------------------------------------------- init_from


def tiny_module(*overrides: str):
    cfg = compose_config("train", [*TINY_MODEL, "paths.output_dir=.", *overrides])
    return build_module(cfg, 5, 16, [f"c{i}" for i in range(5)])


def save_teacher(module, path):
    torch.save({"state_dict": module.state_dict(), "diffusion": module.checkpoint_info()}, path)
    return path


def test_init_from_loads_the_teachers_weights(tmp_path):
    torch.manual_seed(0)
    teacher = tiny_module("schedule=edm", "objective=edm")
    path = save_teacher(teacher, tmp_path / "teacher.ckpt")
    torch.manual_seed(1)
    student = tiny_module("experiment=ect")
    assert isinstance(student.method, ConsistencyTuning)
    key = "denoiser.net.out.weight" if "denoiser.net.out.weight" in student.state_dict() else next(iter(student.state_dict()))
    assert not torch.equal(student.state_dict()[key], teacher.state_dict()[key])
    initialize_from(student, path)
    for name, value in teacher.state_dict().items():
        assert torch.equal(student.state_dict()[name], value), name


def test_init_from_refuses_another_objective_or_model(tmp_path):
    student = tiny_module("experiment=ect")
    eps = save_teacher(tiny_module(), tmp_path / "eps.ckpt")  # the default: linear schedule, eps objective
    message = raises_config_error(initialize_from, student, eps)
    assert "objective" in message and "EpsPrediction" in message and "\n" not in message
    wider = save_teacher(tiny_module("schedule=edm", "objective=edm", "network.base_channels=16"), tmp_path / "wide.ckpt")
    message = raises_config_error(initialize_from, student, wider)
    assert "different model config" in message and "\n" not in message


@pytest.mark.slow
def test_ect_fine_tunes_a_trained_edm_model(tmp_path):
    """A tiny EDM run, then `experiment=ect init_from=...`: checkpoints and a final grid appear, and with a
    vanishing learning rate the fine-tuned weights are still the teacher's (the run started from them)."""
    data = write_sprites(tmp_path / "sprites")
    common = ["data=sprites", f"data.dir={data}", "callbacks.fid.fraction=0"]
    teacher = run_script("train.py", *common, "schedule=edm", "objective=edm", f"hydra.run.dir={tmp_path / 'teacher'}")
    assert teacher.returncode == 0, describe(teacher)
    ckpt = tmp_path / "teacher" / "checkpoints" / "last.ckpt"
    student = run_script(
        "train.py", *common, "experiment=ect", f"init_from={ckpt}", "trainer.max_steps=2", "optimizer.lr=1e-12",
        f"hydra.run.dir={tmp_path / 'ect'}",
    )
    assert student.returncode == 0, describe(student)
    run = tmp_path / "ect"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "samples" / "final.png").is_file()
    start = torch.load(ckpt, weights_only=True)["state_dict"]
    tuned = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert tuned["diffusion"]["config"]["module"]["method"]["_target_"] == "diffusion.core.consistency_tuning.ConsistencyTuning"
    for name, value in start.items():
        torch.testing.assert_close(tuned["current_model_state"][name], value, rtol=0, atol=1e-6, msg=name)
    # consistency distillation from the same teacher: it trains, and its checkpoint holds no teacher weights
    distilled = run_script("train.py", *common, "experiment=cd", f"init_from={ckpt}", "trainer.max_steps=2",
                           f"hydra.run.dir={tmp_path / 'cd'}")
    assert distilled.returncode == 0, describe(distilled)
    state = torch.load(tmp_path / "cd" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["diffusion"]["config"]["module"]["method"]["_target_"].endswith("ConsistencyDistillation")
    assert set(state["state_dict"]) == set(start)
    # it loads for sampling without reading its teacher (whose file may be gone)
    ckpt.unlink()
    module = module_from_checkpoint(load_checkpoint(tmp_path / "cd" / "checkpoints" / "last.ckpt"))
    assert isinstance(module.method, ConsistencyDistillation)
