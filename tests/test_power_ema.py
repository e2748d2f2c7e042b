"""The run's EMA is EDM2's power-function EMA of width sigma_rel (issue 17: the EMA the config names is the one the
run gets): checked against the closed form of its weights, w_tau = (tau^(g+1) - (tau-1)^(g+1)) / t^(g+1)."""

from __future__ import annotations

import pytest
import torch
from conftest import hydra_config, raises_config_error
from hydra.utils import instantiate
from torch.optim.swa_utils import AveragedModel

from diffusion.training.ema import PowerEMA, power_ema
from diffusion.training.power_ema import gamma_to_sigma_rel, sigma_rel_to_gamma


@pytest.mark.parametrize("sigma_rel", [0.05, 0.10, 0.25])
def test_the_average_after_t_steps_weighs_each_step_as_the_power_profile(sigma_rel):
    gamma = sigma_rel_to_gamma(sigma_rel)
    net = torch.nn.Linear(1, 1, bias=False)
    average = AveragedModel(net, avg_fn=power_ema(gamma))
    t = 40
    thetas = torch.randn(t, dtype=torch.float64)
    for theta in thetas:  # the weights after steps 1..t
        net.weight.data.fill_(float(theta))
        average.update_parameters(net)
    tau = torch.arange(1, t + 1, dtype=torch.float64)
    weights = (tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)) / t ** (gamma + 1)
    expected = float((weights * thetas).sum())
    assert float(average.module.weight) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_the_default_config_is_the_power_ema_it_names():
    with hydra_config(overrides=[]) as cfg:
        callback = instantiate(cfg.callbacks.ema)
    assert isinstance(callback, PowerEMA)
    assert gamma_to_sigma_rel(callback.gamma) == pytest.approx(cfg.callbacks.ema.sigma_rel, rel=1e-9)


@pytest.mark.parametrize("bad", [0, -0.1, 0.31, "wide", True])
def test_a_width_outside_edm2s_range_is_refused(bad):
    assert "callbacks.ema.sigma_rel" in raises_config_error(PowerEMA, sigma_rel=bad)
