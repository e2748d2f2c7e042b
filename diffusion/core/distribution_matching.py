"""Distribution matching distillation (Yin et al. 2024, "One-step Diffusion with Distribution Matching Distillation",
DMD; Yin et al. 2024, "Improved Distribution Matching Distillation for Fast Image Synthesis", DMD2): a one- or
few-step generator trained to match the teacher's *distribution*, not its probability-flow ODE map.

Why beside consistency distillation: a student that reproduces the teacher's exact ODE map samples what the ODE
samples, and a small teacher's ODE samples are much worse than its stochastic ones (BENCHMARKS.md: the flow
teacher's ODE solved with about 100 evaluations scores 1.74-1.78, its DDPM-500 0.83). DMD's fixed point is the teacher's marginal
distribution p_real, the one that its stochastic samplers draw from.

The generator is the run's own denoiser at the levels of a few-step consistency sampler: x = G(z) = D(x_T, sigma_0),
x_T = sqrt(sigma_0^2 + 1) z as ``core.sampling.generate`` starts, and for a later level sigma_k the input is the
generator's previous output noised to sigma_k (DMD2's "backward simulation", sec. 4.5), so the multistep consistency
sampler (``core.samplers.consistency``) draws from it unchanged. The generator's loss is DMD's eq. 7-8: with
x_t = x + t n at a level t of the run's training distribution (``matching_loss`` says how DMD's differs),

    grad = (D_fake(x_t, t) - D_real(x_t, t)) / mean|x - D_real(x_t, t)|,    L_G = 1/2 || x - sg(x - grad) ||^2,

the KL divergence's gradient s_fake - s_real in x0 units, normalised per sample by DMD's w_t (in sigma form,
alpha_t = 1, its sigma_t^2 / alpha_t turns scores into denoisers). D_real is the frozen teacher; D_fake, the "fake
score", is a network of the student's shape that takes the teacher's weights at the first step,
trained with the denoising loss on the generator's own samples (DMD eq. 6), so that it tracks p_fake as the
generator moves. DMD2's two time-scale rule (sec. 4.2) is ``fake_updates``: steps that train only D_fake before
each generator step.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from diffusion.core.consistency_tuning import LazyTeacher, check_one_step_generator
from diffusion.core.denoiser import Denoiser, evaluating, per_sample
from diffusion.core.denoising_loss import DenoisingLoss, noise_like
from diffusion.core.errors import ConfigError


class DistributionMatching(nn.Module):
    """DMD2's loss without its GAN term, as a training method (``training.method``; ``experiment=dmd``): per sample,
    the generator's distribution-matching loss plus the fake score's denoising loss. Their gradients reach disjoint
    weights (the student's and the fake score's), so one optimizer step trains both; the fake score is a submodule of
    this method and so of the LightningModule (optimizer, EMA and checkpoints hold it, as the level predictor of
    ``core.level_prediction``), while the teacher stays outside it as in consistency distillation.

    Args:
        teacher: a function of no arguments returning the teacher's denoiser (``training.checkpoints
            .TeacherCheckpoint``), called once on first use.
        levels: the generator's levels, descending; null: the schedule's sigma_max then ``mid`` (the levels of the
            2-step consistency sampler ``conf/experiment/dmd.yaml`` samples with). Levels that start below sigma_max
            are sampled with the consistency sampler walking the same ones (``spacing=optimized``, ``levels=``).
        mid: the second level where ``levels`` is null (0 or null: a one-step generator only); ignored with ``levels``.
        fake_updates: steps that train only the fake score before each step that trains the generator too (DMD2's
            two time-scale update rule; 0: both every step).
    """

    few_step_student = True  # a teacher of another distillation it is not (``TeacherCheckpoint``)

    def __init__(self, teacher: Callable[[], Denoiser], levels: list[float] | None = None, mid: float | None = 0.821,
                 fake_updates: int = 4):
        super().__init__()
        if not callable(teacher):
            raise ConfigError("training.method.teacher must build the teacher's denoiser (experiment=dmd sets it from init_from=CKPT)")
        if levels is not None:  # a list, or Hydra's ListConfig
            if not (isinstance(levels, Sequence) and not isinstance(levels, str) and len(levels) > 0
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf for v in levels)
                    and all(a > b for a, b in zip(levels, levels[1:]))):
                raise ConfigError(f"training.method.levels={list(levels) if isinstance(levels, Sequence) else levels} must be a "
                                  "descending list of positive numbers, e.g. [80, 0.821], or null")
        if mid is not None and not (isinstance(mid, (int, float)) and not isinstance(mid, bool) and mid >= 0):
            raise ConfigError(f"training.method.mid={mid} must be a number >= 0 (0: one level), e.g. 0.821")
        if isinstance(fake_updates, bool) or not isinstance(fake_updates, int) or fake_updates < 0:
            raise ConfigError(f"training.method.fake_updates={fake_updates} must be an integer >= 0 (DMD2 uses 4)")
        self.teacher = LazyTeacher(teacher)
        self.levels_given = None if levels is None else [float(v) for v in levels]
        self.mid, self.fake_updates = (float(mid) if mid else 0.0), fake_updates
        self.levels: list[float] = []
        self.fake: Denoiser | None = None
        # 0 until the fake score has taken the teacher's weights at the first step (1 after, in checkpoints too); a
        # float, which the EMA averages with the weights (to a value > 0 once started).
        self.register_buffer("fake_started", torch.zeros(()))
        self._started = False  # the buffer's answer, kept once true: no device-to-host read a step

    @property
    def leaves_weights_unused(self) -> bool:
        """Fake-score steps give the student's weights no gradient at all (``tools.train`` then runs DDP with
        ``find_unused_parameters``)."""
        return self.fake_updates > 0

    def check(self, denoiser: Denoiser) -> None:
        """The generator's first level is a one-step sample, so it needs the bounded c_out of consistency models; the
        fake score is built here as a copy of the denoiser, so that the module's parameters hold it from the start."""
        check_one_step_generator(denoiser, "distribution matching distillation")
        sigma_max = denoiser.schedule.sigma_max
        if self.levels_given is not None:
            if self.levels_given[0] > sigma_max:
                raise ConfigError(f"training.method.levels start at {self.levels_given[0]:g}, above the schedule's sigma_max={sigma_max:g}")
            self.levels = self.levels_given
        else:
            if self.mid >= sigma_max:
                raise ConfigError(f"training.method.mid={self.mid:g} must be below the schedule's sigma_max={sigma_max:g}")
            self.levels = [sigma_max, self.mid] if self.mid > 0 else [sigma_max]
        self.fake = copy.deepcopy(denoiser)

    def start_fake(self, like: Tensor) -> None:
        """At the first training step the fake score takes the teacher's weights (DMD sec. 3.2: both score functions
        start as the pretrained model); its own steps then move it towards the generator's distribution, which at the
        start (the teacher's one-step sample, near the data's mean) is far from the teacher's. Only in training mode:
        during validation the EMA's weights and buffers stand in the module (the EMA callback's swap), so a copy there
        would land in the EMA and leave the trained fake score as it was built."""
        if self._started or not self.training:
            return
        if not float(self.fake_started) > 0:  # a resumed run reads 1 from its checkpoint
            with torch.no_grad():
                self.fake.load_state_dict(self.teacher(like).state_dict())
            self.fake_started.fill_(1)
        self._started = True

    def generator_inputs(self, denoiser: Denoiser, z: Tensor, level: Tensor, labels: Tensor | None,
                         generator: torch.Generator | None) -> Tensor:
        """x at each sample's generator level ``level`` (an index into ``levels``): sqrt(sigma_0^2 + 1) z at the first,
        as ``core.sampling.generate`` starts; at a later level sigma_k the generator's own sample from the level
        before, noised to sigma_k, as the multistep consistency sampler makes it (DMD2's backward simulation, sec.
        4.5): without gradients, in eval mode as when sampling, and only for the samples that go that far."""
        inputs = z * math.sqrt(self.levels[0] ** 2 + 1)
        noise = [noise_like(z, generator) for _ in self.levels[1:]]  # drawn for every sample: the draws do not depend on level
        deeper = torch.arange(len(z), device=z.device)
        x = inputs
        for k in range(1, len(self.levels)):
            keep = level[deeper] >= k
            deeper, x = deeper[keep], x[keep]
            if len(deeper) == 0:
                break
            with torch.no_grad(), evaluating(denoiser):
                x = denoiser(x, torch.tensor(self.levels[k - 1]), None if labels is None else labels[deeper])
            x = x + self.levels[k] * noise[k - 1][deeper]
            inputs = inputs.index_copy(0, deeper, x)  # the deepest level so far; a later k overwrites it
        return inputs

    # The signature of every training method (docs/architecture.md), repeated by design as in denoising_loss.
    def forward(
        self,
        denoiser: Denoiser,
        x0: Tensor,
        labels: Tensor | None = None,
        step: int = 0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-sample loss; ``x0`` gives only the batch's shape and device (DMD trains on the generator's samples,
        the data's labels giving their class mix); ``generator`` fixes every draw (validation, whose loss, in eval
        mode, always holds both terms, so that it does not jump with the step)."""
        self.start_fake(x0)
        n = x0.shape[0]
        level = torch.randint(len(self.levels), (n,), generator=generator).to(x0.device)
        x_in = self.generator_inputs(denoiser, noise_like(x0, generator), level, labels, generator)
        sigmas = torch.tensor(self.levels, device=x0.device)[level]
        train_generator = not self.training or step % (self.fake_updates + 1) == self.fake_updates
        if train_generator:
            x = denoiser(x_in, sigmas, labels)
            generator_loss = self.matching_loss(x, labels, generator)
        else:  # the student's weights get no gradient at all this step, so the optimizer leaves them as they are
            with torch.no_grad():
                x = denoiser(x_in, sigmas, labels)
            generator_loss = torch.zeros(n, device=x0.device)
        return generator_loss + self.fake_loss(x.detach(), labels, generator)

    def matching_loss(self, x: Tensor, labels: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """DMD's eq. 7-8: 1/2 ||x - sg(x - grad)||^2 per sample (mean over pixels), whose gradient in x is ``grad``
        (over the pixel count), the difference of the two denoisers at x_t, normalised by the teacher's mean error.

        The levels t are the run's schedule's training levels (the flow schedule's logit-normal, EDM's log-normal),
        where DMD draws t uniformly over the teacher's 1,000 DDPM steps and DMD2 a uniform index of EDM's Karras grid:
        theirs weigh the high levels (global structure) more. The fake score is evaluated as the teacher is, in eval
        mode, so that dropout adds nothing to D_fake - D_real."""
        with torch.no_grad(), evaluating(self.fake):
            t = self.fake.schedule.sample_sigma(x.shape[0], generator=generator).to(x.device)
            x_t = x + per_sample(t, x) * noise_like(x, generator)
            real = self.teacher(x)(x_t, t, labels)
            fake = self.fake(x_t, t, labels)
            weight = 1 / (x - real).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
            target = x - (fake - real) * weight
        return 0.5 * (x - target).pow(2).mean(dim=(1, 2, 3))

    def fake_loss(self, x: Tensor, labels: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """The fake score's denoising loss on the generator's samples (DMD eq. 6), at the schedule's training levels."""
        sigma = self.fake.schedule.sample_sigma(x.shape[0], generator=generator).to(x.device)
        return DenoisingLoss.at(self.fake, x, sigma, noise_like(x, generator), labels)

    def extra_repr(self) -> str:
        return f"levels={self.levels or self.levels_given}, mid={self.mid:g}, fake_updates={self.fake_updates}"

