"""Every sampler against the exact denoiser of a small fixed data set: no training involved.

With D(x, sigma) = E[x0 | x] exact (diffusion.core.exact), the probability-flow ODE carries noise onto the data
set itself, so a sampler's output should be (almost exactly) a member of it, and a deterministic sampler's
error against a very fine solution of the same ODE, from the same noise, is its integration error alone.
Errors are measured at sigma_min (``final_zero=False``): the last step to sigma = 0 snaps x onto a data point,
which would turn a smooth error into a count of samples that changed basin. Everything runs in float64.
"""

from __future__ import annotations

import pytest
import torch

from diffusion.core.exact import (
    DETERMINISTIC,
    ExactDenoiser,
    Harness,
    expected_nfe,
    fit_order,
    make_dataset,
    nearest_distance,
    pairwise_rms,
    rms,
)
from diffusion.core.samplers import all_samplers
from diffusion.core.schedules import LinearSchedule

N_DATA, N_SAMPLES = 32, 16
# iPNDM's 4th-order Adams-Bashforth is stable only for |h / sigma| below ~0.3 on the x / sigma part of the ODE;
# 25 Karras steps take |h / sigma| ~ 0.5 near sigma_min, where it leaves samples ~0.1 off the data (measured).
LANDING_STEPS = {"ipndm": 50}


@pytest.fixture(scope="module")
def data():
    return make_dataset(N_DATA, (3, 8, 8), seed=0)


@pytest.fixture(scope="module")
def harness(data):
    return Harness(data)  # Karras levels, sigma in [0.002, 80]


@pytest.fixture(scope="module")
def reference(harness):
    """x at sigma_min on the exact ODE: Heun with 2000 steps (its own error is ~1e-8, below what is measured)."""
    return harness.reference(N_SAMPLES, seed=0, steps=2000, final_zero=False)


def ode_error(harness, reference, name, steps, **options) -> float:
    """Median over samples of the RMS distance to the reference at sigma_min (the median ignores a rare sample
    whose trajectory is sent to a different data point)."""
    run = harness.run(name, steps, N_SAMPLES, seed=0, final_zero=False, **options)
    assert run.nfe == expected_nfe(name, steps, final_zero=False)
    return rms(run.samples, reference).median().item()


# ------------------------------------------------------------------------------------- the denoiser


def test_exact_denoiser_matches_the_posterior_mean_formula():
    g = torch.Generator().manual_seed(3)
    y = torch.rand(5, 2, 2, 2, generator=g, dtype=torch.float64) * 2 - 1
    x = torch.randn(7, 2, 2, 2, generator=g, dtype=torch.float64)
    denoiser = ExactDenoiser(y)
    for sigma in (0.2, 0.7, 3.0):
        d2 = ((x[:, None] - y[None]) ** 2).flatten(2).sum(-1)  # (7, 5)
        w = torch.exp(-d2 / (2 * sigma**2))
        expected = (w / w.sum(1, keepdim=True)) @ y.flatten(1)
        out = denoiser(x, torch.tensor(sigma, dtype=torch.float64))
        torch.testing.assert_close(out, expected.reshape(x.shape), rtol=1e-11, atol=1e-12)
    # one level per sample, and float32 in -> float32 out
    sigmas = torch.tensor([0.2, 0.7, 3.0, 0.2, 0.7, 3.0, 1.0])
    per_sample = denoiser(x.float(), sigmas)
    assert per_sample.dtype == torch.float32
    for i, s in enumerate(sigmas):
        torch.testing.assert_close(per_sample[i], denoiser(x[i : i + 1], s)[0].float())


def test_exact_denoiser_limits(data):
    denoiser = ExactDenoiser(data)
    x = data[:4] + 0.01 * torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    # small sigma: the nearest image, with no overflow in float32 at Karras' sigma_min
    out = denoiser(x, torch.tensor(0.002))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, data[:4])
    # large sigma: the data mean
    torch.testing.assert_close(denoiser(x, torch.tensor(1e4)), data.mean(0).expand_as(x), rtol=0, atol=1e-5)


def test_nearest_distance(data):
    assert nearest_distance(data, data).max() == 0
    torch.testing.assert_close(nearest_distance(data[:3] + 0.01, data), torch.full((3,), 0.01, dtype=torch.float64))
    assert pairwise_rms(data, data).shape == (N_DATA, N_DATA)
    assert torch.equal(make_dataset(N_DATA, (3, 8, 8), seed=0), data)
    assert data.min() >= -1 and data.max() <= 1


# --------------------------------------------------------------------- (a) samples are data members


@pytest.mark.parametrize("grid", ["karras", "linear"])
@pytest.mark.parametrize("name", list(all_samplers()))
def test_samplers_land_on_the_data_set(data, name, grid):
    if grid == "karras":
        harness, steps = Harness(data), LANDING_STEPS.get(name, 25)
    else:
        harness, steps = Harness(data, schedule=LinearSchedule(T=1000)), 50
    run = harness.run(name, steps, 2 * N_SAMPLES, seed=0)
    assert run.nfe == expected_nfe(name, steps)
    nearest = nearest_distance(run.samples, data)
    assert nearest.max() < 1e-3, f"{name}: nearest data point {nearest.max():.2e} away"
    # Not one collapsed answer: the 32 samples spread over many of the 32 images (about 20 expected).
    hit = pairwise_rms(run.samples, data).argmin(1).unique()
    assert len(hit) >= 12, f"{name}: only {len(hit)} distinct images"
    # Before the snapping last step, x at sigma_min is already within ~sigma_min of a data point.
    early = harness.run(name, steps, 2 * N_SAMPLES, seed=0, final_zero=False)
    assert nearest_distance(early.samples, data).max() < 0.05


# ---------------------------------------------------------------------- (b) convergence and its order


def test_error_falls_at_the_promised_order(harness, reference):
    steps = [40, 80, 160]
    euler = [ode_error(harness, reference, "euler", n) for n in steps]
    heun = [ode_error(harness, reference, "heun", n) for n in steps]
    p_euler, p_heun = fit_order(steps, euler), fit_order(steps, heun)
    print(f"euler {euler} order {p_euler:.2f}; heun {heun} order {p_heun:.2f}")
    assert 0.8 < p_euler < 1.4
    assert 1.7 < p_heun < 2.6
    for coarse, fine in zip(heun, heun[1:]):  # doubling the steps divides Heun's error by about 4, Euler's by 2
        assert coarse / fine > 3
    for coarse, fine in zip(euler, euler[1:]):
        assert 1.6 < coarse / fine < 2.8


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_error_shrinks_with_steps(harness, reference, name):
    errors = [ode_error(harness, reference, name, n) for n in (20, 40, 80, 160)]
    print(name, errors)
    assert all(fine < coarse for coarse, fine in zip(errors, errors[1:])), errors
    assert errors[-1] < 2e-5


def test_higher_order_samplers_beat_euler_at_equal_nfe(harness, reference):
    nfe = 80
    euler = ode_error(harness, reference, "euler", nfe)
    others = {
        "heun": ode_error(harness, reference, "heun", nfe // 2),  # 2 evaluations a step
        "dpmpp_2m": ode_error(harness, reference, "dpmpp_2m", nfe),
        "lms": ode_error(harness, reference, "lms", nfe),
    }
    print(f"NFE {nfe}: euler {euler:.2e}", {k: f"{v:.2e}" for k, v in others.items()})
    for name, err in others.items():
        assert err < euler / 4, f"{name} ({err:.2e}) is not clearly better than Euler ({euler:.2e}) at NFE {nfe}"


def test_the_order_check_can_fail(harness, reference):
    """A corrupted Heun (corrector weights 1/4, 3/4 instead of 1/2, 1/2) is only first order, and is caught."""

    def lopsided_heun(denoiser, x, sigmas, generator=None, callback=None):
        for i in range(len(sigmas) - 1):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            d = (x - denoiser(x, sigma)) / sigma
            x_next = x + d * (sigma_next - sigma)
            d_next = (x_next - denoiser(x_next, sigma_next)) / sigma_next
            x = x + (0.25 * d + 0.75 * d_next) * (sigma_next - sigma)
        return x

    steps = [40, 80, 160]
    errors = [rms(harness.run(lopsided_heun, n, N_SAMPLES, final_zero=False).samples, reference).median() for n in steps]
    assert fit_order(steps, errors) < 1.5


def test_ddim_is_euler_and_stochastic_samplers_agree(harness):
    """DDIM with eta = 0 is Euler's step in sigma (samplers.sample_ddim); with eta = 1 it is DDPM with the
    posterior variance, and with the same generator the two draw the same noise; Euler-ancestral with eta = 0
    is Euler."""
    run = lambda name, **kw: harness.run(name, 12, N_SAMPLES, final_zero=False, **kw).samples  # noqa: E731
    torch.testing.assert_close(run("ddim"), run("euler"), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(run("ddim", eta=1.0), run("ddpm"), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(run("euler_ancestral", eta=0.0), run("euler"), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(run("ddim", eta=0.5), run("ddim"))


# ------------------------------------------------------------------ (c) DDPM without noise collapses


def test_ddpm_without_noise_collapses_to_the_mean(data):
    """The course's "blobs": DDPM with z = 0 on every step (add_noise=False) drifts to the data mean.

    With a trained network the blob is the output. The exact denoiser still resolves the data points once
    sigma is small, so here the blob is seen mid-way and the final samples are the data point(s) nearest the
    mean: all samples the same image or two, instead of a spread over the set.
    """
    harness = Harness(data, schedule=LinearSchedule(T=1000))  # the full 1000-step DDPM chain
    mean = data.double().mean(0, keepdim=True)
    mean_to_data = nearest_distance(mean, data).item()  # ~0.52: the mean is far from every image

    runs = {}
    for add_noise in (True, False):
        trajectory = []
        run = harness.run("ddpm", 1000, 64, seed=0, add_noise=add_noise, callback=lambda i, x, d: trajectory.append((x, d)))
        runs[add_noise] = run.samples, trajectory
    (noisy, noisy_traj), (blobs, blob_traj) = runs[True], runs[False]

    # Final samples: spread over the set with noise, one or two images without (the ones nearest the mean).
    distinct = lambda s: len(pairwise_rms(s, data).argmin(1).unique())  # noqa: E731
    variance = lambda s: s.double().var(0).mean().item()  # noqa: E731
    assert distinct(noisy) >= 20 and distinct(blobs) <= 3, (distinct(noisy), distinct(blobs))
    assert abs(variance(noisy) / data.double().var(0).mean().item() - 1) < 0.2
    assert variance(blobs) < 0.1 * variance(noisy)
    assert rms(blobs, mean.expand_as(blobs)).max() < mean_to_data + 0.02

    # Mid-way the noise-free x is the blob: within 0.05 RMS of the mean and as far from every image as the mean
    # is, while with noise the denoiser has already committed to data points at that level.
    to_mean = torch.stack([rms(x, mean.expand_as(x)).mean() for x, _ in blob_traj])
    i = int(to_mean.argmin())
    blob_x, blob_d = blob_traj[i]
    print(f"step {i}: blob {to_mean[i]:.3f} from the mean, {nearest_distance(blob_x, data).mean():.3f} from the data")
    assert to_mean[i] < 0.05
    assert nearest_distance(blob_x, data).min() > 0.8 * mean_to_data
    assert nearest_distance(blob_d, data).min() > 0.8 * mean_to_data
    assert nearest_distance(noisy_traj[i][1], data).mean() < 0.3 * mean_to_data
