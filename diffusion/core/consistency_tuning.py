"""Easy Consistency Tuning (Geng et al. 2024, "Consistency Models Made Easy", ECT): a diffusion model fine-tuned
into a consistency model f(x_t, t) that maps any point of a probability-flow ODE trajectory to its start x0.

The consistency function is the pretrained model's preconditioned denoiser itself (``core.denoiser.Denoiser``), as in
ECT, which takes EDM's (``objectives.EDMPreconditioning``):

    f(x, t) = c_skip(t) x + c_out(t) F(c_in(t) x, c_noise(t)),
    c_skip = sd^2 / (t^2 + sd^2),  c_out = t sd / sqrt(t^2 + sd^2),

whose boundary condition f(x, 0) = x holds exactly (c_skip(0) = 1, c_out(0) = 0), so ECT needs no shift by a
sigma_min as in Song et al. 2023 (eq. 7). Rectified flow's (``objectives.FlowMatching``: c_skip = 1 - t_flow, c_out =
-t_flow, i.e. f = x_t - t_flow v) has it too, so a flow model is fine-tuned or distilled by the same code. Training pulls f(x_t, t) towards the stop-gradient f(x_r, r) on the same
noise direction, x_t = x0 + t eps and x_r = x0 + r eps, with r < t from the mapping function of ``ect_r``; where
r reaches 0 the target is x0 itself (the boundary condition), which is the diffusion model's own denoising loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffusion.core.denoiser import Denoiser
from diffusion.core.denoising_loss import noise_like
from diffusion.core.errors import ConfigError
from diffusion.core.schedules import EDMSchedule, log_normal


def ect_r(t: Tensor, stage: int, q: float = 2.0, k: float = 8.0, b: float = 1.0) -> Tensor:
    """ECT's mapping function (Geng et al. 2024, sec. 3, "Mapping function"):

        r / t = 1 - n(t) / q^(stage + 1),    n(t) = 1 + k * sigmoid(-b t),    r clamped at 0.

    Each stage divides t - r by q, so training moves from the diffusion model's denoising loss (r = 0) towards
    the continuous-time consistency condition (r -> t). n(t) widens the gap at small t, where it is small relative
    to the data. The stage is counted from 0 and the exponent is stage + 1, as in the authors' ``ECMLoss``.
    """
    ratio = 1 - (1 + k * torch.sigmoid(-b * t)) / q ** (stage + 1)
    return (t * ratio).clamp(min=0)


def pseudo_huber(diff: Tensor, c: float) -> Tensor:
    """Per-sample sqrt(||diff||^2 + c^2) - c (Song & Dhariwal 2023, iCT, eq. 9). With c = 0 it is the L2 norm
    ||diff||, ECT's default ("adaptive weighting" with p = 1/2 of the squared error)."""
    flat = diff.flatten(1)
    if c == 0:
        return torch.linalg.vector_norm(flat, dim=1)  # its gradient at 0 is 0, where sqrt(sum of squares) gives NaN
    return (flat.square().sum(1) + c**2).sqrt() - c


def check_one_step_generator(denoiser: Denoiser, method: str) -> None:
    """Refuse, in one line, a denoiser whose one-step sample D(x, sigma_max) is ill conditioned: a c_out that grows
    with sigma (eps-prediction's -sigma) multiplies the network's error by sigma_max there; EDM's (which tends to
    sigma_data), flow's and v's stay bounded. Probed far above sigma_max and any scale of the objective's own
    (sigma_data), where a bounded c_out has levelled off. Consistency models and distribution matching both need it."""
    objective, sigma_max = denoiser.objective, denoiser.schedule.sigma_max
    far = 1e4 * max(1.0, sigma_max)
    reach, further = (abs(float(objective.c_out(torch.tensor(s, dtype=torch.float64)))) for s in (far, 100 * far))
    if not (math.isfinite(further) and further <= 2 * reach):
        at_max = abs(float(objective.c_out(torch.tensor(sigma_max))))
        raise ConfigError(
            f"{method} needs a bounded c_out, but objective={objective.name}'s grows with sigma ({reach:.3g} at "
            f"{far:.3g}, {further:.3g} at {100 * far:.3g}); a one-step sample would scale the network's error by "
            f"{at_max:.3g} at sigma_max={sigma_max:g}; fine-tune a model trained with objective=edm or objective=flow"
        )


class ConsistencyTuning:
    """ECT's training loss, a callable like NVlabs EDM's loss classes:

        L = d(f(x_t, t), sg f(x_r, r)) / (t - r),   ln t ~ N(P_mean, P_std^2),   r = ``ect_r``(t, stage),

    with d the pseudo-Huber metric (``pseudo_huber``) and w(t, r) = 1 / (t - r) the weighting of ECT's
    ``ECMLoss``. Both evaluations of f share the noise direction and the dropout mask (the RNG is replayed).
    The stage advances every ``stage_steps`` optimiser steps.

    Args:
        P_mean, P_std: the log-normal distribution of t (ECT uses -1.1 and 2.0 on CIFAR-10).
        q, k, b: the mapping function's parameters (ECT: 2, 8, 1).
        c: the pseudo-Huber constant; 0 is ECT's L2 norm, iCT uses 0.00054 * sqrt(pixels).
        stage_steps: optimiser steps per stage of the mapping function.
    """

    few_step_student = True  # a teacher of a distillation it is not (``training.checkpoints.TeacherCheckpoint``)

    # keyword list one a line, as the schedules' (core/schedules.py says why `duplicates` pairs them)
    def __init__(
        self,
        P_mean: float = -1.1,
        P_std: float = 2.0,
        q: float = 2.0,
        k: float = 8.0,
        b: float = 1.0,
        c: float = 0.0,
        stage_steps: int = 1000,
    ):
        if not P_std > 0:
            raise ConfigError(f"training.method.P_std={P_std} must be > 0")
        if not q > 1:
            raise ConfigError(f"training.method.q={q} must be > 1 (t - r shrinks by q every stage)")
        if k < 0 or b < 0 or c < 0:
            raise ConfigError(f"training.method k={k}, b={b} and c={c} must be >= 0")
        if not (isinstance(stage_steps, int) and stage_steps >= 1):
            raise ConfigError(f"training.method.stage_steps={stage_steps} must be a positive integer")
        self.P_mean, self.P_std, self.q, self.k, self.b, self.c = float(P_mean), float(P_std), float(q), float(k), float(b), float(c)
        self.stage_steps = stage_steps

    def check(self, denoiser: Denoiser) -> None:
        """The consistency function is the run's preconditioned denoiser, so its boundary condition f(x, 0) = x holds
        for every network exactly when c_skip(0) = 1 and c_out(0) = 0 (not x0-prediction's c_skip = 0), and a one-step
        sample f(x, sigma_max) is well conditioned when c_out stays bounded in sigma (not eps-prediction's -sigma):
        EDM's, rectified flow's and v-prediction's preconditionings. ECT draws its own levels t in (0, inf), so the
        schedule must take any sigma (``EDMSchedule``: edm, flow; the VP schedules stop at their sigma_max)."""
        if not isinstance(denoiser.schedule, EDMSchedule):
            raise ConfigError(
                f"consistency tuning draws its own levels in (0, inf), which {type(denoiser.schedule).__name__} does not "
                "take; fine-tune a model trained with schedule=edm or schedule=flow"
            )
        objective, zero = denoiser.objective, torch.zeros(())
        c_skip, c_out = float(objective.c_skip(zero)), float(objective.c_out(zero))
        if c_skip != 1 or c_out != 0:
            raise ConfigError(
                f"consistency tuning needs f(x, 0) = x, i.e. c_skip(0) = 1 and c_out(0) = 0, but objective={objective.name} "
                f"has {c_skip:g} and {c_out:g}; fine-tune a model trained with objective=edm or objective=flow"
            )
        check_one_step_generator(denoiser, "consistency tuning")

    def stage(self, step: int) -> int:
        return step // self.stage_steps

    def sample_t(self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Tensor:
        return log_normal(n, self.P_mean, self.P_std, device, generator)

    # The signature of every training method (docs/architecture.md), repeated by design in denoising_loss.
    def __call__(
        self,
        denoiser: Denoiser,
        x0: Tensor,
        labels: Tensor | None = None,
        step: int = 0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-sample loss of a batch x0 at optimiser step ``step``; ``generator`` fixes t and eps (validation)."""
        t = self.sample_t(x0.shape[0], x0.device, generator)
        r = ect_r(t, self.stage(step), self.q, self.k, self.b)
        eps = noise_like(x0, generator)
        x0 = x0.float()
        x_t = x0 + t.view(-1, 1, 1, 1) * eps
        # Replaying the RNG gives f(x_r) the dropout mask of f(x_t) (ECT's "shared dropout mask").
        devices = [x0.device] if x0.device.type != "cpu" else []
        with torch.random.fork_rng(devices=devices, device_type=x0.device.type if devices else None):
            f_t = denoiser(x_t, t, labels)
        with torch.no_grad():
            x_r = self.point_at(x0, eps, x_t, t, r, labels)
            at_zero = r == 0
            # c_noise = ln(r) / 4 is -inf at r = 0: evaluate there at t (discarded) and use f(x_r, 0) = x_r.
            f_r = denoiser(x_r, torch.where(at_zero, t, r), labels)
            f_r = torch.where(at_zero.view(-1, 1, 1, 1), x_r, f_r)
        return pseudo_huber(f_t - f_r, self.c) / (t - r)

    def point_at(self, x0: Tensor, eps: Tensor, x_t: Tensor, t: Tensor, r: Tensor, labels: Tensor | None) -> Tensor:
        """The point at level r that the target f(x_r, r) is taken at: ECT's x0 + r eps, on the same noise direction
        as x_t (consistency *training*: an unbiased one-sample estimate of the ODE's point, Song et al. 2023, Thm. 2)."""
        return x0 + r.view(-1, 1, 1, 1) * eps

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(P_mean={self.P_mean}, P_std={self.P_std}, q={self.q:g}, k={self.k:g}, b={self.b:g}, "
            f"c={self.c:g}, stage_steps={self.stage_steps}{self._more_repr()})"
        )

    def _more_repr(self) -> str:
        """The settings a subclass adds to the repr."""
        return ""


class ConsistencyDistillation(ConsistencyTuning):
    """Consistency distillation (Song et al. 2023, "Consistency Models", Algorithm 2) on ECT's continuous schedule
    of r: the target is f(x_r, r) at the point x_r that a frozen teacher's probability-flow ODE reaches from x_t,

        x_r = Phi_teacher(x_t; t -> r)    instead of ECT's    x_r = x0 + r eps,

    with ``teacher_steps`` steps of DPM-Solver++(2S) (``dpm_solver_path``; Song et al. allow any ODE solver there, and
    latent consistency models, Luo et al. 2023, take DPM-Solver for the long hops between distant levels that ECT's
    early stages make too). Where r = 0 the path ends with the teacher's denoising step to 0. On the teacher's
    trajectory the target is what f(x_t, t) should equal, with no variance from x0: the teacher's discretisation
    error replaces the one-sample estimate's variance. The loss, its weighting 1 / (t - r) and the metric are ECT's
    (``ConsistencyTuning``).

    Args:
        teacher: a function of no arguments returning the teacher's denoiser, called once on first use (the config's
            ``training.checkpoints.TeacherCheckpoint``: a trained run's EMA weights, frozen). The teacher is not part
            of the trained module: no optimizer, EMA or checkpoint holds it; a resumed run reads it again.
        teacher_steps: DPM-Solver++(2S) steps of the teacher from t to r (2 evaluations each, and one more for a
            batch with r = 0 samples).
        **ect: ``ConsistencyTuning``'s settings.
    """

    def __init__(self, teacher: Callable[[], Denoiser], teacher_steps: int = 1, **ect):
        super().__init__(**ect)
        if not callable(teacher):
            raise ConfigError("training.method.teacher must build the teacher's denoiser (experiment=cd sets it from init_from=CKPT)")
        if isinstance(teacher_steps, bool) or not isinstance(teacher_steps, int) or teacher_steps < 1:
            raise ConfigError(f"training.method.teacher_steps={teacher_steps} must be a positive integer (teacher's solver steps from t to r)")
        self.teacher_steps = teacher_steps
        self.teacher = LazyTeacher(teacher)
        self.sigma_min = 0.002  # where the r = 0 paths take their last step: EDM's; check() reads the run's schedule

    def check(self, denoiser: Denoiser) -> None:
        super().check(denoiser)
        self.sigma_min = denoiser.schedule.sigma_min

    def point_at(self, x0: Tensor, eps: Tensor, x_t: Tensor, t: Tensor, r: Tensor, labels: Tensor | None) -> Tensor:
        return dpm_solver_path(self.teacher(x_t), x_t, t, r, self.teacher_steps, self.sigma_min, labels)

    def _more_repr(self) -> str:
        return f", teacher_steps={self.teacher_steps}"


class LazyTeacher:
    """A distillation's frozen teacher, built on first use by ``build`` (its checkpoint read once a process, so a
    distilled model's checkpoint loads for sampling without the teacher's file) and called with a tensor ``like`` to
    get it on that tensor's device. Not an ``nn.Module``: a method that is one (``DistributionMatching``) holds it
    without making the teacher part of the trained model (its parameters, EMA and checkpoints)."""

    def __init__(self, build: Callable[[], Denoiser]):
        self.build, self.teacher = build, None

    def __call__(self, like: Tensor) -> Denoiser | Callable:
        if self.teacher is None:
            with torch.random.fork_rng(devices=[]):  # building it must not move the CPU RNG (dropout masks)
                self.teacher = self.build()
        if isinstance(self.teacher, nn.Module):
            self.teacher.to(like.device)
        return self.teacher


def dpm_solver_path(denoiser: Callable, x: Tensor, t: Tensor, r: Tensor, steps: int, sigma_min: float, labels: Tensor | None = None) -> Tensor:
    """x at level r on the probability-flow ODE through x at level t, one level per sample: ``steps`` steps of
    DPM-Solver++(2S) (Lu et al. 2022, "DPM-Solver++", Algorithm 1 with r1 = 1/2) over levels evenly spaced in
    ln sigma from t to r, or to ``sigma_min`` where r = 0, followed there by the last step to 0, x = D(x, sigma_min).

    In sigma form (alpha = 1) a step from s to s' through the midpoint m = sqrt(s s') reads

        x_m = (m / s) x + (1 - m / s) D(x, s),    x' = (s' / s) x + (1 - s' / s) D(x_m, m),

    exact for a constant D and 2nd order in ln(s / s'); the exponential integrator keeps large steps of ECT's early
    stages far more accurate than Heun's (on Gaussian data, one step from 5 to 0.5: 10% off, Heun 120%)."""
    to_zero = r == 0
    end = torch.where(to_zero, torch.full_like(r, sigma_min).minimum(t), r)
    view = (-1, 1, 1, 1)
    for i in range(steps):
        s, s_next = t * (end / t) ** (i / steps), t * (end / t) ** ((i + 1) / steps)
        mid = (s * s_next).sqrt()
        x_mid = (mid / s).view(view) * x + (1 - mid / s).view(view) * denoiser(x, s, labels)
        x = (s_next / s).view(view) * x + (1 - s_next / s).view(view) * denoiser(x_mid, mid, labels)
    if to_zero.any():
        x = torch.where(to_zero.view(view), denoiser(x, end, labels), x)
    return x
