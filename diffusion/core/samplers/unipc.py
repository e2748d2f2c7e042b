"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models"): a multistep predictor (UniP) and a corrector (UniC) in log-sigma time lambda = -log(sigma), on the
data prediction D, with B(h) = e^{-h} - 1 (their "bh2"). The corrector reuses the evaluation the next predictor
step needs anyway, so it raises the order by one at no extra cost: one evaluation a step."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion.core.denoiser import DenoiserFn
from diffusion.core.errors import ConfigError
from diffusion.core.samplers.common import Callback, notify


def unipc_coefficients(h: Tensor, rks: list[Tensor], order: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The UniPC-p linear system (Zhao et al. 2023, with B(h) = e^{-h} - 1, as diffusers'
    ``multistep_uni_*_bh_update``): with hh = -h and h phi_k(hh) the exponential integrator's phi functions,
    b_k = k! h phi_{k+1}(hh) / B(h) for k = 1..p and R_{kj} = r_j^(k-1) over the nodes r_j = (lambda_j -
    lambda_s0) / h (the last node r = 1). Returns (h phi_1, B(h), R, b) in float64 (h phi_1 = B(h) here);
    the caller solves R rho = b for the weights."""
    hh = -h.double()
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    nodes = torch.stack([r.double() for r in rks] + [torch.ones((), dtype=torch.float64, device=h.device)])
    rows, b, factorial = [], [], 1
    for k in range(1, order + 1):
        rows.append(nodes**(k - 1))
        b.append(h_phi_k * factorial / h_phi_1)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, h_phi_1, torch.stack(rows), torch.stack(b)


def _differences(lambdas: list[Tensor], outputs: list[Tensor], lambda_0: Tensor, h: Tensor, count: int):
    """Nodes r_i = (lambda_i - lambda_0) / h and divided differences (D_i - D_0) / r_i of the ``count`` outputs
    before the newest (``outputs[-1]``, at lambda_0)."""
    rks, diffs = [], []
    for i in range(1, count + 1):
        rk = (lambdas[-1 - i] - lambda_0) / h
        rks.append(rk)
        diffs.append((outputs[-1 - i] - outputs[-1]) / rk)
    return rks, diffs


@torch.no_grad()
def sample_unipc(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    order: int = 2,
    corrector: bool = True,
    lower_order_final: bool = True,
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> Tensor:
    """UniPC-p (Zhao et al. 2023) with the data prediction D and B(h) = e^{-h} - 1, as diffusers'
    ``UniPCMultistepScheduler`` (predict_x0, solver_type="bh2", lower_order_final).

    Each step from sigma to sigma_next (h = log(sigma / sigma_next)) first corrects x with UniC, using the
    denoiser's output at x (the predictor's last result) as one more node, then predicts with UniP of order
    min(``order``, steps so far, steps left): x_next = (sigma_next / sigma) x - h phi_1 D_0 - B(h) sum_k rho_k D1_k.
    ``corrector=False`` is UniP alone; ``lower_order_final=False`` keeps the order up to the last step (the lower
    final orders are the paper's and diffusers' default). Orders 1 to 3 are those of the paper's experiments (3 for
    unconditional sampling, 2 with guidance); the corrector adds one to the predictor's order. The default is 2:
    on Gaussian data order 3 is further from the closed-form solution than Euler from 5 to 14 NFE (BENCHMARKS.md,
    "Samplers on Gaussian data"), order 2 never.
    """
    if order not in (1, 2, 3):
        raise ConfigError(f"sampler.options.order={order} must be 1, 2 or 3 for UniPC")
    steps = len(sigmas) - 1
    lambdas: list[Tensor] = []
    outputs: list[Tensor] = []
    last_x, last_order = None, 0
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma)
        lam = -sigma.log()
        if corrector and last_x is not None:
            # UniC: re-do the last step from last_x with the new output as the node r = 1.
            h = lam - lambdas[-1]
            rks, diffs = _differences(lambdas, outputs, lambdas[-1], h, last_order - 1)
            h_phi_1, b_h, rows, b = unipc_coefficients(h, rks, last_order)
            rhos = torch.tensor([0.5], dtype=torch.float64) if last_order == 1 else torch.linalg.solve(rows, b)
            rhos = rhos.to(x)
            residual = sum(r * d for r, d in zip(rhos[:-1], diffs)) + rhos[-1] * (denoised - outputs[-1])
            x = (sigma / sigmas[i - 1]) * last_x - h_phi_1.to(x) * outputs[-1] - b_h.to(x) * residual
        lambdas.append(lam)
        outputs.append(denoised)
        del lambdas[: -order], outputs[: -order]
        this_order = min(order, steps - i if lower_order_final else order, len(outputs))
        last_x, last_order = x, this_order
        if sigma_next == 0:
            x = denoised  # the exact first-order step to sigma = 0
        else:
            # UniP of order this_order.
            h = sigma.log() - sigma_next.log()
            rks, diffs = _differences(lambdas, outputs, lam, h, this_order - 1)
            h_phi_1, b_h, rows, b = unipc_coefficients(h, rks, this_order)
            x = (sigma_next / sigma) * x - h_phi_1.to(x) * denoised
            if diffs:
                if this_order == 2:
                    rhos = torch.tensor([0.5], dtype=torch.float64)
                else:
                    rhos = torch.linalg.solve(rows[:-1, :-1], b[:-1])
                x = x - b_h.to(x) * sum(r * d for r, d in zip(rhos.to(x), diffs))
        notify(callback, i, x, denoised)
    return x
