"""In-memory sprite data for Lightning.

The whole data set is one uint8 tensor (the course's 89,400 sprites are 69 MB). Batches are drawn by
index and scaled to [-1, 1] in bulk after they reach the device, so there are no per-image
transforms and no loader workers. Sharding across DDP ranks is done here, by the batch sampler
(so the trainer runs with ``use_distributed_sampler=False``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from diffusion.core.errors import ConfigError, warn_inexact_resume
from diffusion.core.seeds import DATA_FLIP, derive_seed
from diffusion.data import sources


class IndexedTensors(Dataset):
    """A dataset whose items are whole batches: ``ds[index_tensor]`` slices every tensor at once."""

    def __init__(self, *tensors: Tensor):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: Tensor) -> tuple[Tensor, ...]:
        return tuple(t[index] for t in self.tensors)


class ShardedBatches(Sampler):
    """Index batches for one rank: a permutation shared by all ranks (seeded by seed + epoch), dealt
    round-robin so ranks see disjoint images, cut into batches. Every rank gets the same number of
    batches, or DDP would wait forever on the rank with one batch more.

    Resumable: ``consume()`` counts the batches training has taken this epoch (Lightning fetches one batch
    ahead, so the iterator's own count would be one too many), ``state_dict`` holds that position, and after
    ``load_state_dict`` the same epoch's iterator starts where the checkpointed run stood instead of at batch 0.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = True):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        self.consumed = 0  # batches of this epoch that training has taken
        self._resume_at: tuple[int, int] | None = None  # (epoch, batch) of a loaded state, used by that epoch's iterator

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        per_rank = self.n // self.world_size
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __iter__(self):
        start = 0
        if self._resume_at is not None and self._resume_at[0] == self.epoch:
            start = min(self._resume_at[1], len(self))
        self._resume_at, self.consumed = None, start
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.n)
        per_rank = self.n // self.world_size
        mine = order[self.rank :: self.world_size][:per_rank]
        for start in range(start * self.batch_size, len(self) * self.batch_size, self.batch_size):
            yield mine[start : start + self.batch_size]

    def consume(self) -> tuple[int, int]:
        """(epoch, index in the epoch) of the batch training takes now."""
        position = (self.epoch, self.consumed)
        self.consumed += 1
        return position

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "n": self.n, "batch_size": self.batch_size,
                "world_size": self.world_size, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        mine = self.state_dict()
        # A changed process count is StepSeeds' to report (training.resume): one line, not two.
        changed = [f"{key} {state[key]} -> {mine[key]}" for key in ("n", "batch_size", "seed")
                   if key in state and state[key] != mine[key]]
        if changed:
            warn_inexact_resume(f"the data order changed since the checkpoint ({', '.join(changed)}): the epoch goes "
                                f"on after batch {state['consumed']} of a different order", self.rank)
        self._resume_at = (int(state["epoch"]), int(state["consumed"]))


class ResumableLoader(DataLoader):
    """A DataLoader that Lightning checkpoints (its ``_Stateful`` protocol: ``state_dict``/``load_state_dict``):
    the position of its ``ShardedBatches`` in the epoch, so a run resumed mid-epoch trains the batches the
    uninterrupted run would have trained, not the epoch's first ones again."""

    # Lightning may rebuild the loader around another sampler (trainer.overfit_batches: a SequentialSampler),
    # which has no position to keep.
    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict() if isinstance(self.sampler, ShardedBatches) else {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if isinstance(self.sampler, ShardedBatches) and state:
            self.sampler.load_state_dict(state)


class SpriteDataModule(L.LightningDataModule):
    """Base class: subclasses implement ``load()`` returning (images uint8 NHWC, labels int64 or None, class names).

    Args:
        batch_size: images per optimizer step on each process.
        val_fraction: share of the images held out for validation and FID reference statistics.
        split_seed: seed of the fixed train/validation split.
        hflip: flip training images horizontally at random (off by default: side-facing sprites
            have a direction).
    """

    def __init__(self, batch_size: int = 128, val_fraction: float = 0.05, split_seed: int = 0, hflip: bool = False, seed: int = 0):
        super().__init__()
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ConfigError(f"data.batch_size={batch_size} must be a positive integer")
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"data.val_fraction={val_fraction} must be in [0, 1)")
        self.batch_size, self.val_fraction, self.split_seed = batch_size, val_fraction, split_seed
        self.hflip, self.seed = hflip, seed
        self.class_names: list[str] = []
        self.train_set: IndexedTensors | None = None
        self.val_set: IndexedTensors | None = None
        self.train_batches: ShardedBatches | None = None  # the training loader's sampler: its position in the epoch

    # -- what a subclass provides -------------------------------------------------------------
    def load(self) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
        raise NotImplementedError

    # -- Lightning hooks -------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images, labels, self.class_names = self.load()
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        labels = torch.from_numpy(labels) if labels is not None else torch.full((len(images),), -1, dtype=torch.long)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.split_seed))
        n_val = int(round(len(images) * self.val_fraction))
        if len(images) - n_val < 1:
            raise ConfigError(f"data set of {len(images)} images leaves nothing to train on with val_fraction={self.val_fraction}")
        val, train = order[:n_val], order[n_val:]
        if len(train) < self.batch_size:
            raise ConfigError(f"data.batch_size={self.batch_size} exceeds the {len(train)} training images; lower data.batch_size")
        self.train_set = IndexedTensors(images[train], labels[train])
        self.val_set = IndexedTensors(images[val], labels[val])

    @property
    def has_validation(self) -> bool:
        return self.val_set is not None and len(self.val_set) > 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        assert self.train_set is not None, "call setup() first"
        return self.train_set.tensors[0].shape[-1]

    def _loader(self, dataset: IndexedTensors, shuffle: bool) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        batch_size = min(self.batch_size, len(dataset) // world) if not shuffle else self.batch_size
        if shuffle and len(dataset) // world < batch_size:
            raise ConfigError(
                f"data.batch_size={batch_size} exceeds the {len(dataset) // world} training images per process; lower data.batch_size"
            )
        sampler = ShardedBatches(len(dataset), max(batch_size, 1), shuffle, self.seed, rank, world, drop_last=shuffle)
        return ResumableLoader(dataset, sampler=sampler, batch_size=None, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.train_set, shuffle=True)
        self.train_batches = loader.sampler
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        x = images.float().div_(127.5).sub_(1)
        if self.trainer is None or not self.trainer.training or self.train_batches is None:
            return x, labels
        epoch, index = self.train_batches.consume()
        if self.hflip:
            # Drawn from the batch's place in the run, not a global stream: a resumed run flips as the whole one did.
            generator = torch.Generator().manual_seed(derive_seed(self.seed, DATA_FLIP, epoch, index, self.trainer.global_rank))
            flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x, labels

    def class_counts(self, split: str = "train") -> list[int]:
        """Images of each class in a split (the class mix FID samples follow); [] without class labels."""
        self.setup()
        labels = (self.val_set if split == "val" else self.train_set).tensors[1]
        if not self.num_classes:
            return []
        return torch.bincount(labels[labels >= 0], minlength=self.num_classes).tolist()

    def real_images(self, split: str = "val") -> Tensor:
        """uint8 (N, 3, H, W) images of a split, e.g. the FID reference set."""
        self.setup()
        return (self.val_set if split == "val" else self.train_set).tensors[0]

    def mean_image(self, split: str = "train") -> Tensor:
        """The split's per-pixel mean, float (3, H, W) in [-1, 1] (the analytic first step's closed form)."""
        pixels = self.real_images(split)
        total = torch.zeros(pixels.shape[1:], dtype=torch.float64)
        for start in range(0, len(pixels), 1000):  # in chunks: a float64 copy of the whole set is 8x its bytes
            total += pixels[start : start + 1000].sum(0, dtype=torch.float64)
        return (total / len(pixels)).div(127.5).sub(1).float()


class ProceduralSprites(SpriteDataModule):
    """The embedded generator (``diffusion.data.procedural``), cached as .npz after the first run."""

    def __init__(self, n: int = 60000, generator_seed: int = 0, cache_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if n < 10:
            raise ConfigError(f"data.n={n} is too small; generate at least 10 sprites")
        self.n, self.generator_seed = n, generator_seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None

    def _cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        from diffusion.data import procedural

        # The generator's code is the cache's key: editing any module of the package regenerates the sprites.
        digest = hashlib.sha1()
        for module in sorted(Path(procedural.__file__).parent.glob("*.py")):
            digest.update(module.name.encode() + b"\0" + module.read_bytes())
        tag = digest.hexdigest()[:10]
        return self.cache_dir / f"procedural_{self.n}_{self.generator_seed}_{tag}.npz"

    def prepare_data(self) -> None:
        path = self._cache_path()
        if path is not None and not path.exists():
            images, labels = self._generate()
            path.parent.mkdir(parents=True, exist_ok=True)
            # One temporary file a process (two jobs of a sweep may start at once), then an atomic rename: a
            # concurrent reader never sees half a file.
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, images=images, labels=labels)
            tmp.replace(path)

    def _generate(self):
        from diffusion.data import procedural

        return procedural.generate_sprites(self.n, seed=self.generator_seed)

    def load(self):
        from diffusion.data.procedural import CLASSES

        path = self._cache_path()
        if path is not None:
            self.prepare_data()
            with np.load(path) as cached:
                images, labels = cached["images"], cached["labels"]
        else:
            images, labels = self._generate()
        return images, labels, list(CLASSES)


class NpySprites(SpriteDataModule):
    """The course's files: ``images`` uint8 (N, 16, 16, 3) and one-hot ``labels`` (N, C) in ``dir``.

    The number of classes comes from the labels file; ``labels: null`` trains unconditionally."""

    def __init__(
        self,
        dir: str = "data/sprites",
        images: str = "sprites_1788_16x16.npy",
        labels: str | None = "sprite_labels_nc_1788_16x16.npy",
        class_names: list[str] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dir, self.images, self.labels, self.class_names_override = dir, images, labels, class_names

    def load(self):
        return sources.load_sprite_files(self.dir, self.images, self.labels, self.class_names_override)


class ImageFolder(SpriteDataModule):
    """Any folder of PNGs or sprite sheets (``cell_size`` > 0 cuts sheets into cells); labels from sub-folders."""

    def __init__(
        self,
        dir: str = "data/images",
        image_size: int = 16,
        cell_size: int | None = None,
        background: tuple[int, int, int] = (255, 255, 255),
        labels_from_subfolders: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dir, self.size, self.cell_size = dir, image_size, cell_size
        self.background, self.labels_from_subfolders = tuple(background), labels_from_subfolders

    def load(self):
        return sources.load_image_folder(self.dir, self.size, self.cell_size, self.background, self.labels_from_subfolders)
