"""Min-SNR-gamma loss weighting (Hang et al. 2023) against the paper's closed forms, written in DDPM terms."""

from __future__ import annotations

import pytest
import torch

from diffusion.core.denoiser import Denoiser
from diffusion.core.denoising_loss import DenoisingLoss
from diffusion.core.errors import ConfigError
from diffusion.core.objectives import EDMPreconditioning, EpsPrediction, VPrediction, X0Prediction
from diffusion.core.schedules import LinearSchedule

GAMMA = 5.0


def ddpm_snr(t: torch.Tensor) -> torch.Tensor:
    """SNR(t) = alpha_bar_t / (1 - alpha_bar_t) straight from the DDPM betas, independent of sigma."""
    betas = torch.linspace(1e-4, 0.02, 500, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)[t - 1]
    return alpha_bar / (1 - alpha_bar)


# The paper's weights of each prediction type's own MSE: x0 min(SNR, g), eps min(SNR, g) / SNR, v min(SNR, g) / (SNR + 1).
PAPER = {
    "eps": (EpsPrediction, lambda snr: snr.clamp(max=GAMMA) / snr),
    "x0": (X0Prediction, lambda snr: snr.clamp(max=GAMMA)),
    "v": (VPrediction, lambda snr: snr.clamp(max=GAMMA) / (snr + 1)),
}
STEPS = torch.tensor([1, 10, 50, 120, 250, 400, 500])


@pytest.mark.parametrize("name", PAPER)
def test_weight_is_the_papers_closed_form(name):
    cls, weight = PAPER[name]
    snr = ddpm_snr(STEPS)
    sigma = LinearSchedule().sigma_at(STEPS).double()
    torch.testing.assert_close(cls(min_snr_gamma=GAMMA).loss_weight(sigma), weight(snr), rtol=1e-4, atol=0)
    # Both sides of the clamp are exercised: early steps have SNR far above gamma, late ones far below.
    assert snr.max() > 100 * GAMMA and snr.min() < GAMMA / 100


@pytest.mark.parametrize("objective", [EpsPrediction(min_snr_gamma=GAMMA), X0Prediction(min_snr_gamma=GAMMA),
                                       VPrediction(min_snr_gamma=GAMMA), EDMPreconditioning(0.5, min_snr_gamma=GAMMA)])
def test_weighted_loss_is_min_snr_times_the_denoising_error(objective):
    """Whatever the prediction type, the weighted loss is min(SNR, gamma) * || D(x) - x0 ||^2 for any network output."""
    x0 = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    output = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.05, 0.3, 1.0, 20.0])
    denoiser = Denoiser(lambda x, c_noise, labels: output, objective, LinearSchedule())
    s4 = sigma.reshape(-1, 1, 1, 1)
    denoised = denoiser(x0 + s4 * noise, sigma)
    expected = (sigma.pow(-2)).clamp(max=GAMMA) * (denoised - x0).pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(DenoisingLoss.at(denoiser, x0, sigma, noise), expected, rtol=1e-4, atol=1e-6)


def test_off_by_default_leaves_the_loss_alone():
    sigma = torch.tensor([0.05, 3.0])
    for cls in (EpsPrediction, X0Prediction, VPrediction, EDMPreconditioning):
        assert torch.equal(cls().loss_weight(sigma) * torch.ones(2), torch.ones(2))


@pytest.mark.parametrize("bad", [0, -1.0, "5", True])
def test_bad_gamma_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="min_snr_gamma"):
        EpsPrediction(min_snr_gamma=bad)
