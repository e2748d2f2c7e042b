"""Noise schedules against their closed forms, and the settings they refuse."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion.core.errors import ConfigError
from diffusion.core.sampling import Sampler
from diffusion.core.schedules import (
    CosineSchedule,
    EDMSchedule,
    LinearSchedule,
    SigmoidSchedule,
    get_sigmas_karras,
)

# --------------------------------------------------------------------------------- linear (DDPM)


@pytest.mark.parametrize("T, beta_start, beta_end", [(500, 1e-4, 0.02), (10, 0.05, 0.5), (1, 0.1, 0.2)])
def test_linear_tables_match_closed_forms(T, beta_start, beta_end):
    s = LinearSchedule(T=T, beta_start=beta_start, beta_end=beta_end)
    t = np.arange(1, T + 1)
    beta = beta_start + (beta_end - beta_start) * (t - 1) / max(T - 1, 1) if T > 1 else np.array([beta_start])
    beta = np.concatenate([[0.0], beta])  # index 0 is t = 0
    alpha = 1 - beta
    alpha_bar = np.cumprod(alpha)

    assert s.T == T
    assert s.beta.shape == s.alpha.shape == s.alpha_bar.shape == (T + 1,)
    np.testing.assert_allclose(s.beta.numpy(), beta, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(s.alpha.numpy(), alpha, rtol=1e-12)
    np.testing.assert_allclose(s.alpha_bar.numpy(), alpha_bar, rtol=1e-10)
    assert float(s.beta[0]) == 0.0 and float(s.alpha_bar[0]) == 1.0
    assert float(s.beta[1]) == pytest.approx(beta_start, rel=1e-12)
    assert float(s.beta[T]) == pytest.approx(beta_end if T > 1 else beta_start, rel=1e-12)
    # alpha_bar_t = prod_{s <= t} (1 - beta_s), written out for a few t
    for k in {1, T // 2 or 1, T}:
        assert float(s.alpha_bar[k]) == pytest.approx(math.prod(1 - b for b in beta[1 : k + 1]), rel=1e-10)

    sigma = np.sqrt((1 - alpha_bar[1:]) / alpha_bar[1:])
    np.testing.assert_allclose(s.sigma_table.numpy(), sigma, rtol=1e-10)
    np.testing.assert_allclose(s.sigma_at(torch.from_numpy(t)).numpy(), sigma, rtol=1e-6)
    assert s.sigma_min == pytest.approx(sigma[0], rel=1e-12)
    assert s.sigma_max == pytest.approx(sigma[-1], rel=1e-12)


def test_linear_course_values():
    """The course's setup: T=500, beta 1e-4..0.02; alpha_bar_T is about 0.0066 (sigma_max ~ 12.3)."""
    s = LinearSchedule()
    assert float(s.alpha_bar[500]) == pytest.approx(np.prod(1 - np.linspace(1e-4, 0.02, 500)), rel=1e-10)
    assert 0.006 < float(s.alpha_bar[500]) < 0.007
    assert s.sigma_min == pytest.approx(math.sqrt(1e-4 / (1 - 1e-4)), rel=1e-10)


def test_linear_full_sigmas_visit_every_level_then_zero():
    s = LinearSchedule(T=50)
    sig = s.sigmas(50)
    assert sig.shape == (51,)
    assert float(sig[-1]) == 0.0
    expected = torch.cat([s.sigma_table.flip(0), torch.zeros(1, dtype=torch.float64)]).float()
    assert torch.equal(sig, expected)


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 25, 49, 50])
def test_linear_sigmas_descending_end_in_zero(steps):
    s = LinearSchedule(T=50)
    sig = s.sigmas(steps)
    assert sig.shape == (steps + 1,)
    assert float(sig[-1]) == 0.0
    assert (sig[:-1] > 0).all()
    assert (sig[1:] < sig[:-1]).all(), sig
    assert float(sig[0]) == pytest.approx(s.sigma_max, rel=1e-6)  # always starts at t = T
    if steps > 1:
        assert float(sig[-2]) == pytest.approx(s.sigma_min, rel=1e-6)  # and reaches t = 1
    # every level is one of the table's
    table = s.sigma_table.float()
    for level in sig[:-1]:
        assert (table == level).any()


def test_linear_c_noise_is_t_over_T_at_table_points():
    s = LinearSchedule(T=500)
    t = torch.arange(1, 501)
    expected = t.float() / 500
    # exact for the float64 table values
    assert torch.equal(s.c_noise(s.sigma_table), expected)
    # The float32 levels that training (sample_sigma) and the samplers (sigmas) actually pass give the
    # same values in both places, within one float32 ulp of t/T (the float32 rounding of sigma moves the
    # log-interpolation by ~1e-6 steps; 19 of the 500 levels land one ulp off).
    train_side, sample_side = s.c_noise(s.sigma_at(t)), s.c_noise(s.sigmas(500)[:-1]).flip(0)
    assert torch.equal(train_side, sample_side)
    torch.testing.assert_close(train_side, expected, rtol=1.2e-7, atol=0)
    # between two table points c_noise lies between their values
    mid = (s.sigma_table[9] * s.sigma_table[10]).sqrt()
    assert 10 / 500 < float(s.c_noise(mid.reshape(1))) < 11 / 500


def test_linear_sample_sigma_uses_table_levels():
    s = LinearSchedule(T=20)
    sig = s.sample_sigma(4000, generator=torch.Generator().manual_seed(0))
    assert sig.shape == (4000,) and sig.dtype == torch.float32
    levels = s.sigma_table.float()
    assert torch.isin(sig, levels).all()
    assert len(torch.unique(sig)) == 20  # every t in 1..T is drawn


# --------------------------------------------------------------------------------- continuous VP


@pytest.mark.parametrize("make", [lambda: CosineSchedule(), lambda: CosineSchedule(s=0.0), lambda: SigmoidSchedule(),
                                  lambda: SigmoidSchedule(start=0.0, end=3.0, tau=0.7)],
                         ids=["cosine", "cosine_s0", "sigmoid", "sigmoid_0_3"])
def test_continuous_schedules(make):
    s = make()
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    ab = s.alpha_bar(t)
    assert float(s.alpha_bar(torch.tensor(0.0, dtype=torch.float64))) == pytest.approx(1.0, abs=1e-12)
    assert float(ab[-1]) == pytest.approx(0.0, abs=1e-9)
    assert (ab[1:] < ab[:-1]).all(), "alpha_bar must decrease strictly in t"

    # t_from_sigma inverts sigma_at on the usable range
    inner = torch.linspace(s.t_min, s.t_max, 201, dtype=torch.float64)
    sigma = s.sigma_at(inner)
    assert (sigma[1:] > sigma[:-1]).all()
    np.testing.assert_allclose(s.t_from_sigma(sigma).numpy(), inner.numpy(), rtol=1e-6, atol=1e-9)
    assert float(s.sigma_at(torch.tensor(s.t_min, dtype=torch.float64))) == pytest.approx(s.sigma_min, rel=1e-6)
    assert float(s.sigma_at(torch.tensor(s.t_max, dtype=torch.float64))) == pytest.approx(s.sigma_max, rel=1e-6)

    sig = s.sigmas(12)
    assert sig.shape == (13,) and float(sig[-1]) == 0.0
    assert (sig[1:] < sig[:-1]).all()
    assert float(sig[0]) == pytest.approx(s.sigma_max, rel=1e-4)
    assert float(sig[-2]) == pytest.approx(s.sigma_min, rel=1e-4)

    drawn = s.sample_sigma(5000, generator=torch.Generator().manual_seed(0))
    assert drawn.dtype == torch.float32
    assert float(drawn.min()) >= s.sigma_min * (1 - 1e-5) and float(drawn.max()) <= s.sigma_max * (1 + 1e-5)
    c = s.c_noise(drawn)
    assert float(c.min()) >= 0 and float(c.max()) <= 1


def test_cosine_closed_form():
    s = CosineSchedule(s=0.008)
    t = torch.tensor([0.0, 0.25, 0.5, 0.75], dtype=torch.float64)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expected = [f(float(u)) / f(0.0) for u in t]
    np.testing.assert_allclose(s.alpha_bar(t).numpy(), expected, rtol=1e-12)


# --------------------------------------------------------------------------------- EDM and Karras


def test_edm_sample_sigma_is_log_normal():
    s = EDMSchedule(P_mean=-1.2, P_std=1.2)
    n = 200_000
    log_sigma = s.sample_sigma(n, generator=torch.Generator().manual_seed(0)).double().log()
    # 5 standard errors of the mean and of the standard deviation of a normal sample
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=5 * 1.2 / math.sqrt(n))
    assert float(log_sigma.std()) == pytest.approx(1.2, abs=5 * 1.2 / math.sqrt(2 * n))
    assert float(s.c_noise(torch.tensor([1.0]))) == 0.0
    assert float(s.c_noise(torch.tensor([math.e**4]))) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("n", [1, 2, 18, 100])
def test_karras_sigmas_endpoints(n):
    sig = get_sigmas_karras(n, 0.002, 80.0, rho=7.0)
    assert sig.shape == (n + 1,)
    assert float(sig[0]) == pytest.approx(80.0, rel=1e-6)
    assert float(sig[-1]) == 0.0
    if n > 1:
        assert float(sig[-2]) == pytest.approx(0.002, rel=1e-5)
        assert (sig[1:] < sig[:-1]).all()
        # eq. 5: the rho-th roots are evenly spaced
        roots = sig[:-1].double() ** (1 / 7)
        np.testing.assert_allclose(torch.diff(roots).numpy(), float(roots[1] - roots[0]), rtol=1e-4)


def test_karras_sigmas_of_schedules_span_their_range():
    for s in (LinearSchedule(), CosineSchedule(), SigmoidSchedule(), EDMSchedule()):
        sig = s.karras_sigmas(10)
        assert float(sig[0]) == pytest.approx(s.sigma_max, rel=1e-5)
        assert float(sig[-2]) == pytest.approx(s.sigma_min, rel=1e-4)
        assert float(sig[-1]) == 0.0


# --------------------------------------------------------------------------------- invalid settings


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(T=0), "T=0"),
        (dict(T=-3), "T=-3"),
        (dict(T=2.5), "T=2.5"),
        (dict(beta_start=0.0), "beta"),
        (dict(beta_start=-1e-4), "beta"),
        (dict(beta_end=1.0), "beta"),
        (dict(beta_end=1.5), "beta"),
        (dict(beta_start=0.02, beta_end=1e-4), "beta"),  # not increasing
        (dict(beta_start=0.01, beta_end=0.01), "beta"),  # constant
        (dict(input_scale=0.0), "input_scale"),
    ],
)
def test_linear_invalid_settings_raise(kwargs, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        LinearSchedule(**kwargs)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("make", [LinearSchedule, CosineSchedule, SigmoidSchedule, EDMSchedule])
@pytest.mark.parametrize("steps", [0, -1])
def test_steps_below_one_raise(make, steps):
    s = make()
    with pytest.raises(ConfigError, match="steps"):
        s.sigmas(steps)
    with pytest.raises(ConfigError, match="steps"):
        s.karras_sigmas(steps)


def test_steps_above_T_raise_for_linear():
    s = LinearSchedule(T=10)
    s.sigmas(10)
    with pytest.raises(ConfigError, match="T=10"):
        s.sigmas(11)
    with pytest.raises(ConfigError, match="T=10"):
        Sampler("ddpm", steps=11, spacing="schedule").sigmas(s)
    # the Karras spacing interpolates, so it is not bounded by T
    assert Sampler("euler", steps=11, spacing="karras").sigmas(s).shape == (12,)


@pytest.mark.parametrize(
    "make",
    [
        lambda: CosineSchedule(s=1.0),
        lambda: CosineSchedule(s=-0.1),
        lambda: CosineSchedule(sigma_min=1.0, sigma_max=0.5),
        lambda: CosineSchedule(sigma_min=0.0),
        lambda: SigmoidSchedule(start=3.0, end=-3.0),
        lambda: SigmoidSchedule(tau=0.0),
        lambda: EDMSchedule(P_std=0.0),
        lambda: EDMSchedule(sigma_min=80.0, sigma_max=0.002),
        lambda: EDMSchedule(rho=0.0),
        lambda: Sampler("ddpm", steps=0),
        lambda: Sampler("nope"),
        lambda: Sampler("euler", spacing="nope"),
    ],
)
def test_other_invalid_settings_raise(make):
    with pytest.raises(ConfigError):
        make()


# --------------------------------------------------------------------------------- c_noise off the table


def test_linear_with_one_step_tells_the_network_t_equals_T():
    s = LinearSchedule(T=1, beta_start=0.1, beta_end=0.2)
    assert s.c_noise(torch.tensor([s.sigma_max, 0.5 * s.sigma_max, 3.0])).tolist() == [1.0, 1.0, 1.0]
    assert s.c_noise(torch.tensor([1.0], dtype=torch.float64)).dtype == torch.float32


@pytest.mark.parametrize("make", [CosineSchedule, SigmoidSchedule, lambda: CosineSchedule(s=0.0)])
def test_continuous_c_noise_is_t_beyond_the_sampling_range(make):
    """A churned sigma above sigma_max (Karras et al.'s gamma up to sqrt(2) - 1) reaches the network as its own t,
    between t_max and 1, not clamped to t_max; likewise below sigma_min."""
    s = make()
    for sigma in [s.sigma_max * 2**0.5, s.sigma_max * 1.01, s.sigma_min / 2]:
        t = float(s.c_noise(torch.tensor([sigma]))[0])
        assert float(s.sigma_at(torch.tensor(t, dtype=torch.float64))) == pytest.approx(sigma, rel=1e-4)
    above = float(s.c_noise(torch.tensor([s.sigma_max * 2**0.5]))[0])
    assert s.t_max < above < 1
    assert 0 < float(s.c_noise(torch.tensor([s.sigma_min / 2]))[0]) < s.t_min


def test_linear_c_noise_extends_the_last_segment_above_sigma_max():
    """Above sigma_max, t continues linearly in log(sigma) along the segment from t = T - 1 to T."""
    s = LinearSchedule(T=500)
    table = s.sigma_table
    slope = 1 / math.log(table[-1] / table[-2])
    sigma = 1.3 * s.sigma_max
    expected = (500 + math.log(1.3) * slope) / 500
    assert float(s.c_noise(torch.tensor([sigma]))[0]) == pytest.approx(expected, rel=1e-6)
    assert expected > 1.01  # the clamp it replaces would have given exactly 1
    assert float(s.c_noise(torch.tensor([0.0]))[0]) == 0.0  # floored at t = 0


def test_full_steps_is_the_discrete_T():
    assert LinearSchedule(T=37).full_steps == 37
    assert CosineSchedule().full_steps == EDMSchedule().full_steps == 500


# --------------------------------------------------------------------------------- draws, defaults, bounds


@pytest.mark.parametrize("make", [LinearSchedule, CosineSchedule, SigmoidSchedule, EDMSchedule])
def test_training_levels_are_a_function_of_the_generator(make):
    """sample_sigma draws from the generator it is given, on the CPU, in the documented way: t ~ U{1..T}, t ~ U(t_min,
    t_max) in float64, ln(sigma) = P_mean + P_std z. Same seed, same levels; the global RNG is not used."""
    s = make()
    torch.manual_seed(123)
    drawn = s.sample_sigma(64, generator=torch.Generator().manual_seed(9))
    torch.manual_seed(456)
    assert torch.equal(drawn, s.sample_sigma(64, generator=torch.Generator().manual_seed(9)))
    g = torch.Generator().manual_seed(9)
    if isinstance(s, LinearSchedule):
        expected = s.sigma_table[torch.randint(1, s.T + 1, (64,), generator=g) - 1].float()
    elif isinstance(s, EDMSchedule):
        expected = (-1.2 + 1.2 * torch.randn(64, generator=g)).exp()
    else:
        u = torch.rand(64, generator=g, dtype=torch.float64)
        expected = s.sigma_at(s.t_min + u * (s.t_max - s.t_min)).float()
    assert torch.equal(drawn, expected)
    assert drawn.dtype == torch.float32 and drawn.device.type == "cpu"


def test_class_defaults_are_the_configs_and_the_papers():
    """The classes' defaults are conf/schedule/*.yaml's (Ho et al.'s T=500 course setup, Nichol & Dhariwal's s=0.008,
    Chen's sigmoid, Karras et al.'s EDM) and conf/objective/edm.yaml's sigma_data = 0.5."""
    from omegaconf import OmegaConf

    from diffusion.core.objectives import EDMPreconditioning

    conf = Path(__file__).resolve().parents[1] / "conf"
    for name, cls in [("linear", LinearSchedule), ("cosine", CosineSchedule), ("sigmoid", SigmoidSchedule), ("edm", EDMSchedule)]:
        cfg = OmegaConf.to_container(OmegaConf.load(conf / "schedule" / f"{name}.yaml"))
        cfg.pop("_target_")
        defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
        assert defaults == cfg, name
        built = cls()
        assert {k: getattr(built, k) for k in cfg if hasattr(built, k)} == {k: v for k, v in cfg.items() if hasattr(built, k)}
    assert EDMPreconditioning().sigma_data == 0.5 == OmegaConf.load(conf / "objective" / "edm.yaml").sigma_data
    edm = EDMSchedule()
    assert (edm.P_mean, edm.P_std, edm.sigma_min, edm.sigma_max, edm.rho) == (-1.2, 1.2, 0.002, 80.0, 7.0)
    assert (LinearSchedule().T, float(LinearSchedule().beta[1]), float(LinearSchedule().beta[-1])) == (500, 1e-4, 0.02)


@pytest.mark.parametrize("make", [CosineSchedule, SigmoidSchedule, EDMSchedule])
def test_sigma_range_bounds(make):
    for bad in [dict(sigma_min=0.0), dict(sigma_min=1.0, sigma_max=1.0), dict(sigma_min=2.0, sigma_max=1.0)]:
        with pytest.raises(ConfigError, match="sigma_min"):
            make(**bad)
    assert make(sigma_min=1e-4, sigma_max=1.0001e-4).sigma_max == pytest.approx(1.0001e-4)


def test_edm_accepts_any_positive_rho_and_p_std():
    s = EDMSchedule(rho=1.0, P_std=0.01)  # rho = 1: evenly spaced levels
    sig = s.sigmas(5)[:-1].double()
    np.testing.assert_allclose(torch.diff(sig).numpy(), float(sig[1] - sig[0]), rtol=1e-4)
    for bad in [dict(rho=0.0), dict(P_std=0.0), dict(rho=-1.0)]:
        with pytest.raises(ConfigError, match=r"^edm schedule needs 0 < sigma_min < sigma_max, P_std > 0 and rho > 0$"):
            EDMSchedule(**bad)
