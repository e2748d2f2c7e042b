"""Post-hoc EMA (Karras et al. 2024): the power-function EMA, sigma_rel <-> gamma, the profile inner products and the
reconstruction of one EMA from snapshots of others, on known scalar weight histories; then the callback in a toy
Lightning run (the update it applies, its files, resuming)."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from diffusion.core.errors import ConfigError
from diffusion.training.ema import PostHocEMA
from diffusion.training.power_ema import (
    SIGMA_REL_MAX,
    gamma_to_sigma_rel,
    power_ema_update,
    profile_inner_products,
    reconstruct,
    sigma_rel_to_gamma,
    snapshot_index,
    solve_coefficients,
)

GAMMAS = (16.97, 6.94)  # the paper's sigma_rel 0.05 and 0.10


def weight_history(steps: int, n: int = 6, seed: int = 0) -> torch.Tensor:
    """(steps, n) float64 'weights after step t' of a noisy training run: a drift plus a random walk."""
    g = torch.Generator().manual_seed(seed)
    walk = torch.randn(steps, n, generator=g, dtype=torch.float64).cumsum(0) * 0.05
    return walk + torch.linspace(0, 1, steps, dtype=torch.float64).unsqueeze(1) * torch.randn(n, generator=g, dtype=torch.float64)


def run_power_ema(history: torch.Tensor, gamma: float, snapshot_every: int | None = None):
    """Power EMA over a history by the recursive update, with the averages at every ``snapshot_every`` step."""
    average = torch.full_like(history[0], 123.0)  # anything: beta(1) = 0 discards it
    snapshots = []
    for t in range(1, len(history) + 1):
        power_ema_update(average, history[t - 1], t, gamma)
        if snapshot_every and (t % snapshot_every == 0 or t == len(history)):
            snapshots.append((t, average.clone()))
    return average, snapshots


@pytest.mark.parametrize("gamma", [0.0, 2.5, 6.94, 16.97])
def test_update_is_the_closed_form_weighted_average(gamma):
    """theta_hat(T) = sum_tau w_tau theta(tau), w_tau = (tau^(g+1) - (tau-1)^(g+1)) / T^(g+1), ~ (g+1) tau^g / T^(g+1)."""
    steps = 400
    history = weight_history(steps)
    average, _ = run_power_ema(history, gamma)
    tau = torch.arange(1, steps + 1, dtype=torch.float64)
    weights = (tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)) / steps ** (gamma + 1)
    torch.testing.assert_close(average, (weights.unsqueeze(1) * history).sum(0), rtol=1e-10, atol=1e-12)
    assert math.isclose(float(weights.sum()), 1.0, rel_tol=1e-12)
    # the continuous profile t^gamma: the weights of the last half of the run agree with it to O(1 / tau)
    continuous = (gamma + 1) * tau ** gamma / steps ** (gamma + 1)
    late = slice(steps // 2, None)
    torch.testing.assert_close(weights[late], continuous[late], rtol=gamma / steps + 1e-12, atol=0)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 6.94, 16.97, 100.0])
def test_sigma_rel_is_the_profiles_relative_standard_deviation(gamma):
    """Numerical integration of p(s) = (g + 1) s^g on [0, 1] against the closed form."""
    s = torch.linspace(0, 1, 400_001, dtype=torch.float64)
    p = (gamma + 1) * s**gamma
    mean = torch.trapezoid(s * p, s)
    std = torch.trapezoid((s - mean) ** 2 * p, s).sqrt()
    assert math.isclose(gamma_to_sigma_rel(gamma), float(std), rel_tol=1e-6)


def test_sigma_rel_gamma_round_trip_and_the_papers_values():
    assert round(sigma_rel_to_gamma(0.05), 2) == 16.97  # EDM2 sec. 3: sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94
    assert round(sigma_rel_to_gamma(0.10), 2) == 6.94
    for sigma_rel in (1e-4, 0.01, 0.05, 0.1, 0.2, 0.29, 0.3):
        assert math.isclose(gamma_to_sigma_rel(sigma_rel_to_gamma(sigma_rel)), sigma_rel, rel_tol=1e-12)
    for gamma in (0.0, 3.0, 50.0):
        assert math.isclose(sigma_rel_to_gamma(gamma_to_sigma_rel(gamma)), gamma, rel_tol=1e-9, abs_tol=1e-12)
    for bad in (0.0, -0.1, SIGMA_REL_MAX, 0.5):
        with pytest.raises(ConfigError, match="sigma_rel"):
            sigma_rel_to_gamma(bad)


def test_profile_inner_products_against_quadrature():
    t = torch.tensor([300.0, 1000.0, 700.0])
    gamma = torch.tensor([6.94, 16.97, 2.0])
    def quadrature(ta, ga, tb, gb):
        s = torch.linspace(0, min(ta, tb), 100_001, dtype=torch.float64)
        return float(torch.trapezoid((ga + 1) * s**ga / ta ** (ga + 1) * (gb + 1) * s**gb / tb ** (gb + 1), s))

    pairs = list(zip(t.tolist(), gamma.tolist()))
    expected = torch.tensor([[quadrature(*a, *b) for b in pairs] for a in pairs], dtype=torch.float64)
    torch.testing.assert_close(profile_inner_products(t, gamma, t, gamma), expected, rtol=1e-5, atol=0)
    # large steps and exponents stay finite (computed in log space)
    big = profile_inner_products(torch.tensor([1e7]), torch.tensor([40.0]), torch.tensor([2e7]), torch.tensor([40.0]))
    assert torch.isfinite(big).all() and big.item() > 0


def snapshots_of(history: torch.Tensor, every: int):
    ts, gammas, values = [], [], []
    for gamma in GAMMAS:
        _, snaps = run_power_ema(history, gamma, every)
        ts += [t for t, _ in snaps]
        gammas += [gamma] * len(snaps)
        values += [v for _, v in snaps]
    return ts, gammas, torch.stack(values)


def test_reconstruction_of_a_stored_profile_is_that_snapshot():
    history = weight_history(1000)
    ts, gammas, values = snapshots_of(history, every=100)
    for gamma in GAMMAS:
        x = solve_coefficients(ts, gammas, 1000, gamma)
        stored, _ = run_power_ema(history, gamma)
        torch.testing.assert_close(x @ values, stored, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sigma_rel", [0.06, 0.075, 0.09, 0.13])
def test_reconstruction_of_another_profile_matches_the_direct_average(sigma_rel):
    """An EMA that was never run, rebuilt from the two stored ones' snapshots, against running it directly; the
    error is a small fraction of how far apart the two stored averages are."""
    history = weight_history(1000)
    ts, gammas, values = snapshots_of(history, every=50)
    gamma = sigma_rel_to_gamma(sigma_rel)
    direct, _ = run_power_ema(history, gamma)
    rebuilt = solve_coefficients(ts, gammas, 1000, gamma) @ values
    spread = (run_power_ema(history, GAMMAS[0])[0] - run_power_ema(history, GAMMAS[1])[0]).abs().max()
    assert (rebuilt - direct).abs().max() < 0.02 * spread
    # at an earlier step too
    direct_600, _ = run_power_ema(history[:600], gamma)
    torch.testing.assert_close(solve_coefficients(ts, gammas, 600, gamma) @ values, direct_600, rtol=0, atol=0.02 * float(spread))


def test_reconstruction_refuses_a_step_outside_the_snapshots():
    with pytest.raises(ConfigError, match="snapshots span steps 100..1000"):
        solve_coefficients([100, 1000], [6.94, 6.94], 1200, 10.0)


# ------------------------------------------------------------------------------------------ the callback


class Toy(L.LightningModule):
    """One linear layer fitted by SGD on a fixed batch; records its weights after every optimizer step."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 2)
        self.history = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return (self.layer(x) - y).pow(2).mean()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.history.append({k: v.detach().clone().double() for k, v in self.state_dict().items()})

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(1)
        data = torch.utils.data.TensorDataset(torch.randn(4, 3, generator=g), torch.randn(4, 2, generator=g))
        return torch.utils.data.DataLoader(data, batch_size=4)


def fit(tmp_path, max_steps: int, ckpt_path=None, **options):
    callback = PostHocEMA(str(tmp_path / "ema"), sigma_rels=(0.05, 0.10), **options)
    module = Toy()
    trainer = L.Trainer(max_steps=max_steps, callbacks=[callback], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(module, ckpt_path=ckpt_path, weights_only=True)
    return trainer, module, callback


def test_callback_averages_and_snapshots(tmp_path):
    _, module, callback = fit(tmp_path, max_steps=10, every_n_steps=4)
    index = snapshot_index(tmp_path / "ema")
    assert sorted((e["step"], e["sigma_rel"]) for e in index) == [(s, r) for s in (4, 8, 10) for r in (0.05, 0.1)]
    weights = module.history  # weights after steps 1..10
    for gamma, average in zip(callback.gammas, callback.averages):
        t = torch.arange(1, 11, dtype=torch.float64)
        w = (t ** (gamma + 1) - (t - 1) ** (gamma + 1)) / 10 ** (gamma + 1)
        expected = sum(wi * h["layer.weight"] for wi, h in zip(w, weights))
        torch.testing.assert_close(average["layer.weight"].double(), expected, rtol=1e-5, atol=1e-7)
    state, info, coefficients = reconstruct(tmp_path / "ema", 0.10)
    torch.testing.assert_close(state["layer.weight"], callback.averages[1]["layer.weight"], rtol=0, atol=1e-6)
    assert info["posthoc_ema"]["step"] == 10 and len(coefficients) == 6


def test_callback_resumes_its_averages_from_a_checkpoint(tmp_path):
    whole = fit(tmp_path / "whole", max_steps=10, every_n_steps=5)[2]
    trainer, _, _ = fit(tmp_path / "part", max_steps=6, every_n_steps=5)
    ckpt = tmp_path / "part.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = fit(tmp_path / "part", max_steps=10, ckpt_path=ckpt, every_n_steps=5)[2]
    for a, b in zip(whole.averages, resumed.averages):
        torch.testing.assert_close(a, b)
    assert sorted(e["step"] for e in snapshot_index(tmp_path / "part" / "ema")) == [5, 5, 6, 6, 10, 10]


def test_bad_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="sigma_rel"):
        PostHocEMA(str(tmp_path), sigma_rels=(0.5,))
    with pytest.raises(ConfigError, match="every_n_steps"):
        PostHocEMA(str(tmp_path), every_n_steps=0)


# ------------------------------------------------------------------------------------------ train.py and the tool


@pytest.mark.slow
def test_train_writes_snapshots_and_the_tool_rebuilds_loadable_checkpoints(tmp_path):
    from conftest import describe, run_script, write_sprites

    from diffusion.tools import posthoc_ema
    from diffusion.training.checkpoints import load_checkpoint, module_from_checkpoint

    data, run_dir = write_sprites(tmp_path / "data"), tmp_path / "run"
    proc = run_script("train.py", "data=sprites", f"data.dir={data}", f"hydra.run.dir={run_dir}", "callbacks=[default,posthoc_ema]",
                      "trainer.max_steps=3", "callbacks.posthoc_ema.every_n_steps=2")
    assert proc.returncode == 0, describe(proc)
    names = sorted(path.name for path in (run_dir / "ema").glob("*.safetensors"))
    assert names == [f"step_{s:08d}-sigma_rel_{r:.4f}.safetensors" for s in (2, 3) for r in (0.05, 0.1)]  # and the last step
    stored = load_checkpoint(run_dir / "ema" / names[-1])  # a snapshot loads like final.safetensors
    rows = posthoc_ema.run(posthoc_ema.build_parser().parse_args([
        str(run_dir), "--sigma-rel", "0.1", "0.07", "--fid", "--n", "8", "--nfe", "2", "--kid-subsets", "2", "--json", str(tmp_path / "rows.json"),
    ]))
    # the run's fixed EMA first, measured like the reconstructions: the baseline they must beat
    assert [(r["sigma_rel"], r["step"]) for r in rows] == [(None, None), (0.1, 3), (0.07, 3)]
    assert rows[0]["fixed_ema"] and rows[0]["path"] == str(run_dir / "checkpoints" / "final.safetensors")
    assert all(r["fid"] >= 0 and r["n"] == 8 for r in rows)
    rebuilt = load_checkpoint(rows[1]["path"])
    module_from_checkpoint(rebuilt)
    for key, value in stored["state_dict"].items():  # sigma_rel 0.1 is stored: the reconstruction is that snapshot
        torch.testing.assert_close(rebuilt["state_dict"][key], value, rtol=0, atol=1e-5)


def test_tool_says_when_a_run_has_no_snapshots(tmp_path, capsys):
    from diffusion.tools import posthoc_ema

    with pytest.raises(SystemExit) as info:
        posthoc_ema.main([str(tmp_path)])
    assert info.value.code == 2
    assert "callbacks=[default,posthoc_ema]" in capsys.readouterr().err
