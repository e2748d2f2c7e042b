"""The denoiser's wrapping of a network against the papers' closed forms: EDM's preconditioning (Karras et al. 2022,
Table 1), the input scaling of Chen 2023, classifier-free guidance (Ho & Salimans 2022), x0 clipping and dynamic
thresholding (Saharia et al. 2022), and the share of null labels that trains the unconditional model.

The expected numbers are written out from the papers' formulas here, not taken from the implementation."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.core.denoiser import Denoiser, clip_denoised, conditioned
from diffusion.core.errors import ConfigError
from diffusion.core.objectives import EDMPreconditioning, EpsPrediction, VPrediction, X0Prediction
from diffusion.core.sampling import Sampler, generate
from diffusion.core.schedules import CosineSchedule, EDMSchedule, LinearSchedule, SigmoidSchedule

SIGMAS = [0.002, 0.1, 0.5, 1.3, 80.0]


class Recorder(torch.nn.Module):
    """A 'network' that returns a fixed output and records what it was given."""

    def __init__(self, output: float = 0.0, num_classes: int = 0, image_size: int = 2):
        super().__init__()
        self.output, self.num_classes, self.image_size = output, num_classes, image_size
        self.seen = None

    def forward(self, x, c_noise, labels=None):
        self.seen = (x, c_noise, labels)
        return torch.full_like(x, self.output)


# --------------------------------------------------------------------------------- EDM, Table 1


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("sd", [0.5, 1.0, 0.25])
def test_edm_coefficients_are_table_1(sigma, sd):
    obj = EDMPreconditioning(sigma_data=sd)
    s = torch.tensor(sigma, dtype=torch.float64)
    assert float(obj.c_skip(s)) == pytest.approx(sd**2 / (sigma**2 + sd**2), rel=1e-12)
    assert float(obj.c_out(s)) == pytest.approx(sigma * sd / math.sqrt(sd**2 + sigma**2), rel=1e-12)
    assert float(obj.c_in(s)) == pytest.approx(1 / math.sqrt(sigma**2 + sd**2), rel=1e-12)
    assert float(EDMSchedule().c_noise(s)) == pytest.approx(0.25 * math.log(sigma), rel=1e-6)


def test_edm_coefficients_at_sigma_equal_sigma_data():
    """At sigma = sigma_data: c_skip = 1/2, c_out = sigma_data / sqrt(2), c_in = 1 / (sigma_data sqrt(2))."""
    obj = EDMPreconditioning(sigma_data=0.5)
    s = torch.tensor(0.5, dtype=torch.float64)
    assert float(obj.c_skip(s)) == pytest.approx(0.5)
    assert float(obj.c_out(s)) == pytest.approx(0.5 / math.sqrt(2))
    assert float(obj.c_in(s)) == pytest.approx(1 / (0.5 * math.sqrt(2)))


def test_edm_denoiser_is_equation_7():
    """D(x) = c_skip x + c_out F(c_in x, c_noise): the network sees c_in x and ln(sigma) / 4, and its output is
    scaled by c_out, with the numbers of Table 1 for sigma_data = 0.5, sigma = 2."""
    net = Recorder(output=3.0)
    d = Denoiser(net, EDMPreconditioning(0.5), EDMSchedule())
    x = torch.full((1, 3, 2, 2), 1.7)
    out = d(x, torch.tensor(2.0))
    c_skip, c_out, c_in = 0.25 / 4.25, 2 * 0.5 / math.sqrt(4.25), 1 / math.sqrt(4.25)
    torch.testing.assert_close(net.seen[0], torch.full_like(x, 1.7 * c_in))
    torch.testing.assert_close(net.seen[1], torch.tensor([math.log(2.0) / 4]))
    torch.testing.assert_close(out, torch.full_like(x, c_skip * 1.7 + c_out * 3.0))


# --------------------------------------------------------------------------------- input scaling (Chen 2023)


@pytest.mark.parametrize("b", [1.0, 0.5, 0.2])
@pytest.mark.parametrize("sigma", [0.01, 0.7, 20.0])
def test_input_scale_normalises_the_network_input(b, sigma):
    """Chen 2023, sec. 3.2: with data scaled by b, x_t = sqrt(ab) b x0 + sqrt(1 - ab) eps is divided by its standard
    deviation sqrt(b^2 ab + 1 - ab) (unit-variance x0). In sigma form the VP objectives' c_in is 1 / sqrt(b^2 + sigma^2),
    and EDM's sigma_data becomes b * sigma_data."""
    ab = 1 / (1 + sigma**2)
    for obj, expected in [
        (EpsPrediction(), math.sqrt(ab) / math.sqrt(b**2 * ab + 1 - ab)),
        (VPrediction(), 1 / math.sqrt(b**2 + sigma**2)),
        (EDMPreconditioning(0.5), 1 / math.sqrt((0.5 * b) ** 2 + sigma**2)),
    ]:
        net = Recorder()
        d = Denoiser(net, obj, SigmoidSchedule(input_scale=b))
        d(torch.ones(1, 3, 2, 2), torch.tensor(sigma))
        assert float(net.seen[0][0, 0, 0, 0]) == pytest.approx(expected, rel=1e-5), type(obj).__name__


def test_input_scale_gives_the_network_unit_variance():
    """Measured: unit-variance data scaled by b = 0.4, noised at sigma = 0.3, reaches the network with variance 1."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(64, 3, 16, 16, generator=g), torch.randn(64, 3, 16, 16, generator=g)
    net = Recorder()
    d = Denoiser(net, EpsPrediction(), CosineSchedule(input_scale=0.4))
    d(0.4 * x0 + 0.3 * eps, torch.tensor(0.3))
    assert float(net.seen[0].var()) == pytest.approx(1.0, abs=0.02)


def test_sigmoid_alpha_bar_is_chen_algorithm_1():
    """Chen 2023, Algorithm 1: v(t) = sigmoid((t (end - start) + start) / tau),
    alpha_bar = (v(1) - v(t)) / (v(1) - v(0)), written out here with math.exp."""
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    for start, end, tau in [(-3.0, 3.0, 1.0), (0.0, 3.0, 0.7), (-3.0, 3.0, 1.1)]:
        s = SigmoidSchedule(start=start, end=end, tau=tau)
        for t in [0.0, 0.1, 0.25, 0.5, 0.9, 1.0]:
            v = lambda u: sig((u * (end - start) + start) / tau)  # noqa: E731
            expected = (v(1) - v(t)) / (v(1) - v(0))
            got = float(s.alpha_bar(torch.tensor(t, dtype=torch.float64)))
            assert got == pytest.approx(expected, rel=1e-12, abs=1e-15), (start, end, tau, t)
    # the default schedule at t = 0.25: (sig(3) - sig(-1.5)) / (sig(3) - sig(-3)) = 0.8508...
    assert float(SigmoidSchedule().alpha_bar(torch.tensor(0.25, dtype=torch.float64))) == pytest.approx(0.850852, rel=1e-5)


# --------------------------------------------------------------------------------- classifier-free guidance


class LabelDenoiser:
    """D(x, sigma, label) = label (as a number) everywhere: the conditional and unconditional halves are told apart."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, labels):
        self.calls.append(labels.clone())
        return labels.float().reshape(-1, 1, 1, 1).expand_as(x).clone()


@pytest.mark.parametrize("w", [0.5, 3.0])
def test_guidance_extrapolates_from_unconditional_through_conditional(w):
    """Ho & Salimans 2022, eq. 6: D = (1 + w) D(x|c) - w D(x|null). With D(x|c) = 2 and D(x|null) = 5 that is
    2 - 3w; the other common slips give 5 - 3w (uncond + w (cond - uncond)) or 2 + 3w (the halves swapped)."""
    d = LabelDenoiser()
    guided = conditioned(d, torch.tensor([2, 2]), guidance=w, null_label=5)
    out = guided(torch.zeros(2, 3, 2, 2), torch.tensor(1.0))
    torch.testing.assert_close(out, torch.full((2, 3, 2, 2), 2 - 3 * w))
    assert d.calls[0].tolist() == [2, 2, 5, 5]  # one batch: conditional half, then the null label


def test_no_guidance_is_the_conditional_model_alone():
    d = LabelDenoiser()
    out = conditioned(d, torch.tensor([1, 3]), guidance=0.0, null_label=5)(torch.zeros(2, 3, 2, 2), torch.tensor(1.0))
    assert out[:, 0, 0, 0].tolist() == [1.0, 3.0]
    assert [c.tolist() for c in d.calls] == [[1, 3]]  # the unconditional half is not evaluated


# --------------------------------------------------------------------------------- x0 clipping / thresholding


def test_static_clipping_clamps_to_the_data_range():
    x0 = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.75, 2.5]).reshape(1, 1, 1, 6)
    clipped = clip_denoised(lambda x, sigma: x0, "static")(x0, torch.tensor(1.0))
    assert clipped.flatten().tolist() == [-1.0, -1.0, -0.5, 0.0, 0.75, 1.0]
    scaled = clip_denoised(lambda x, sigma: x0 * 0.5, "static", data_range=0.5)(x0, torch.tensor(1.0))
    torch.testing.assert_close(scaled, clipped * 0.5)  # with input_scale b the data lie in [-b, b]


def test_dynamic_thresholding_scales_by_the_percentile():
    """Saharia et al. 2022, sec. 2.3: s = max(percentile of |x0|, 1); x0 -> clip(x0, -s, s) / s, per sample. A sample
    already inside [-1, 1] is left alone (s = 1)."""
    big = torch.linspace(-4, 2, 101)  # |x0| quantiles: its 10 largest |x0| are 4.0, 3.94, ..., 3.46, so the 0.9 quantile is 3.4
    small = torch.linspace(-0.5, 0.8, 101)
    x0 = torch.stack([big, small]).reshape(2, 1, 1, 101)
    out = clip_denoised(lambda x, sigma: x0, "dynamic", percentile=0.9)(x0, torch.tensor(1.0))
    s = float(torch.quantile(big.abs(), 0.9))
    assert s == pytest.approx(3.4, abs=1e-5)
    torch.testing.assert_close(out[0].flatten(), big.clamp(-s, s) / s)
    torch.testing.assert_close(out[1].flatten(), small)
    assert float(out.abs().max()) <= 1.0


def test_clipping_reaches_the_sampler_through_the_config():
    """``sampler.clip_denoised`` reaches the sampler in ``generate``: with a model whose x0 estimate is 3 everywhere,
    the sampler's callback sees 3 without clipping and 1 with it (the final output is clamped to [-1, 1] either way,
    so it cannot tell them apart)."""
    seen = []
    net = Recorder(output=3.0)
    d = Denoiser(net, X0Prediction(), LinearSchedule(T=10))
    for mode in (None, "static"):
        sampler = Sampler("ddim", steps=3, clip_denoised=mode)
        generate(d, sampler, 2, image_size=2, callback=lambda i, x, den: seen.append((mode, float(den.max()))))
    assert [v for m, v in seen if m is None] == [3.0] * 3
    assert [v for m, v in seen if m == "static"] == [1.0] * 3
    assert Sampler("ddim", steps=3, clip_denoised="dynamic").with_steps(7).clip_denoised == "dynamic"
    for bad in (dict(clip_denoised="clip"), dict(clip_percentile=0.0), dict(clip_percentile=1.5)):
        with pytest.raises(ConfigError, match="clip"):
            Sampler("ddim", **bad)


# --------------------------------------------------------------------------------- label dropout


def _module(label_dropout: float, num_classes: int = 4):
    from diffusion.training.module import DiffusionModule

    return DiffusionModule(Recorder(num_classes=num_classes), LinearSchedule(T=10), EpsPrediction(),
                           optimizer=torch.optim.Adam, sampler=Sampler("ddpm", steps=10), num_classes=num_classes, image_size=2,
                           label_dropout=label_dropout)


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_label_dropout_nulls_its_share_of_labels(p):
    """A share p of training labels becomes the null class (index num_classes), within 5 standard errors; the others
    keep their class; validation (drop=False) keeps every label."""
    torch.manual_seed(0)
    n = 40_000
    labels = torch.arange(n) % 4
    module = _module(p)
    dropped = module._labels(labels, drop=True)
    null = dropped == 4
    assert float(null.float().mean()) == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / n))
    assert torch.equal(dropped[~null], labels[~null])
    assert torch.equal(module._labels(labels, drop=False), labels)
    assert torch.equal(_module(0.0)._labels(labels, drop=True), labels)
