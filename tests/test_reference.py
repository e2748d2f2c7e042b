"""Schedules and samplers against diffusers, an independent implementation.

Conventions. diffusers works with discrete timesteps t = 0..T-1 (its ``alphas_cumprod[t]`` is our
``alpha_bar[t + 1]``) and, for DDPM / DDIM / DPM-Solver, with the variance-preserving x_vp; Euler, Heun and
LMS keep the variance-exploding x_ve and feed the model x_ve / sqrt(sigma^2 + 1). Here
x_ve = x_vp / sqrt(alpha_bar), sigma = sqrt((1 - alpha_bar) / alpha_bar), and a fixed fake noise predictor
eps(x_vp, t) becomes our denoiser D(x_ve, sigma) = x_ve - sigma * eps(x_ve / sqrt(1 + sigma^2), t(sigma)).
Our sigmas are taken from diffusers' own tables (timestep spacing, interpolation and Karras conversion
are diffusers' choices), and t(sigma) is the timestep diffusers feeds its model at that level, so what is
compared is the update rule itself, over whole short trajectories.

Tolerances. Ours runs in float64, diffusers in float32 (Euler, Heun, LMS and DPM-Solver cast the sample to
float32 inside ``step``; their tables are float32). The samples start at |x_ve| ~ sigma_max ~ 157 and end
at O(1) values, so float32 rounding of the large early iterates (157 * 6e-8 ~ 1e-5 per operation) is the
floor of agreement: atol = 1e-4, rtol = 1e-4 on the result. DDPM and DDIM have no internal cast, so they
are also run with diffusers' table promoted to float64, where agreement is to 1e-10.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)

from diffusion.core.denoiser import clip_denoised  # noqa: E402
from diffusion.core.samplers.ancestral import sample_ddim, sample_ddpm  # noqa: E402
from diffusion.core.samplers.multistep import sample_dpmpp_2m  # noqa: E402
from diffusion.core.samplers.ode import sample_euler, sample_heun, sample_lms  # noqa: E402
from diffusion.core.samplers.sde import sample_dpmpp_2m_sde, sample_dpmpp_3m_sde  # noqa: E402
from diffusion.core.samplers.unipc import sample_unipc  # noqa: E402
from diffusion.core.schedules import CosineSchedule, LinearSchedule, get_sigmas_karras  # noqa: E402

SHAPE = (4, 3, 8, 8)
F32 = dict(rtol=1e-4, atol=1e-4)  # float32 rounding of O(sigma_max) iterates, see the module docstring
F64 = dict(rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("T", [1000, 500])
def test_linear_alpha_bar_matches_diffusers(T):
    ours = LinearSchedule(T=T, beta_start=1e-4, beta_end=0.02)
    theirs = DDPMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    # diffusers builds betas and their cumulative product in float32: relative error <= T * 2^-24 ~ 6e-5.
    np.testing.assert_allclose(ours.alpha_bar[1:].numpy(), theirs.alphas_cumprod.double().numpy(), rtol=1e-4, atol=0)
    np.testing.assert_allclose(ours.beta[1:].numpy(), theirs.betas.double().numpy(), rtol=1e-6, atol=0)
    assert ours.alpha_bar[0] == 1 and ours.beta[0] == 0
    # The sigma table against the one diffusers' Euler-type schedulers derive (ascending there, t = 0..T-1).
    euler = EulerDiscreteScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    np.testing.assert_allclose(ours.sigma_table.numpy(), euler.sigmas[:-1].flip(0).double().numpy(), rtol=1e-4)


def _nichol_alpha_bar(t: np.ndarray, s: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal 2021, eq. 17, written independently of diffusion.core.schedules."""
    f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    return f(t) / f(0.0)


@pytest.mark.parametrize("T", [1000, 500])
def test_cosine_alpha_bar_matches_nichol_and_diffusers(T):
    ours = CosineSchedule()
    t = np.arange(1, T + 1) / T
    ab = ours.alpha_bar(torch.from_numpy(t)).numpy()
    np.testing.assert_allclose(ab, _nichol_alpha_bar(t), rtol=1e-12, atol=1e-15)

    # diffusers' squaredcos_cap_v2 discretises the same curve: beta_i = min(1 - ab(i/T) / ab((i-1)/T), 0.999),
    # whose product telescopes to ab(i/T) / ab(0) until the cap first bites (only near t = 1).
    theirs = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2").alphas_cumprod.double().numpy()
    raw_beta = 1 - _nichol_alpha_bar(t) / _nichol_alpha_bar(t - 1 / T)
    unclipped = int(np.argmax(raw_beta > 0.999)) if (raw_beta > 0.999).any() else T
    assert unclipped > 0.99 * T  # the cap only affects the last few steps
    np.testing.assert_allclose(theirs[:unclipped], ab[:unclipped], rtol=1e-4, atol=0)
    if unclipped < T:  # and where it bites diffusers keeps more signal than the curve, as expected of a cap
        assert theirs[unclipped] > ab[unclipped]

    # Our continuous sigma(t) and its inverse agree with the same closed form.
    sig = ours.sigma_at(torch.from_numpy(t[:-1])).numpy()
    np.testing.assert_allclose(sig, np.sqrt((1 - ab[:-1]) / ab[:-1]), rtol=1e-10)
    np.testing.assert_allclose(ours.t_from_sigma(torch.from_numpy(sig)).numpy(), t[:-1], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("n,sigma_min,sigma_max,rho", [(10, 0.002, 80.0, 7.0), (37, 0.03, 14.6, 7.0), (5, 0.1, 10.0, 3.0)])
def test_karras_sigmas_closed_form(n, sigma_min, sigma_max, rho):
    ours = get_sigmas_karras(n, sigma_min, sigma_max, rho).double().numpy()
    i = np.arange(n)
    # Karras et al. 2022, eq. 5: sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho, then 0.
    closed = (sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    assert ours.shape == (n + 1,) and ours[-1] == 0
    np.testing.assert_allclose(ours[:-1], closed, rtol=2e-7)  # ours is returned in float32
    assert np.all(np.diff(ours) < 0)
    if rho == 7.0:  # diffusers hard-codes rho = 7
        theirs = EulerDiscreteScheduler()._convert_to_karras(np.array([sigma_max, sigma_min]), n)
        np.testing.assert_allclose(ours[:-1], np.asarray(theirs, dtype=np.float64), rtol=2e-7)


def test_schedule_karras_sigmas_match_diffusers():
    """Schedule.karras_sigmas spans the schedule's own [sigma_min, sigma_max], like use_karras_sigmas=True."""
    theirs = EulerDiscreteScheduler(beta_schedule="linear", use_karras_sigmas=True)
    theirs.set_timesteps(12)
    ours = LinearSchedule(T=1000).karras_sigmas(12)
    np.testing.assert_allclose(ours.double().numpy(), theirs.sigmas.double().numpy(), rtol=1e-4)


# --------------------------------------------------------------------------------------- sampler steps


def eps_model(x_vp: torch.Tensor, t) -> torch.Tensor:
    """A fixed, deterministic, nonlinear stand-in for a noise-prediction network."""
    t = float(t)
    return 0.3 * x_vp + 0.1 * torch.sin(2 * x_vp + t / 37) + 0.05 * math.cos(t / 11)


class Translated:
    """Our denoiser for the fake model, given the (sigma, timestep) pairs diffusers visits."""

    def __init__(self, sigmas, timesteps):
        self.sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
        self.timesteps = [float(t) for t in timesteps]

    def timestep(self, sigma: float) -> float:
        i = int((self.sigmas - sigma).abs().argmin())
        assert abs(self.sigmas[i] - sigma) <= 1e-6 * sigma, f"sigma={sigma} is not on diffusers' grid"
        return self.timesteps[i]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = float(sigma)
        return x - s * eps_model(x / math.sqrt(1 + s * s), self.timestep(s))


def _start(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _assert_close(ours: torch.Tensor, theirs: torch.Tensor, tol: dict, what: str) -> None:
    diff = (ours.double() - theirs.double()).abs().max().item()
    print(f"{what}: max |ours - diffusers| = {diff:.3e}")
    torch.testing.assert_close(ours.double(), theirs.double(), **tol, msg=f"{what}: max abs diff {diff:.3e}")


def _compare(sampler, denoiser, x, sigmas, theirs, what: str, **options) -> None:
    """Our sampler in float64 against diffusers' float32 result, at F32 tolerance and, sharper, no further
    from it than the same sampler of ours run in float32 is (x 5): diffusers differs only by rounding."""
    ours = sampler(denoiser, x.double(), sigmas.double(), **options)
    ours32 = sampler(denoiser, x.float(), sigmas.float(), **options)
    rounding = (ours - ours32.double()).abs().max().item()
    _assert_close(ours, theirs, F32, f"{what} (own float32 rounding {rounding:.1e})")
    assert (ours - theirs.double()).abs().max().item() <= 5 * rounding + 1e-6


def _promote(scheduler) -> None:
    """Run a VP scheduler's arithmetic in float64: its table (already float32-rounded) promoted to float64."""
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    if hasattr(scheduler, "final_alpha_cumprod"):
        scheduler.final_alpha_cumprod = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)


def _vp_sigmas(scheduler, timesteps) -> torch.Tensor:
    ab = scheduler.alphas_cumprod.double()[torch.as_tensor(timesteps).long()]
    return torch.cat([((1 - ab) / ab).sqrt(), ab.new_zeros(1)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("T,steps", [(1000, 50), (500, 500)])
def test_ddpm_matches_diffusers(dtype, variance, T, steps):
    variance_type = {"posterior": "fixed_small", "beta": "fixed_large"}[variance]
    sched = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", variance_type=variance_type, clip_sample=False)
    if dtype == torch.float64:
        _promote(sched)
    sched.set_timesteps(steps)
    sigmas = _vp_sigmas(sched, sched.timesteps)
    x_vp = _start()
    # Both draw z ~ N(0, I) of the sample's dtype from one generator, once per step except the last.
    theirs = x_vp.to(dtype)
    gen = torch.Generator().manual_seed(1)
    for t in sched.timesteps:
        theirs = sched.step(eps_model(theirs, t), t, theirs, generator=gen).prev_sample
    ours = sample_ddpm(
        Translated(sigmas[:-1], sched.timesteps),
        (x_vp * (1 + sigmas[0] ** 2).sqrt()).to(dtype),
        sigmas if dtype == torch.float64 else sigmas.float(),
        variance=variance,
        generator=torch.Generator().manual_seed(1),
    )
    # float32: the noise z is the same but each step's beta = 1 - ab_t / ab_s is formed in float32 by diffusers
    # (and by us, from float32 sigmas): with beta ~ 1e-4 that is a 1e-3 relative error per step, so compare at 2e-3.
    tol = F64 if dtype == torch.float64 else dict(rtol=2e-3, atol=2e-3)
    _assert_close(ours, theirs, tol, f"ddpm/{variance} T={T} steps={steps} {dtype}")


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_ddpm_with_clipped_x0_matches_diffusers(mode):
    """``clip_denoised`` against diffusers' ``clip_sample`` and ``thresholding`` (Saharia et al. 2022; diffusers'
    sample_max_value cap lifted so that s = max(quantile, 1) as in the paper)."""
    options = dict(clip_sample=True) if mode == "static" else dict(thresholding=True, sample_max_value=1e9)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", **options)
    _promote(sched)
    sched.set_timesteps(20)
    sigmas = _vp_sigmas(sched, sched.timesteps)
    x_vp = 2 * _start()
    theirs, gen = x_vp.clone(), torch.Generator().manual_seed(1)
    for t in sched.timesteps:
        theirs = sched.step(eps_model(theirs, t), t, theirs, generator=gen).prev_sample
    denoiser = clip_denoised(Translated(sigmas[:-1], sched.timesteps), mode, 0.995)
    ours = sample_ddpm(denoiser, x_vp * (1 + sigmas[0] ** 2).sqrt(), sigmas, generator=torch.Generator().manual_seed(1))
    _assert_close(ours, theirs, F64, f"ddpm clip={mode}")
    unclipped = sample_ddpm(Translated(sigmas[:-1], sched.timesteps), x_vp * (1 + sigmas[0] ** 2).sqrt(), sigmas,
                            generator=torch.Generator().manual_seed(1))
    assert (unclipped - ours).abs().max() > 0.1  # the clipping was active


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_matches_diffusers(dtype, eta):
    sched = DDIMScheduler(beta_schedule="linear", clip_sample=False, set_alpha_to_one=True)
    if dtype == torch.float64:
        _promote(sched)
    sched.set_timesteps(10)  # "leading" spacing: t = 900, 800, ..., 0, then alpha_bar = 1
    sigmas = _vp_sigmas(sched, sched.timesteps)
    x_vp = _start()
    theirs = x_vp.to(dtype)
    gen = torch.Generator().manual_seed(1)
    for t in sched.timesteps:
        theirs = sched.step(eps_model(theirs, t), t, theirs, eta=eta, generator=gen).prev_sample
    ours = sample_ddim(
        Translated(sigmas[:-1], sched.timesteps),
        (x_vp * (1 + sigmas[0] ** 2).sqrt()).to(dtype),
        sigmas.to(dtype),
        eta=eta,
        generator=torch.Generator().manual_seed(1),
    )
    _assert_close(ours, theirs, F64 if dtype == torch.float64 else F32, f"ddim eta={eta} {dtype}")


def _run_ve_scheduler(sched, x_ve: torch.Tensor, **step_kwargs) -> torch.Tensor:
    """diffusers' sampling loop for the Euler-type (x_ve) schedulers, in float32 as in a pipeline."""
    x = x_ve.float()
    for t in sched.timesteps:
        model_in = sched.scale_model_input(x, t)  # x_ve / sqrt(sigma^2 + 1) = x_vp
        x = sched.step(eps_model(model_in, t), t, x, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize("karras", [False, True])
def test_euler_matches_diffusers(karras):
    sched = EulerDiscreteScheduler(beta_schedule="linear", use_karras_sigmas=karras)
    sched.set_timesteps(8)
    sigmas = sched.sigmas.double()
    x = _start() * sigmas[0]
    theirs = _run_ve_scheduler(sched, x)
    _compare(sample_euler, Translated(sigmas[:-1], sched.timesteps), x, sigmas, theirs, f"euler karras={karras}")


@pytest.mark.parametrize("karras", [False, True])
def test_heun_matches_diffusers(karras):
    sched = HeunDiscreteScheduler(beta_schedule="linear", use_karras_sigmas=karras)
    sched.set_timesteps(6)
    # diffusers repeats each inner level ([s0, s1, s1, s2, s2, ..., 0]) and alternates predictor / corrector;
    # the distinct levels are our grid, and its timesteps repeat the same way, so t(sigma) is well defined.
    sigmas = torch.unique_consecutive(sched.sigmas).double()
    assert len(sigmas) == 7 and len(sched.timesteps) == 2 * 6 - 1  # 2n - 1 evaluations, as ours
    x = _start() * sigmas[0]
    theirs = _run_ve_scheduler(sched, x)
    calls = []
    denoiser = Translated(sched.sigmas[:-1], sched.timesteps)
    sample_heun(lambda x, s: calls.append(float(s)) or denoiser(x, s), x, sigmas)
    np.testing.assert_allclose(calls, sched.sigmas[:-1].double().numpy())  # the same levels, in the same order
    _compare(sample_heun, denoiser, x, sigmas, theirs, f"heun karras={karras}")


@pytest.mark.parametrize("steps", [3, 6])
def test_lms_matches_diffusers(steps):
    sched = LMSDiscreteScheduler(beta_schedule="linear")
    sched.set_timesteps(steps)  # order ramps 1, 2, 3, 4, 4, ...: 6 steps exercise the full 4th-order rule
    sigmas = sched.sigmas.double()
    x = _start() * sigmas[0]
    theirs = _run_ve_scheduler(sched, x, order=4)
    _compare(sample_lms, Translated(sigmas[:-1], sched.timesteps), x, sigmas, theirs, f"lms steps={steps}", order=4)


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("steps", [5, 20])
def test_dpmpp_2m_matches_diffusers(karras, steps):
    sched = DPMSolverMultistepScheduler(
        beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=karras
    )
    sched.set_timesteps(steps)
    sigmas = sched.sigmas.double()  # ends in 0 (final_sigmas_type="zero")
    x_vp = _start()
    theirs = x_vp.float()
    for t in sched.timesteps:  # DPM-Solver works on x_vp and needs no input scaling
        theirs = sched.step(eps_model(theirs, t), t, theirs).prev_sample
    x = x_vp * (1 + sigmas[0] ** 2).sqrt()  # the final level is 0, where x_vp = x_ve
    _compare(sample_dpmpp_2m, Translated(sigmas[:-1], sched.timesteps), x, sigmas, theirs, f"dpmpp_2m karras={karras} steps={steps}")


def test_translation_is_not_vacuous():
    """The comparison can fail: a sampler with a different rule (Euler vs DPM++ 2M on the same grid) disagrees."""
    sched = DPMSolverMultistepScheduler(beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=2)
    sched.set_timesteps(8)
    sigmas = sched.sigmas.double()
    x = _start() * (1 + sigmas[0] ** 2).sqrt()
    denoiser = Translated(sigmas[:-1], sched.timesteps)
    diff = (sample_euler(denoiser, x, sigmas) - sample_dpmpp_2m(denoiser, x, sigmas)).abs().max()
    assert diff > 100 * F32["atol"]


# ------------------------------------------------------------------------------- SDE samplers, same noise


def _noises(steps: int, seed: int = 1) -> list[torch.Tensor]:
    """The z our SDE samplers draw (one float64 draw per step but the last, whose noise term is 0 anyway)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(steps - 1)] + [torch.zeros(SHAPE, dtype=torch.float64)]


def _run_dpm_sde(sched, x_vp: torch.Tensor, noises) -> torch.Tensor:
    """diffusers' loop (x_vp, float32), with our noise injected as its ``variance_noise``."""
    x = x_vp.float()
    for t, z in zip(sched.timesteps, noises):
        x = sched.step(eps_model(x, t), t, x, variance_noise=z.float()).prev_sample
    return x


class SecondOrderTermFixed(DPMSolverMultistepScheduler):
    """diffusers' third-order ``sde-dpmsolver++`` update (added in huggingface/diffusers#9104) writes the D2
    coefficient as alpha_t ((1 - e^{-2h} - 2h) / (2h)^2 - 1/2), which tends to -alpha_t, not 0, as h -> 0 (its
    ODE branch has -alpha_t ((e^{-h} - 1 + h) / h^2 - 1/2) -> 0). The consistent coefficient, that of k-diffusion's
    sample_dpmpp_3m_sde, is ... + 1/2: diffusers' result plus alpha_t * D2, added here and nothing else changed."""

    def multistep_dpm_solver_third_order_update(self, model_output_list, *args, sample=None, noise=None, **kwargs):
        x_t = super().multistep_dpm_solver_third_order_update(model_output_list, sample=sample, noise=noise)
        i = self.step_index
        (alpha_t, sigma_t), *rest = [self._sigma_to_alpha_sigma_t(self.sigmas[i + 1 - k]) for k in range(4)]
        lam = [torch.log(a) - torch.log(s) for a, s in [(alpha_t, sigma_t), *rest]]
        h, h_0, h_1 = lam[0] - lam[1], lam[1] - lam[2], lam[2] - lam[3]
        r0, r1 = h_0 / h, h_1 / h
        m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
        d2 = ((m0 - m1) / r0 - (m1 - m2) / r1) / (r0 + r1)
        return x_t + alpha_t * d2


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("steps", [5, 20])
def test_dpmpp_2m_sde_matches_diffusers_with_the_same_noise(karras, steps):
    sched = DPMSolverMultistepScheduler(
        beta_schedule="linear", algorithm_type="sde-dpmsolver++", solver_order=2, solver_type="midpoint",
        use_karras_sigmas=karras,
    )
    sched.set_timesteps(steps)
    sigmas = sched.sigmas.double()
    x_vp = _start()
    theirs = _run_dpm_sde(sched, x_vp, _noises(steps))
    denoiser, x = Translated(sigmas[:-1], sched.timesteps), x_vp * (1 + sigmas[0] ** 2).sqrt()
    ours = sample_dpmpp_2m_sde(denoiser, x, sigmas, generator=torch.Generator().manual_seed(1))
    _assert_close(ours, theirs, F32, f"dpmpp_2m_sde karras={karras} steps={steps}")
    # Not vacuous: other noise, other result.
    other = sample_dpmpp_2m_sde(denoiser, x, sigmas, generator=torch.Generator().manual_seed(2))
    assert (other - theirs.double()).abs().max() > 100 * F32["atol"]


@pytest.mark.parametrize("steps", [5, 20])
def test_dpmpp_3m_sde_matches_diffusers(steps):
    """At eta = 0 against diffusers' third-order DPM-Solver++ (ODE) as it is; at eta = 1 against its third-order
    sde-dpmsolver++ with the same noise, once the D2 coefficient is made consistent (``SecondOrderTermFixed``).
    ``solver_type="heun"`` gives diffusers' second step the phi_2 weight of the 3M rule; ``lower_order_final``
    off keeps it third order up to the last step (first order, to sigma = 0, in both)."""
    options = dict(beta_schedule="linear", solver_order=3, solver_type="heun", lower_order_final=False, use_karras_sigmas=True)
    x_vp = _start()
    ode = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", **options)
    ode.set_timesteps(steps)
    sigmas = ode.sigmas.double()
    denoiser, x = Translated(sigmas[:-1], ode.timesteps), x_vp * (1 + sigmas[0] ** 2).sqrt()
    theirs = x_vp.float()
    for t in ode.timesteps:
        theirs = ode.step(eps_model(theirs, t), t, theirs).prev_sample
    _assert_close(sample_dpmpp_3m_sde(denoiser, x, sigmas, eta=0.0, lower_order_final=False), theirs, F32,
                  f"dpmpp_3m_sde eta=0 steps={steps}")

    ours = sample_dpmpp_3m_sde(denoiser, x, sigmas, lower_order_final=False, generator=torch.Generator().manual_seed(1))
    fixed = SecondOrderTermFixed(algorithm_type="sde-dpmsolver++", **options)
    fixed.set_timesteps(steps)
    _assert_close(ours, _run_dpm_sde(fixed, x_vp, _noises(steps)), F32, f"dpmpp_3m_sde steps={steps}")
    if steps < 15:  # diffusers lowers the order of the last two steps below 15 steps, as ours does by default
        lower = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", **{**options, "lower_order_final": True})
        lower.set_timesteps(steps)
        theirs_lower = x_vp.float()
        for t in lower.timesteps:
            theirs_lower = lower.step(eps_model(theirs_lower, t), t, theirs_lower).prev_sample
        _assert_close(sample_dpmpp_3m_sde(denoiser, x, sigmas, eta=0.0), theirs_lower, F32, f"lower_order_final steps={steps}")
        assert (theirs_lower - theirs).abs().max() > 100 * F32["atol"]  # not vacuous: the last steps differ
    if steps > 3:  # the third-order step is used: diffusers as shipped differs by exactly its D2 term
        shipped = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", **options)
        shipped.set_timesteps(steps)
        diff = (ours - _run_dpm_sde(shipped, x_vp, _noises(steps)).double()).abs().max()
        assert diff > 100 * F32["atol"], "diffusers' 3rd-order sde-dpmsolver++ now agrees: drop SecondOrderTermFixed"


@pytest.mark.parametrize("corrector", [True, False])
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [5, 12])
def test_unipc_matches_diffusers(order, karras, steps, corrector):
    """UniPC-p (data prediction, bh2, lower-order final steps), and UniP alone with every corrector disabled."""
    sched = UniPCMultistepScheduler(
        beta_schedule="linear", solver_order=order, use_karras_sigmas=karras,
        disable_corrector=[] if corrector else list(range(steps)),
    )
    sched.set_timesteps(steps)
    sigmas = sched.sigmas.double()
    x_vp = _start()
    theirs = x_vp.float()
    for t in sched.timesteps:
        theirs = sched.step(eps_model(theirs, t), t, theirs).prev_sample
    x = x_vp * (1 + sigmas[0] ** 2).sqrt()
    _compare(sample_unipc, Translated(sigmas[:-1], sched.timesteps), x, sigmas, theirs,
             f"unipc order={order} karras={karras} steps={steps} corrector={corrector}", order=order, corrector=corrector)
