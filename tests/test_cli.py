"""End to end through the entry points: train.py and sample.py as subprocesses on a tiny model and tiny data.

One training run (and an identical spare, for the resume test) is shared by the whole module; runs that do
not depend on each other go two at a time (the machine has two cores and most of a run's time is importing)."""

from __future__ import annotations

import csv
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGES_FILE, compose_config, describe, raises_config_error, run_script, write_sprites
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

    def copy(self, name: str) -> Path:
        """A copy of the run directory, for runs that would change it."""
        target = self.root / name
        shutil.copytree(self.run_dir, target)
        return target


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


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def train_steps(path: Path) -> list[int]:
    return sorted(int(row["step"]) for row in read_csv(path) if row.get("train/loss"))


# --------------------------------------------------------------------------------- train.py


def test_train_leaves_its_artefacts(trained):
    run = trained.run_dir
    assert trained.ckpt.is_file()
    assert (run / "checkpoints" / "epoch_000.ckpt").is_file()
    assert (run / "samples" / "final.png").is_file()
    assert (run / "samples" / "epoch_0000.png").is_file()  # the per-epoch grid
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["epoch_0000.png", "final.png"]

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
    assert (run / "checkpoints" / "epoch_001.ckpt").is_file()
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
    from diffusion.generation import sample_to_folder

    def run(out, *overrides):
        sample_to_folder(compose_config("sample", [f"ckpt={trained.ckpt}", "n=5", "sampler=heun", "steps=3", "seed=1",
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


# --------------------------------------------------------------------------------- bad input


@dataclass
class ErrorCase:
    proc: object
    words: tuple[str, ...]
    path: Path | None = None  # a file or folder that must come through unchanged
    before: object = None
    hydra_before: dict | None = None  # the run's .hydra/ record, for a refused run


@pytest.fixture(scope="module")
def errors(trained) -> dict[str, ErrorCase]:
    root = trained.root / "errors"
    root.mkdir()
    data = ("data=sprites", f"data.dir={trained.data_dir}")
    ckpt = f"ckpt={trained.ckpt}"

    empty_data = root / "no-data"
    empty_data.mkdir()
    random_bytes = root / "random.ckpt"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(4096))
    wider = trained.copy("errors/wider")
    existing = trained.copy("errors/existing")
    taken_out = root / "taken"
    taken_out.mkdir()
    np.savez(taken_out / "samples.npz", images=np.zeros((1, 16, 16, 3), np.uint8), labels=np.zeros(1))

    def run(i: str) -> str:
        return f"hydra.run.dir={root / ('run-' + i)}"

    jobs = {
        "train-missing-data": (("train.py", "data=sprites", f"data.dir={empty_data}", run("a")),
                               (IMAGES_FILE, str(empty_data), "DeepLearning.AI", "data=procedural")),
        "train-T0": (("train.py", *data, "schedule.T=0", run("b")), ("schedule.T=0",)),
        "train-beta-decreasing": (("train.py", *data, "schedule.beta_start=0.02", "schedule.beta_end=0.0001", run("c")),
                                  ("beta_start < beta_end",)),
        "train-other-model": (("train.py", *data, f"hydra.run.dir={wider}", "ckpt_path=last", "model.base_channels=16"),
                              ("different model config", "last.ckpt")),
        "train-run-dir-taken": (("train.py", *data, f"hydra.run.dir={existing}"), (str(existing), "ckpt_path=last")),
        "sample-missing-ckpt": (("sample.py", f"ckpt={root / 'absent.ckpt'}", f"out={root / 'o1'}"), ("absent.ckpt", "does not exist")),
        "sample-random-bytes": (("sample.py", f"ckpt={random_bytes}", f"out={root / 'o3'}"), (str(random_bytes),)),
        "sample-steps-above-T": (("sample.py", ckpt, "steps=501", f"out={root / 'o5'}"), ("steps=501", "T=500")),
        "sample-n0": (("sample.py", ckpt, "n=0", f"out={root / 'o6'}"), ("n=0",)),
        "sample-unknown-label": (("sample.py", ckpt, "n=2", "label=dragon", f"out={root / 'o8'}"), ("label=dragon", "hero")),
        "sample-out-taken": (("sample.py", ckpt, "n=2", "steps=2", f"out={taken_out}"), ("samples.npz", "overwrite=true")),
    }
    watched = {  # files (or whole folders) that must come through byte for byte
        "train-run-dir-taken": existing / "checkpoints",
        "train-other-model": wider / "checkpoints",
        "sample-out-taken": taken_out / "samples.npz",
    }
    before = {name: snapshot(path) if path.is_dir() else path.read_bytes() for name, path in watched.items()}
    hydra_before = snapshot(existing / ".hydra")
    procs = run_parallel({name: args for name, (args, _) in jobs.items()})
    cases = {name: ErrorCase(procs[name], words, watched.get(name), before.get(name)) for name, (_, words) in jobs.items()}
    cases["train-run-dir-taken"].hydra_before = hydra_before
    return cases


ERROR_CASES = [
    "train-missing-data", "train-T0", "train-beta-decreasing", "train-other-model", "train-run-dir-taken",
    "sample-missing-ckpt", "sample-random-bytes", "sample-steps-above-T", "sample-n0", "sample-unknown-label",
    "sample-out-taken",
]


@pytest.mark.parametrize("name", ERROR_CASES)
def test_bad_input_is_one_line_and_status_2(errors, name):
    case = errors[name]
    proc = case.proc
    assert proc.returncode == 2, describe(proc)
    assert "Traceback" not in proc.stderr + proc.stdout, describe(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), describe(proc)
    for word in case.words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    if case.path is not None:
        now = snapshot(case.path) if case.path.is_dir() else case.path.read_bytes()
        assert now == case.before, f"{case.path} was changed"


def test_nothing_written_over_a_taken_run_dir(errors):
    case = errors["train-run-dir-taken"]
    assert snapshot(case.path) == case.before
    assert not (errors["sample-out-taken"].path.parent / "grid.png").exists()


def test_refused_run_keeps_the_runs_hydra_record(errors):
    case = errors["train-run-dir-taken"]
    assert snapshot(case.path.parent / ".hydra") == case.hydra_before


def test_error_cases_are_all_checked(errors):
    assert sorted(errors) == sorted(ERROR_CASES)


def test_sample_settings_in_process(trained, tmp_path):
    """The rest of sample.py's checks, without a subprocess each."""
    from diffusion.builders import module_from_checkpoint
    from diffusion.checkpoints import load_checkpoint
    from diffusion.errors import ConfigError
    from diffusion.generation import parse_labels, sample_to_folder

    for override, words in (("n=-4", "n=-4"), ("guidance=-1", "guidance=-1"), ("steps=0", "steps=0"),
                            ("steps=501", "T=500")):
        cfg = compose_config("sample", [f"ckpt={trained.ckpt}", f"out={tmp_path}", override])
        assert words in raises_config_error(sample_to_folder, cfg)
    assert not (tmp_path / "samples.npz").exists()

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
    from diffusion.builders import module_from_checkpoint
    from diffusion.checkpoints import load_checkpoint

    export = trained.run_dir / "checkpoints" / "final.safetensors"
    if not export.exists():
        pytest.skip("train.py writes no final.safetensors")
    ckpt, exported = load_checkpoint(trained.ckpt), load_checkpoint(export)
    assert exported["diffusion"] == ckpt["diffusion"]
    assert sorted(exported["state_dict"]) == sorted(ckpt["state_dict"])
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(exported["state_dict"][key], value), key
    assert module_from_checkpoint(exported).num_classes == 5


def test_checkpoint_errors_in_process(trained, tmp_path):
    from diffusion.checkpoints import load_checkpoint, resolve_ckpt_path
    from diffusion.errors import ConfigError

    not_ours = tmp_path / "plain.ckpt"
    torch.save({"weights": torch.zeros(3)}, not_ours)
    with pytest.raises(ConfigError, match="not a checkpoint written by"):
        load_checkpoint(not_ours)
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(trained.ckpt.read_bytes()[:1000])
    with pytest.raises(ConfigError, match="cut.ckpt"):
        load_checkpoint(truncated)
    with pytest.raises(ConfigError, match="absent.ckpt"):
        resolve_ckpt_path(str(tmp_path / "absent.ckpt"), tmp_path)
    with pytest.raises(ConfigError, match="last.ckpt"):
        resolve_ckpt_path("last", tmp_path)
    assert resolve_ckpt_path("last", trained.run_dir) == trained.ckpt
    assert resolve_ckpt_path(None, tmp_path) is None


# --------------------------------------------------------------------------------- the error wrapper


def _exit_of(fn, capsys):
    from diffusion.cli import reports_user_errors

    with pytest.raises(SystemExit) as info:
        reports_user_errors(fn)()
    captured = capsys.readouterr()
    return info.value.code, captured.err


def test_wrapper_reports_config_errors_in_one_line(capsys):
    from hydra.utils import instantiate

    from diffusion.errors import ConfigError

    def direct():
        raise ConfigError("schedule.T=0 must be positive")

    assert _exit_of(direct, capsys) == (2, "error: schedule.T=0 must be positive\n")

    def wrapped():  # Hydra's instantiate keeps the ConfigError as __cause__ of its own exception
        instantiate({"_target_": "diffusion.schedules.LinearSchedule", "T": 0})

    code, err = _exit_of(wrapped, capsys)
    assert code == 2 and err.startswith("error: schedule.T=0") and err.count("\n") == 1


def test_wrapper_reports_missing_settings(capsys):
    from omegaconf import OmegaConf

    def missing():
        return OmegaConf.create({"ckpt": "???"}).ckpt

    code, err = _exit_of(missing, capsys)
    assert code == 2 and err.startswith("error: missing required setting ckpt") and err.count("\n") == 1


def test_wrapper_lets_bugs_through(capsys):
    from diffusion.cli import reports_user_errors

    def bug():
        raise KeyError("a bug, not the user's input")

    with pytest.raises(KeyError):
        reports_user_errors(bug)()
    assert capsys.readouterr().err == ""
