"""End to end through the entry points: train.py and sample.py as subprocesses on a tiny model and tiny data.

One training run (and an identical spare, for the resume test) is shared by the whole module; runs that do
not depend on each other go two at a time (the machine has two cores and most of a run's time is importing)."""

from __future__ import annotations

import csv
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, describe, run_script, write_sprites
from PIL import Image

pytestmark = pytest.mark.slow

TRAIN_STEPS = 4  # 160 sprites, 8 held out, batches of 32: one epoch of 4 steps


def run_parallel(jobs: dict[str, tuple]) -> dict:
    """Run {name: (script, *overrides)} two at a time; {name: CompletedProcess}."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_script, *args) for name, args in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


@dataclass
class Run:
    root: Path
    data_dir: Path
    run_dir: Path
    spare_dir: Path  # a second, identical run, for the resume test to change in place

    @property
    def ckpt(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Run:
    root = tmp_path_factory.mktemp("cli")
    data_dir = write_sprites(root / "data")
    runs = run_parallel({
        name: ("train.py", "data=sprites", f"data.dir={data_dir}", f"hydra.run.dir={root / name}") for name in ("run", "spare")
    })
    for proc in runs.values():
        assert proc.returncode == 0, describe(proc)
    return Run(root, data_dir, root / "run", root / "spare")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def train_steps(path: Path) -> list[int]:
    return sorted(int(row["step"]) for row in read_csv(path) if row.get("train/loss"))


# --------------------------------------------------------------------------------- train.py


def test_train_leaves_its_artefacts(trained):
    run = trained.run_dir
    assert trained.ckpt.is_file()
    # last.ckpt, and the best by val/fid (measured at the last step): bounded disk use, no file per epoch
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(names) == 3 and names[0].startswith(f"best_{TRAIN_STEPS:07d}_fid_"), names
    assert names[1:] == ["final.safetensors", "last.ckpt"], names
    assert (run / "samples" / "final.png").is_file()
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["final.png", f"step_{TRAIN_STEPS:07d}.png"]

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == TRAIN_STEPS
    for key in ("train/loss", "val/loss"):
        assert np.isfinite(metrics[key]) and 0 < metrics[key] < 10, metrics

    config = (run / "config.yaml").read_text()
    assert "base_channels: 8" in config and str(run) in config and "${" not in config  # resolved

    rows = read_csv(run / "csv" / "metrics.csv")
    assert {"train/loss", "val/loss", "step"} <= set(rows[0])
    assert train_steps(run / "csv" / "metrics.csv") == list(range(TRAIN_STEPS))
    assert any(row.get("val/loss") for row in rows)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))

    final = np.load(run / "samples" / "final.npz")
    assert final["images"].shape == (8, 16, 16, 3) and final["images"].dtype == np.uint8
    assert final["labels"].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]

    ckpt = torch.load(trained.ckpt, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == TRAIN_STEPS
    assert ckpt["diffusion"]["class_names"] == ["hero", "non-hero", "food", "spell", "side-facing"]
    assert ckpt["diffusion"]["image_size"] == 16


def resume(run_dir: Path, data_dir: Path, max_steps: int, max_epochs: int):
    return (
        "train.py", "data=sprites", f"data.dir={data_dir}", f"hydra.run.dir={run_dir}",
        "ckpt_path=last", f"trainer.max_steps={max_steps}", f"trainer.max_epochs={max_epochs}",
    )


@pytest.fixture(scope="module")
def resumed(trained) -> dict:
    """The spare run resumed in place with twice the steps, and a new run without a validation split.

    (max_epochs is raised too: with max_steps set, Lightning resumes an end-of-epoch checkpoint by running
    one extra, empty epoch, so max_epochs=2 would stop before any new step.)"""
    no_val = trained.root / "no-val"
    procs = run_parallel({
        "in_place": resume(trained.spare_dir, trained.data_dir, 2 * TRAIN_STEPS, 10),
        "no_val": ("train.py", "data=sprites", f"data.dir={trained.data_dir}", f"hydra.run.dir={no_val}",
                   "data.val_fraction=0"),
    })
    return {"procs": procs, "in_place": trained.spare_dir, "no_val": no_val}


def test_resume_continues_the_step_count(resumed):
    proc, run = resumed["procs"]["in_place"], resumed["in_place"]
    assert proc.returncode == 0, describe(proc)
    assert "Restoring states from the checkpoint" in proc.stdout + proc.stderr

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 2 * TRAIN_STEPS
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 * TRAIN_STEPS
    assert list((run / "checkpoints").glob(f"best_{2 * TRAIN_STEPS:07d}_fid_*.ckpt"))
    assert not list((run / "checkpoints").glob("*-v*.ckpt")), "resuming in place must not version the checkpoints"
    # The resumed run appends to metrics.csv: the first run's steps are kept, the new ones follow, none repeated.
    steps = train_steps(run / "csv" / "metrics.csv")
    old, new = steps[:TRAIN_STEPS], steps[TRAIN_STEPS:]
    assert old == list(range(TRAIN_STEPS)), steps
    # Lightning numbers the first logged step after an end-of-epoch restore one higher: a gap of one step at most.
    assert len(new) == TRAIN_STEPS and len(set(new)) == TRAIN_STEPS and TRAIN_STEPS <= new[0] <= TRAIN_STEPS + 1, steps


def test_training_without_validation_split(resumed):
    proc, run = resumed["procs"]["no_val"], resumed["no_val"]
    assert proc.returncode == 0, describe(proc)
    assert (run / "metrics.json").is_file() and (run / "samples" / "final.png").is_file()


# --------------------------------------------------------------------------------- sample.py


@pytest.fixture(scope="module")
def sampled(trained) -> dict:
    out = trained.root / "samples"
    ckpt = f"ckpt={trained.ckpt}"
    runs = run_parallel({
        "trajectory": ("sample.py", ckpt, "n=8", "steps=5", "trajectory=true", f"out={out / 'trajectory'}"),
        "plain": ("sample.py", ckpt, "n=8", "steps=5", f"out={out / 'plain'}"),
    })
    for proc in runs.values():
        assert proc.returncode == 0, describe(proc)
    return {name: out / name for name in runs}


def test_sample_writes_npz_and_grid(sampled):
    with np.load(sampled["plain"] / "samples.npz") as f:
        images, labels = f["images"], f["labels"]
    assert images.shape == (8, 16, 16, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 1, 2, 3, 4, 0, 1, 2]  # no label=: cycles through the classes
    with Image.open(sampled["plain"] / "grid.png") as grid:
        assert grid.size == (8 * 65 + 1, 65 + 1)  # 8 columns of 16px x4 with 1px padding
    assert not (sampled["plain"] / "trajectory.gif").exists()


def test_sample_trajectory_gif(sampled):
    with Image.open(sampled["trajectory"] / "trajectory.gif") as gif:
        assert 2 <= gif.n_frames <= 5  # one frame per step for 5 steps (PIL merges identical neighbours)
        assert gif.size == (8 * 65 + 1, 65 + 1)


def test_same_seed_gives_identical_samples(sampled):
    """Two separate runs with the same seed (one of them also recording the trajectory)."""
    a, b = np.load(sampled["trajectory"] / "samples.npz"), np.load(sampled["plain"] / "samples.npz")
    assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["labels"], b["labels"])
    assert len(np.unique(a["images"].reshape(8, -1), axis=0)) == 8  # and the eight differ from each other


def test_other_sampler_null_class_and_guidance(trained, tmp_path, capsys):
    """sample.py's body in-process: another sampler, the null class, classifier-free guidance, overwrite."""
    from diffusion.tools.sample import sample_to_folder

    def run(out, *overrides):
        sample_to_folder(compose_config("sample", [f"ckpt={trained.ckpt}", "n=5", "sampler=heun", "steps=17", "seed=1",
                                                   f"out={tmp_path / out}", *overrides]))
        with np.load(tmp_path / out / "samples.npz") as f:
            return f["images"], f["labels"]

    images, labels = run("uncond", "label=uncond")
    assert "heun" in capsys.readouterr().out
    assert labels.tolist() == [5] * 5  # the null class
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8
    guided, labels = run("guided", "label=hero", "guidance=1.5")
    assert labels.tolist() == [0] * 5  # label by name: all heroes
    plain, _ = run("plain", "label=hero", "guidance=0")
    assert not np.array_equal(guided, plain), "guidance must change the samples"
    again, _ = run("guided", "label=hero", "guidance=0", "overwrite=true")  # replaces the guided samples
    assert np.array_equal(again, plain)
    # precision=bf16 runs the U-Net under bf16 autocast: the same samples up to bf16 rounding.
    fp32, _ = run("fp32", "label=hero", "precision=32")
    bf16, _ = run("bf16", "label=hero", "precision=bf16")
    assert "bf16" in capsys.readouterr().out.splitlines()[-1]
    difference = np.abs(fp32.astype(int) - bf16.astype(int))
    assert 0 < difference.mean() < 4, difference.mean()


# --------------------------------------------------------------------------------- bad input
# Every bad input (data, settings, checkpoints) is tried in tests/test_bad_inputs.py, in one table.


def test_sample_labels_in_process(trained):
    """How sample.py reads label= (the bad settings are in tests/test_bad_inputs.py)."""
    from diffusion.core.errors import ConfigError
    from diffusion.tools.sample import parse_labels
    from diffusion.training.checkpoints import load_checkpoint, module_from_checkpoint

    module = module_from_checkpoint(load_checkpoint(trained.ckpt))
    assert parse_labels(None, 7, module).tolist() == [0, 1, 2, 3, 4, 0, 1]
    assert parse_labels("food", 2, module).tolist() == [2, 2]
    assert parse_labels(4, 2, module).tolist() == [4, 4]
    assert parse_labels("3", 1, module).tolist() == [3]
    assert parse_labels("uncond", 2, module).tolist() == [5, 5]
    for bad in ("7", 5, "-1", -1, "dragon", "1.5"):
        with pytest.raises(ConfigError, match="is not a class"):
            parse_labels(bad, 2, module)


def test_safetensors_export_matches_last_checkpoint(trained):
    from diffusion.training.checkpoints import load_checkpoint, module_from_checkpoint

    export = trained.run_dir / "checkpoints" / "final.safetensors"
    if not export.exists():
        pytest.skip("train.py writes no final.safetensors")
    ckpt, exported = load_checkpoint(trained.ckpt), load_checkpoint(export)
    assert exported["diffusion"] == ckpt["diffusion"]
    assert sorted(exported["state_dict"]) == sorted(ckpt["state_dict"])
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(exported["state_dict"][key], value), key
    assert module_from_checkpoint(exported).num_classes == 5


def test_resolve_ckpt_path(trained, tmp_path):
    from diffusion.core.errors import ConfigError
    from diffusion.training.checkpoints import resolve_ckpt_path

    with pytest.raises(ConfigError, match="absent.ckpt"):
        resolve_ckpt_path(str(tmp_path / "absent.ckpt"), tmp_path)
    with pytest.raises(ConfigError, match="last.ckpt"):
        resolve_ckpt_path("last", tmp_path)
    assert resolve_ckpt_path("last", trained.run_dir) == trained.ckpt
    assert resolve_ckpt_path(None, tmp_path) is None


# --------------------------------------------------------------------------------- the error wrapper


def _exit_of(fn, capsys):
    from diffusion.tools.cli import reports_user_errors

    with pytest.raises(SystemExit) as info:
        reports_user_errors(fn)()
    captured = capsys.readouterr()
    return info.value.code, captured.err


def test_wrapper_reports_config_errors_in_one_line(capsys):
    from hydra.utils import instantiate

    from diffusion.core.errors import ConfigError

    def direct():
        raise ConfigError("schedule.T=0 must be positive")

    assert _exit_of(direct, capsys) == (2, "error: schedule.T=0 must be positive\n")

    def wrapped():  # Hydra's instantiate keeps the ConfigError as __cause__ of its own exception
        instantiate({"_target_": "diffusion.core.schedules.LinearSchedule", "T": 0})

    code, err = _exit_of(wrapped, capsys)
    assert code == 2 and err.startswith("error: schedule.T=0") and err.count("\n") == 1


def test_wrapper_reports_missing_settings(capsys):
    from omegaconf import OmegaConf

    def missing():
        return OmegaConf.create({"ckpt": "???"}).ckpt

    code, err = _exit_of(missing, capsys)
    assert code == 2 and err.startswith("error: missing required setting ckpt") and err.count("\n") == 1


def test_wrapper_lets_bugs_through(capsys):
    from diffusion.tools.cli import reports_user_errors

    def bug():
        raise KeyError("a bug, not the user's input")

    with pytest.raises(KeyError):
        reports_user_errors(bug)()
    assert capsys.readouterr().err == ""
