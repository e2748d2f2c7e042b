"""Hydra multiruns: a grid sweep and a small Optuna search, each job in its own directory, then a summary."""

from __future__ import annotations

import csv
import shlex
from pathlib import Path

import pytest
from conftest import TINY_TRAIN, describe, run_script, write_sprites


def sweep(tmp_path: Path, *overrides: str):
    data = write_sprites(tmp_path / "sprites")
    out = tmp_path / "sweep"
    # -m must come before the overrides, so the tiny-run overrides are added here rather than by run_script.
    args = ["-m", *TINY_TRAIN, "data=sprites", f"data.dir={data}", f"hydra.sweep.dir={out}", *overrides]
    proc = run_script("train.py", *args, tiny=False, timeout=600)
    assert proc.returncode == 0, describe(proc)
    with (out / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    return proc, out, rows


@pytest.mark.slow
def test_grid_sweep_runs_each_job_in_its_own_directory(tmp_path: Path):
    proc, out, rows = sweep(tmp_path, "schedule=linear,cosine")
    assert [r["schedule"] for r in rows] == ["linear", "cosine"]
    for job in ("0", "1"):
        assert (out / job / "metrics.json").is_file() and (out / job / ".hydra" / "overrides.yaml").is_file()
        assert (out / job / "checkpoints" / "last.ckpt").is_file()
    # Each job measured its own FID: a 4-step model's samples are noise, far from the sprites (measured 0.39 and 0.43
    # on the sprite features, KID ~0.009; training images against validation images give ~0.01)
    fids = [float(r["val/fid"]) for r in rows]
    assert all(0.2 < fid < 2 for fid in fids) and fids[0] != fids[1]
    assert all(float(r["val/kid_mean"]) > 1e-3 for r in rows)
    assert "sweep summary (2 runs)" in proc.stdout


@pytest.fixture(scope="module")
def optuna_study(tmp_path_factory):
    """A finished 2-trial Optuna search of tiny runs: (process, sweep directory, summary rows)."""
    return sweep(
        tmp_path_factory.mktemp("optuna"),
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "optimized_metric=val/loss",
    )


@pytest.mark.slow
def test_optuna_search_minimises_the_returned_metric(optuna_study):
    proc, out, rows = optuna_study
    assert len(rows) == 2
    results = (out / "optimization_results.yaml").read_text()
    assert "best_value" in results
    best_value = float(results.split("best_value:")[1].split()[0])
    assert best_value == pytest.approx(min(float(r["val/loss"]) for r in rows), rel=1e-6)


@pytest.mark.slow
def test_a_trials_command_reruns_that_one_trial(optuna_study, tmp_path: Path):
    import optuna
    import yaml

    proc, out, rows = optuna_study
    best = min(rows, key=lambda row: float(row["val/loss"]))
    assert (out / "best_command.txt").read_text().strip() == best["command"]
    python, script, *overrides = shlex.split(best["command"])
    assert (python, script) == ("python", "train.py") and not any("hparams_search" in o for o in overrides)

    # one run, not a search: no sweeper, and the trial's drawn values as the composed config
    shown = run_script("train.py", "--cfg", "all", *overrides, tiny=False)
    assert shown.returncode == 0, describe(shown)
    job = yaml.safe_load(shown.stdout)
    hydra_cfg = job["hydra"]
    assert hydra_cfg["mode"] in (None, "RUN") and "Optuna" not in str(hydra_cfg["sweeper"])
    assert hydra_cfg["run"]["dir"].startswith("runs/")  # a run directory of its own, not in the sweep
    assert job["optimizer"]["lr"] == pytest.approx(float(best["optimizer.lr"]))
    assert job["network"]["base_channels"] == int(best["network.base_channels"])
    assert job["callbacks"]["ema"]["sigma_rel"] == pytest.approx(float(best["callbacks.ema.sigma_rel"]))
    assert hydra_cfg["runtime"]["choices"]["schedule"] == best["schedule"]
    assert hydra_cfg["runtime"]["choices"]["objective"] == best["objective"]

    # run for one step: a run directory of its own, and the study gains no trial
    def trials() -> int:
        return len(optuna.load_study(study_name="diffusion", storage=f"sqlite:///{out / 'optuna.db'}").trials)

    before = trials()
    rerun = run_script("train.py", *overrides, "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'rerun'}", tiny=False)
    assert rerun.returncode == 0, describe(rerun)
    assert (tmp_path / "rerun" / "metrics.json").is_file() and trials() == before == 2
