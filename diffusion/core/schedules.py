"""Noise schedules, all expressed as noise levels sigma of the variance-exploding form.

Every schedule here describes x_sigma = x0 + sigma * eps (Karras et al. 2022, "Elucidating the
Design Space of Diffusion-Based Generative Models", eq. 1). A variance-preserving schedule with
cumulative signal fraction alpha_bar is the same process rescaled:

    x_t = sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * eps  =  sqrt(alpha_bar) * x_sigma,
    sigma = sqrt((1 - alpha_bar) / alpha_bar).

So one set of samplers and objectives serves DDPM, cosine, sigmoid and EDM schedules alike. A
schedule answers three questions: which noise levels to train on (``sample_sigma``), what the
network is told about the noise level (``c_noise``), and which levels its own sampler walks
through (``sigmas``). ``input_scale`` multiplies the data before noising (Chen 2023, "On the
Importance of Noise Scheduling for Diffusion Models", sec. 3).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion.core.errors import ConfigError


def sigma_from_alpha_bar(alpha_bar: Tensor) -> Tensor:
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def alpha_bar_from_sigma(sigma: Tensor) -> Tensor:
    return 1 / (1 + sigma**2)


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Noise levels of Karras et al. 2022, eq. 5, followed by a final 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv + ramp * (min_inv - max_inv)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise ConfigError(f"steps={steps} must be at least 1; set steps=N with N >= 1")


class Schedule:
    """Base class: subclasses define the training levels, the network's noise input and their own spacing."""

    sigma_min: float
    sigma_max: float

    def __init__(self, input_scale: float = 1.0):
        if not input_scale > 0:
            raise ConfigError(f"schedule.input_scale={input_scale} must be > 0")
        self.input_scale = float(input_scale)

    def sample_sigma(self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Tensor:
        """Noise levels for one training batch of n images."""
        raise NotImplementedError

    def c_noise(self, sigma: Tensor) -> Tensor:
        """The noise-level input of the network, O(1) in size."""
        raise NotImplementedError

    def sigmas(self, steps: int) -> Tensor:
        """The schedule's own descending sampling levels, ``steps`` of them followed by a final 0."""
        raise NotImplementedError

    def karras_sigmas(self, steps: int, rho: float = 7.0) -> Tensor:
        _check_steps(steps)
        return get_sigmas_karras(steps, self.sigma_min, self.sigma_max, rho)

    @property
    def full_steps(self) -> int:
        """Levels of a "full" ancestral run (``sampler_fid --full-ddpm``, ``collapse``): a discrete schedule's T;
        continuous-time schedules have no T and take the course's 500."""
        return 500


class LinearSchedule(Schedule):
    """The discrete DDPM schedule (Ho et al. 2020): beta_t linear from beta_start to beta_end, t = 1..T.

    ``beta``, ``alpha`` and ``alpha_bar`` are indexed by t, with entry 0 standing for t = 0
    (beta_0 = 0, alpha_bar_0 = 1), so ``alpha_bar[t] = prod_{s<=t} (1 - beta_s)``. The
    DeepLearning.AI course shifts its betas by one index (beta_t = beta_start + (beta_end -
    beta_start) * t / T); here beta_1 = beta_start and beta_T = beta_end, as in the paper.
    The network is told t / T, as in the course.
    """

    def __init__(self, T: int = 500, beta_start: float = 1e-4, beta_end: float = 0.02, input_scale: float = 1.0):
        super().__init__(input_scale)
        if not (isinstance(T, int) and T > 0):
            raise ConfigError(f"schedule.T={T} must be a positive integer number of diffusion steps, e.g. schedule.T=500")
        if not (0 < beta_start < beta_end < 1):
            raise ConfigError(
                f"schedule betas must satisfy 0 < beta_start < beta_end < 1 (got beta_start={beta_start}, "
                f"beta_end={beta_end}); the DDPM values are 1e-4 and 0.02"
            )
        self.T = T
        beta = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        self.beta = torch.cat([beta.new_zeros(1), beta])
        self.alpha = 1 - self.beta
        self.alpha_bar = torch.cumprod(self.alpha, dim=0)
        # Levels for t = 1..T, kept in float64 so the inverse sigma -> t is exact at the table points.
        self.sigma_table = sigma_from_alpha_bar(self.alpha_bar[1:])
        self.sigma_min = float(self.sigma_table[0])
        self.sigma_max = float(self.sigma_table[-1])

    def sigma_at(self, t: Tensor) -> Tensor:
        return self.sigma_table.to(t.device)[t.long() - 1].float()

    def sample_sigma(self, n, device="cpu", generator=None):
        t = torch.randint(1, self.T + 1, (n,), generator=generator, device="cpu").to(device)
        return self.sigma_at(t)

    @property
    def full_steps(self) -> int:
        return self.T

    def timestep(self, sigma: Tensor) -> Tensor:
        """Fractional t for a noise level, interpolating log(sigma) linearly between table entries.

        Beyond the table the end segments are extended (so a churned sigma above sigma_max reaches the network as
        a t above T, not as T), floored at t = 0. With T = 1 there is no segment: every sigma is t = 1.
        """
        if self.T == 1:
            return torch.ones_like(sigma, dtype=torch.float32)
        log_table = self.sigma_table.log().to(sigma.device)
        log_sigma = sigma.double().clamp(min=torch.finfo(torch.float64).tiny).log()
        hi = torch.searchsorted(log_table, log_sigma).clamp(1, self.T - 1)
        lo = hi - 1
        w = (log_sigma - log_table[lo]) / (log_table[hi] - log_table[lo])
        return (lo + 1 + w).clamp(min=0).float()

    def c_noise(self, sigma):
        return self.timestep(sigma) / self.T

    def sigmas(self, steps):
        _check_steps(steps)
        if steps > self.T:
            raise ConfigError(f"steps={steps} exceeds the schedule's T={self.T} discrete steps; use steps<={self.T}")
        t = torch.linspace(self.T, 1, steps, dtype=torch.float64).round().long()
        return torch.cat([self.sigma_table[t - 1], torch.zeros(1, dtype=torch.float64)]).float()


class ContinuousVPSchedule(Schedule):
    """A variance-preserving schedule in continuous time t in [0, 1], defined by alpha_bar(t).

    t is drawn uniformly for training; t is capped where sigma reaches ``sigma_max`` (alpha_bar
    reaches 0 at t = 1, an infinite sigma) and floored where it reaches ``sigma_min``. ``c_noise`` is t itself,
    defined for every sigma >= 0 (sigma -> infinity is t -> 1), so a churned sigma above ``sigma_max`` reaches
    the network as its own t rather than as t_max.
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, input_scale: float = 1.0):
        super().__init__(input_scale)
        if not (0 < sigma_min < sigma_max):
            raise ConfigError(f"schedule needs 0 < sigma_min < sigma_max (got {sigma_min}, {sigma_max})")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.t_min = float(self.t_from_sigma(torch.tensor(self.sigma_min, dtype=torch.float64)))
        self.t_max = float(self.t_from_sigma(torch.tensor(self.sigma_max, dtype=torch.float64)))

    def alpha_bar(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def t_from_alpha_bar(self, alpha_bar: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma_at(self, t: Tensor) -> Tensor:
        return sigma_from_alpha_bar(self.alpha_bar(t))

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        return self.t_from_alpha_bar(alpha_bar_from_sigma(sigma))

    def sample_sigma(self, n, device="cpu", generator=None):
        u = torch.rand(n, generator=generator, device="cpu", dtype=torch.float64)
        return self.sigma_at(self.t_min + u * (self.t_max - self.t_min)).float().to(device)

    def c_noise(self, sigma):
        return self.t_from_sigma(sigma.double()).float()

    def sigmas(self, steps):
        _check_steps(steps)
        t = torch.linspace(self.t_max, self.t_min, steps, dtype=torch.float64)
        return torch.cat([self.sigma_at(t), torch.zeros(1, dtype=torch.float64)]).float()


class CosineSchedule(ContinuousVPSchedule):
    """alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t + s) / (1 + s) * pi / 2) (Nichol & Dhariwal 2021, eq. 17).

    s = 0 gives the fast.ai lesson's plain cos^2(t * pi / 2).
    """

    def __init__(self, s: float = 0.008, sigma_min: float = 0.002, sigma_max: float = 80.0, input_scale: float = 1.0):
        if not 0 <= s < 1:
            raise ConfigError(f"schedule.s={s} must be in [0, 1)")
        self.s = float(s)
        self._f0 = math.cos(self.s / (1 + self.s) * math.pi / 2) ** 2
        super().__init__(sigma_min, sigma_max, input_scale)

    def alpha_bar(self, t):
        return torch.cos((t + self.s) / (1 + self.s) * math.pi / 2) ** 2 / self._f0

    def t_from_alpha_bar(self, alpha_bar):
        angle = torch.acos((alpha_bar * self._f0).clamp(0, 1).sqrt())
        return angle * 2 / math.pi * (1 + self.s) - self.s


# The constructors list their keywords one a line, defaults beside them: Hydra instantiates them by name and the lists
# are the configs' documentation. `duplicates` pairs such lists by shape (here and with core/consistency_tuning.py);
# they share no logic.
class SigmoidSchedule(ContinuousVPSchedule):
    """alpha_bar(t) from a sigmoid between ``start`` and ``end`` with temperature ``tau`` (Chen 2023, Algorithm 1)."""

    def __init__(
        self,
        start: float = -3.0,
        end: float = 3.0,
        tau: float = 1.0,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        input_scale: float = 1.0,
    ):
        if not (start < end and tau > 0):
            raise ConfigError(f"sigmoid schedule needs start < end and tau > 0 (got {start}, {end}, {tau})")
        self.start, self.end, self.tau = float(start), float(end), float(tau)
        self._v_start = 1 / (1 + math.exp(-self.start / self.tau))
        self._v_end = 1 / (1 + math.exp(-self.end / self.tau))
        super().__init__(sigma_min, sigma_max, input_scale)

    def alpha_bar(self, t):
        v = torch.sigmoid((t * (self.end - self.start) + self.start) / self.tau)
        return (self._v_end - v) / (self._v_end - self._v_start)

    def t_from_alpha_bar(self, alpha_bar):
        v = self._v_end - alpha_bar * (self._v_end - self._v_start)
        return (self.tau * torch.logit(v) - self.start) / (self.end - self.start)


def log_normal(n: int, P_mean: float, P_std: float, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Tensor:
    """n noise levels with ln(sigma) ~ N(P_mean, P_std^2): EDM's training distribution (Karras et al. 2022, sec. 5)
    and ECT's of t (Geng et al. 2024). Drawn on the CPU, so a seeded generator gives the same levels on any device."""
    z = torch.randn(n, generator=generator, device="cpu")
    return (P_mean + P_std * z).exp().to(device)


class EDMSchedule(Schedule):
    """Karras et al. 2022: training levels ln(sigma) ~ N(P_mean, P_std^2) (sec. 5), c_noise = ln(sigma) / 4
    (Table 1), and the rho = 7 spacing (eq. 5) as its own sampling levels."""

    def __init__(
        self,
        P_mean: float = -1.2,
        P_std: float = 1.2,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        input_scale: float = 1.0,
    ):
        super().__init__(input_scale)
        if not (0 < sigma_min < sigma_max) or P_std <= 0 or rho <= 0:
            raise ConfigError("edm schedule needs 0 < sigma_min < sigma_max, P_std > 0 and rho > 0")
        self.P_mean, self.P_std, self.rho = float(P_mean), float(P_std), float(rho)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def sample_sigma(self, n, device="cpu", generator=None):
        return log_normal(n, self.P_mean, self.P_std, device, generator)

    def c_noise(self, sigma):
        return sigma.float().log() / 4

    def sigmas(self, steps):
        return self.karras_sigmas(steps, self.rho)


class FlowSchedule(EDMSchedule):
    """The rectified-flow time t in [0, 1] of x_t = (1 - t) x0 + t eps (``objectives.FlowMatching``), as sigma =
    t / (1 - t).

    Training times are logit-normal, t = sigmoid(n), n ~ N(logit_mean, logit_std^2) (Esser et al. 2024, "Scaling
    Rectified Flow Transformers", eq. 19; m = 0, s = 1 is their best, sec. 5.1). Since ln sigma = logit t, that is
    ln sigma ~ N(m, s^2): EDM's log-normal levels with P_mean = m, P_std = s, which is why this is an
    ``EDMSchedule`` with its own c_noise and levels. The network is told t itself.

    Sampling levels are uniform in t from t_max down to t_min (rectified flow's Euler grid), then shifted as in
    SD3's eq. 23 and diffusers' ``FlowMatchEulerDiscreteScheduler(shift=...)``: t' = a t / (1 + (a - 1) t), which
    in sigma form is sigma' = a sigma; the unshifted grid is the one that the shift carries onto [sigma_min,
    sigma_max], so every spacing starts at sigma_max. (For training, a shift a is logit_mean + ln a.)

    t = 1 is sigma = infinity, which a sampler in sigma form cannot start from, so the range is the other
    schedules' sigma in [0.002, 80], t in [0.002, 0.988]. ``generate``'s start sqrt(sigma_max^2 + 1) z differs
    from the marginal x0 + sigma_max eps only by O(x0 / sigma_max) in x_t, as for every schedule here. A range
    closer to diffusers' t in [0.001, 1] (sigma_max = 999, sigma_min = 0.001) spends the Karras-spaced samplers'
    steps near t = 1: with the exact velocity of N(0, 0.5^2) data, 20-step DPM++ 2M then ends 12% off the exact
    ODE solution instead of 5% (``exact.gaussian_gap``).
    """

    def __init__(
        self,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        shift: float = 1.0,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        input_scale: float = 1.0,
    ):
        # Checked here, in the flow's own terms, before EDMSchedule's message about its P_std.
        if not (0 < sigma_min < sigma_max < math.inf):
            raise ConfigError(f"flow schedule needs 0 < sigma_min < sigma_max < inf (got {sigma_min}, {sigma_max}); sigma = t / (1 - t)")
        if not (logit_std > 0 and shift > 0):
            raise ConfigError(f"flow schedule needs logit_std > 0 and shift > 0 (got {logit_std}, {shift}); SD3 uses 1.0 and 1.0..3.0")
        super().__init__(P_mean=logit_mean, P_std=logit_std, sigma_min=sigma_min, sigma_max=sigma_max, input_scale=input_scale)
        self.shift = float(shift)

    @staticmethod
    def t_from_sigma(sigma: Tensor) -> Tensor:
        # 1 / (1 + 1 / sigma) rather than sigma / (1 + sigma): also right at sigma = infinity (t = 1).
        return 1 / (1 + 1 / sigma)

    def c_noise(self, sigma):
        return self.t_from_sigma(sigma.double()).float()

    def sigmas(self, steps):
        _check_steps(steps)
        # The unshifted grid runs between the levels that the shift carries onto sigma_max and sigma_min.
        ends = torch.tensor([self.sigma_max, self.sigma_min], dtype=torch.float64) / self.shift
        t_max, t_min = self.t_from_sigma(ends).tolist()
        t = torch.linspace(t_max, t_min, steps, dtype=torch.float64)
        sigmas = self.shift * t / (1 - t)
        return torch.cat([sigmas, sigmas.new_zeros(1)]).float()
