"""Training objectives as preconditionings of one denoiser (Karras et al. 2022, sec. 5 and Table 1).

Each objective says how the raw network F is wrapped into a denoiser of x_sigma = x0 + sigma * eps:

    D(x, sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, c_noise(sigma))

and the network is trained to output the target that makes D exact,

    F_target = (x0 - c_skip * x) / c_out,     loss = || F - F_target ||^2.

With this form predicting the noise, the clean image and v are the same code with different
coefficients, and every sampler sees the same thing: an estimate of x0. For the variance-
preserving objectives c_in = 1 / sqrt(1 + sigma^2) = sqrt(alpha_bar), so the network sees exactly
sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * eps, the DDPM noising.

Every objective takes ``min_snr_gamma`` (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
Weighting Strategy"): see ``Objective.loss_weight``.
"""

from __future__ import annotations

from torch import Tensor

from diffusion.core.errors import ConfigError


class Objective:
    """Preconditioning coefficients and the matching regression target.

    Args:
        min_snr_gamma: None (every noise level weighted as the objective itself weights it) or gamma > 0, the
            Min-SNR-gamma weighting of ``loss_weight``.
    """

    name = "objective"

    def __init__(self, min_snr_gamma: float | None = None):
        if min_snr_gamma is not None and (isinstance(min_snr_gamma, bool) or not isinstance(min_snr_gamma, (int, float)) or not min_snr_gamma > 0):
            raise ConfigError(f"objective.min_snr_gamma={min_snr_gamma} must be null or a number > 0, e.g. 5.0")
        self.min_snr_gamma = None if min_snr_gamma is None else float(min_snr_gamma)

    def loss_weight(self, sigma: Tensor) -> Tensor:
        """Per-sample weight of the F-space loss || F - F_target ||^2.

        Min-SNR-gamma (Hang et al. 2023, sec. 3.4) weights the x0-space error || D - x0 ||^2 by
        min(SNR, gamma), SNR = alpha_bar / (1 - alpha_bar) = 1 / sigma^2. Since D - x0 = c_out * (F - F_target),
        that is the F-space weight min(SNR, gamma) * c_out^2: min(SNR, gamma) / SNR for eps-prediction
        (c_out^2 = sigma^2), min(SNR, gamma) for x0 and min(SNR, gamma) / (SNR + 1) for v (c_out^2 =
        sigma^2 / (1 + sigma^2)), the paper's three forms.
        """
        if self.min_snr_gamma is None:
            return sigma.new_ones(())
        snr = sigma.pow(-2)
        return snr.clamp(max=self.min_snr_gamma) * self.c_out(sigma) ** 2

    def c_skip(self, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def c_out(self, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def c_in(self, sigma: Tensor) -> Tensor:
        return (sigma**2 + 1).rsqrt()

    def target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        x = x0 + sigma * noise
        return (x0 - self.c_skip(sigma) * x) / self.c_out(sigma)


class EpsPrediction(Objective):
    """Predict the noise: D = x - sigma * F, target eps. With uniform t this is the DDPM "simple" loss
    (Ho et al. 2020, eq. 14)."""

    name = "eps"

    def c_skip(self, sigma):
        return sigma.new_ones(())

    def c_out(self, sigma):
        return -sigma

    def target(self, x0, noise, sigma):
        return noise


class X0Prediction(Objective):
    """Predict the clean image directly: D = F."""

    name = "x0"

    def c_skip(self, sigma):
        return sigma.new_zeros(())

    def c_out(self, sigma):
        return sigma.new_ones(())

    def target(self, x0, noise, sigma):
        return x0


class VPrediction(Objective):
    """Predict v = sqrt(alpha_bar) * eps - sqrt(1 - alpha_bar) * x0 (Salimans & Ho 2022, "Progressive
    Distillation", sec. 4). In sigma terms: c_skip = 1 / (1 + sigma^2), c_out = -sigma / sqrt(1 + sigma^2),
    which is EDM's preconditioning with sigma_data = 1 up to the sign of F."""

    name = "v"

    def c_skip(self, sigma):
        return 1 / (sigma**2 + 1)

    def c_out(self, sigma):
        return -sigma * (sigma**2 + 1).rsqrt()


class EDMPreconditioning(Objective):
    """Karras et al. 2022, Table 1: c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma * sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2). Their loss weight lambda = 1 / c_out^2 is exactly what makes the
    F-space loss unweighted, so ``target`` needs no extra factor."""

    name = "edm"

    def __init__(self, sigma_data: float = 0.5, min_snr_gamma: float | None = None):
        super().__init__(min_snr_gamma)
        if not sigma_data > 0:
            raise ConfigError(f"objective.sigma_data={sigma_data} must be > 0 (the data's standard deviation)")
        self.sigma_data = float(sigma_data)

    def c_skip(self, sigma):
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2)

    def c_out(self, sigma):
        return sigma * self.sigma_data * (sigma**2 + self.sigma_data**2).rsqrt()

    def c_in(self, sigma):
        return (sigma**2 + self.sigma_data**2).rsqrt()


class FlowMatching(Objective):
    """Rectified flow / flow matching (Liu et al. 2022, "Flow Straight and Fast", eq. 1; Lipman et al. 2022,
    "Flow Matching for Generative Modeling", eq. 23; Esser et al. 2024, "Scaling Rectified Flow Transformers",
    eq. 1 and sec. 3): the network predicts the velocity v = eps - x0 of x_t = (1 - t) x0 + t eps.

    In sigma form, with sigma = t / (1 - t) (so t = sigma / (1 + sigma) and 1 - t = 1 / (1 + sigma)),

        x_t = (1 - t) (x0 + sigma eps) = x_sigma / (1 + sigma),

    so the network's input is c_in x_sigma with c_in = 1 / (1 + sigma). From x_t and v, x0 = x_t - t v, hence,
    EDM Table 1 style:

        c_in   = 1 / (1 + sigma)
        c_skip = 1 / (1 + sigma)          (= 1 - t)
        c_out  = -sigma / (1 + sigma)     (= -t)
        c_noise = t = sigma / (1 + sigma) (``FlowSchedule.c_noise``: t in [0, 1], the U-Net's O(1) range)
        F_target = (x0 - c_skip x_sigma) / c_out = (x0 - x_t) / (-t) = eps - x0,   weight 1,

    and D(x_sigma, sigma) = x_t - t F. The denoising loss || F - F_target ||^2 is then exactly the flow-matching
    loss || v_theta(x_t, t) - (eps - x0) ||^2 (SD3's eq. 1 with its "rf" weighting), with no extra factor.
    """

    name = "flow"

    def c_skip(self, sigma):
        return 1 / (1 + sigma)

    def c_out(self, sigma):
        return -sigma / (1 + sigma)

    def c_in(self, sigma):
        return 1 / (1 + sigma)

    def target(self, x0, noise, sigma):
        # Directly, rather than the base class's (x0 - c_skip x) / c_out, which cancels badly as sigma -> 0.
        return noise - x0
