"""Shared fixtures: tiny sprite files, the entry points as subprocesses, and Hydra's compose API."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pytest` run from anywhere (not only `python -m pytest` in the root) finds diffusion/
    sys.path.insert(0, str(ROOT))
CONF_DIR = ROOT / "conf"

# One intra-op thread: the tests' tensors are tiny, and with two OpenMP threads on a 2-core machine a
# single busy core makes every op wait at OpenMP barriers (a 4 ms U-Net forward took 1.6 s).
torch.set_num_threads(1)
SUBPROCESS_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "NO_COLOR": "1"}

IMAGES_FILE = "sprites_1788_16x16.npy"
LABELS_FILE = "sprite_labels_nc_1788_16x16.npy"
N_CLASSES = 5

# A model small enough that a few training steps take a second or two on one CPU core.
TINY_MODEL = [
    "network.base_channels=8",
    "network.channel_mult=[1,2]",
    "network.attn_resolutions=[]",
    "network.norm_groups=4",
]

# Everything else train.py needs to be quick and deterministic: 32-bit, few steps, small grids.
TINY_TRAIN = TINY_MODEL + [
    "data.batch_size=32",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.max_steps=4",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
    "training.lr_warmup_steps=0",
    "sampler.steps=8",
    "callbacks.sample_grid.n=8",
    "validation.fraction=1",  # one validation (grid, FID, best checkpoint) at the last step
    "callbacks.sample_grid.sampler.steps=3",
    "final_samples.n=8",
    "callbacks.fid.num_samples=8",
    "callbacks.fid.samplers.default.steps=2",
    "callbacks.fid.kid_subsets=2",
    "fid_features.train.min_steps=2",
]


def make_sprites(n: int = 160, n_classes: int = N_CLASSES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sprites in the course's format: uint8 (N, 16, 16, 3) images and float64 one-hot (N, C) labels.

    The first image is black and the second white, so the extremes 0 and 255 are always present."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8)
    images[0] = 0
    images[1] = 255
    labels = np.zeros((n, n_classes), dtype=np.float64)
    labels[np.arange(n), np.arange(n) % n_classes] = 1.0
    return images, labels


def write_sprites(directory: Path, n: int = 160, seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    images, labels = make_sprites(n, seed=seed)
    np.save(directory / IMAGES_FILE, images)
    np.save(directory / LABELS_FILE, labels)
    return directory


@pytest.fixture
def sprite_dir(tmp_path: Path) -> Path:
    """A folder holding 160 tiny sprites as the course's two .npy files."""
    return write_sprites(tmp_path / "sprites")


def run_script(
    script: str,
    *overrides: str,
    tiny: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    **popen: Any,
) -> subprocess.CompletedProcess:
    """Run ``train.py`` or ``sample.py`` with this interpreter from the repository root.

    ``tiny`` adds the tiny-model/short-run overrides for train.py (ignored for sample.py); ``popen`` goes to
    ``subprocess.run`` (``preexec_fn=``: prepare the child, e.g. drop capabilities)."""
    args = list(overrides)
    if tiny and script == "train.py":
        args = TINY_TRAIN + args
    full_env = {**os.environ, **SUBPROCESS_ENV, **(env or {})}
    full_env.setdefault("DIFFUSION_ROOT", str(ROOT / ".cache" / "test-root"))
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


def describe(proc: subprocess.CompletedProcess) -> str:
    """The tail of a finished process's output, for assertion messages."""
    return f"rc={proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"


@contextmanager
def hydra_config(config_name: str = "train", overrides: Iterable[str] = ()):
    """Compose a config of conf/ in-process (no run directory, no ${hydra:...} resolution)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="test"):
        yield compose(config_name=config_name, overrides=list(overrides))


def raises_config_error(fn, *args, **kwargs) -> str:
    """Call fn and return the message of the ConfigError it raised, looking through the wrappers
    (Hydra's InstantiationException) that keep it as ``__cause__``."""
    from diffusion.core.errors import ConfigError

    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    err: BaseException | None = info.value
    while err is not None and not isinstance(err, ConfigError):
        err = err.__cause__ or err.__context__
    assert err is not None, f"expected a ConfigError, got {info.value!r}"
    return str(err)


def compose_config(config_name: str = "train", overrides: Iterable[str] = ()):
    with hydra_config(config_name, overrides) as cfg:
        return cfg


class TinyRun:
    """A finished tiny training run: ``data_dir`` (160 sprites) and ``run_dir`` (checkpoints, samples...)."""

    def __init__(self, root: Path):
        self.root, self.data_dir, self.run_dir = root, root / "data", root / "run"

    @property
    def ckpt(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"

    @property
    def export(self) -> Path:
        return self.run_dir / "checkpoints" / "final.safetensors"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """One `python train.py` run of the tiny model (4 steps), shared by the modules that need a trained
    checkpoint. Read-only: copy it before changing anything."""
    run = TinyRun(tmp_path_factory.mktemp("tiny-run"))
    write_sprites(run.data_dir)
    proc = run_script("train.py", "data=sprites", f"data.dir={run.data_dir}", f"hydra.run.dir={run.run_dir}")
    assert proc.returncode == 0, describe(proc)
    return run
