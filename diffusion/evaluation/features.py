"""The framework's own feature network for FID/KID on sprites: a small CNN classifier.

Standard FID embeds images with Inception-v3 trained on ImageNet; its weights cannot be downloaded
here, and 16x16 sprites blown up to 299x299 say little to it. Like the fast.ai lesson that measured
FID with its own classifier, we train a small CNN on the data set's classes and use its penultimate
layer (``num_features`` = 128 after global average pooling) as the embedding.

FID figures are only comparable when they come from the same network, so every set of weights
carries a ``version`` string, ``sprite-cnn-v1-<hash8>``, where the hash covers the architecture
version, the training settings and the content of the training images and labels. The weights are
trained on first use and cached as ``<cache_dir>/<version>.safetensors`` (about 0.4 MB); the same
data and settings give the same file name on any machine, and training is deterministic on the CPU
for a seed and a thread count.

Data without labels: there is nothing to train a classifier on, so ``load_or_train`` raises a
ConfigError asking for a network trained on a labelled set (``python -m diffusion.tools.train_features
data=procedural``), passed as ``fid_features.feature_weights=PATH``. FID with such a network still works
on any 16x16 RGB images; it then measures what a sprite classifier sees.

Command line::

    python -m diffusion.tools.train_features                      # the default procedural data
    python -m diffusion.tools.train_features data=sprites fid_features.train.epochs=2 out=weights/sprites.safetensors
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion.core.denoiser import evaluating
from diffusion.core.errors import ConfigError

ARCH_VERSION = "sprite-cnn-v1"
INPUT_SIZE = 16
NUM_FEATURES = 128
WIDTHS = (32, 64)


class SpriteFeatureNet(nn.Module):
    """Three conv blocks (3x3 conv, batch norm, ReLU; max-pool between blocks) on 16x16 RGB, global
    average pooling to ``num_features`` features, and a linear classifier over the classes.

    ``forward`` returns the features, float32 (N, num_features): this is the module torchmetrics'
    FID and KID call. It accepts uint8 images 0..255 or floats in [0, 1], shape (N, 3, H, W) of any
    size: other sizes are resized to 16x16 inside, by area averaging when shrinking (torchmetrics
    probes custom extractors with 299x299 images) and nearest-neighbour when enlarging.
    """

    def __init__(self, num_classes: int, num_features: int = NUM_FEATURES, widths: Sequence[int] = WIDTHS):
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"the feature network needs at least one class, got num_classes={num_classes}")
        self.num_classes, self.num_features = int(num_classes), int(num_features)
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in (*widths, num_features):
            if layers:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(num_features, num_classes)
        self.version: str | None = None  # set when weights are trained or loaded
        self.info: dict[str, Any] = {}

    @staticmethod
    def prepare(x: Tensor) -> Tensor:
        """uint8 0..255 or float 0..1 images (N, 3, H, W) -> float32 in [-1, 1], 16x16."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.float().div(127.5).sub(1)
        else:
            x = x.float().clamp(0, 1).mul(2).sub(1)
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            shrink = x.shape[-2] >= INPUT_SIZE and x.shape[-1] >= INPUT_SIZE
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="area" if shrink else "nearest")
        return x

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.body(self.prepare(x))

    def logits(self, x: Tensor) -> Tensor:
        return self.classifier(self(x))


@dataclass(frozen=True)
class TrainSettings:
    """How the feature network is trained; every field enters the version hash."""

    seed: int = 0
    epochs: int = 1
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    holdout: float = 0.05  # share of the images kept out of training to report accuracy on
    num_features: int = NUM_FEATURES
    min_steps: int = 200  # small data sets: repeat the epochs until this many optimizer steps

    def __post_init__(self):
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ConfigError(f"train.epochs={self.epochs} must be an integer >= 1")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ConfigError(f"train.batch_size={self.batch_size} must be an integer >= 1")
        if not 0 <= self.holdout < 1:
            raise ConfigError(f"train.holdout={self.holdout} must be in [0, 1)")
        if self.lr <= 0:
            raise ConfigError(f"train.lr={self.lr} must be positive")
        if not (isinstance(self.min_steps, int) and self.min_steps >= 0):
            raise ConfigError(f"train.min_steps={self.min_steps} must be an integer >= 0")


def _settings(settings: TrainSettings | Mapping[str, Any] | None, **overrides) -> TrainSettings:
    if isinstance(settings, TrainSettings):
        base = asdict(settings)
    else:
        base = dict(settings or {})
    unknown = set(base) - set(TrainSettings.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown feature-network training setting(s) {', '.join(sorted(unknown))}")
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainSettings(**base)


@torch.no_grad()
def accuracy(model: SpriteFeatureNet, images: Tensor, labels: Tensor, batch_size: int = 1024) -> float:
    if len(images) == 0:
        return float("nan")
    device = next(model.parameters()).device
    correct = 0
    with evaluating(model):
        for start in range(0, len(images), batch_size):
            logits = model.logits(images[start : start + batch_size].to(device))
            correct += int((logits.argmax(1).cpu() == labels[start : start + batch_size]).sum())
    return correct / len(images)


def train_feature_net(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    seed: int = 0,
    epochs: int = 1,
    batch_size: int = 256,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    holdout: float = 0.05,
    num_features: int = NUM_FEATURES,
    min_steps: int = 200,
    verbose: bool = False,
) -> SpriteFeatureNet:
    """Train the classifier on uint8 images (N, 3, H, W) and integer labels (N,) on the CPU.

    Deterministic for a seed (and a thread count); the global random state is left untouched. A
    seeded ``holdout`` share is kept out of training and the accuracy on it is reported in
    ``model.info["accuracy"]`` (with the training accuracy of the last epoch's batches). The model
    comes back frozen: eval mode, no gradients.
    """
    settings = TrainSettings(seed, epochs, batch_size, lr, weight_decay, holdout, num_features, min_steps)
    images = torch.as_tensor(images)
    labels = torch.as_tensor(labels).long()
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"feature-network training wants uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if len(labels) != len(images) or (labels < 0).any() or (labels >= num_classes).any():
        raise ConfigError(f"feature-network training needs one label in 0..{num_classes - 1} per image")
    start_time = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(images), generator=generator)
        n_hold = int(round(len(images) * holdout))
        if len(images) - n_hold < 1:
            raise ConfigError(f"{len(images)} images leave nothing to train the feature network on with holdout={holdout}")
        hold, train = order[:n_hold], order[n_hold:]
        model = SpriteFeatureNet(num_classes, num_features)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        steps_per_epoch = max(len(train) // batch_size, 1)
        epochs = max(epochs, -(-min_steps // steps_per_epoch))  # small data sets: at least min_steps steps
        total = steps_per_epoch * epochs
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=0.15)
        train_correct = train_seen = 0
        for epoch in range(epochs):
            perm = train[torch.randperm(len(train), generator=generator)]
            train_correct = train_seen = 0
            for step in range(steps_per_epoch):
                idx = perm[step * batch_size : (step + 1) * batch_size]
                logits = model.logits(images[idx])
                loss = F.cross_entropy(logits, labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                train_correct += int((logits.argmax(1) == labels[idx]).sum())
                train_seen += len(idx)
            if verbose and (epoch + 1 == epochs or (epoch + 1) % max(epochs // 5, 1) == 0):
                print(f"feature net epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}, train accuracy {train_correct / train_seen:.4f}")
    model.eval()
    model.info = {
        "accuracy": accuracy(model, images[hold], labels[hold]),
        "train_accuracy": train_correct / max(train_seen, 1),
        "n_train": len(train),
        "n_holdout": n_hold,
        "seconds": round(time.perf_counter() - start_time, 2),
        "settings": asdict(settings),
    }
    return model.requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Weights files: safetensors with the version and training facts as metadata.


def save_weights(model: SpriteFeatureNet, path: str | Path, class_names: Sequence[str] = ()) -> Path:
    """Write the weights atomically (a concurrent reader never sees half a file)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": "diffusion-sprite-features",
        "arch": ARCH_VERSION,
        "version": model.version or f"{ARCH_VERSION}-unversioned",
        "num_classes": str(model.num_classes),
        "num_features": str(model.num_features),
        "class_names": json.dumps(list(class_names)),
        "info": json.dumps(model.info),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.chmod(0o644)  # safetensors creates files readable by their owner only
    tmp.replace(path)
    return path


def load_weights(path: str | Path) -> SpriteFeatureNet:
    """A network written by ``save_weights``, in eval mode, with ``version`` and ``info`` set."""
    from diffusion.training.checkpoints import read_safetensors

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"feature-network weights {path} not found; train them with `python -m diffusion.tools.train_features data=...` "
            "and pass the printed path as fid_features.feature_weights=PATH"
        )
    state, metadata = read_safetensors(path, "retrain them with python -m diffusion.tools.train_features")
    if metadata.get("arch") != ARCH_VERSION:
        raise ConfigError(
            f"{path} holds {metadata.get('arch', 'no known')} feature-network weights, not {ARCH_VERSION}; "
            "retrain them with python -m diffusion.tools.train_features"
        )
    model = SpriteFeatureNet(int(metadata["num_classes"]), int(metadata["num_features"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(f"feature-network weights {path} do not fit {ARCH_VERSION}: {str(err).splitlines()[0]}") from None
    model.version = metadata["version"]
    model.info = {**json.loads(metadata.get("info", "{}")), "class_names": json.loads(metadata.get("class_names", "[]"))}
    model.info["path"] = str(path)
    return model.eval().requires_grad_(False)


def content_hash(images: Tensor, labels: Tensor, class_names: Sequence[str], settings: TrainSettings) -> str:
    """Hex digest of what determines the weights: architecture, settings, and the training data."""
    digest = hashlib.blake2b(digest_size=16)
    recipe = {"arch": ARCH_VERSION, "widths": list(WIDTHS), "settings": asdict(settings), "classes": list(class_names)}
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    digest.update(str(tuple(images.shape)).encode())
    digest.update(images.contiguous().numpy().tobytes())
    digest.update(labels.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def training_data(datamodule) -> tuple[Tensor, Tensor, list[str]]:
    """The data module's training split: uint8 images (N, 3, H, W), labels, class names."""
    datamodule.setup("fit")
    images, labels = datamodule.train_set.tensors
    class_names = list(getattr(datamodule, "class_names", []) or [])
    if not class_names or (labels < 0).any():
        raise ConfigError(
            "this data set has no class labels, so the sprite feature network for FID cannot be trained on it; "
            "train one on a labelled set (python -m diffusion.tools.train_features data=procedural) and pass its path as "
            "fid_features.feature_weights=PATH, or choose fid_features.features=inception with local Inception weights"
        )
    return images, labels, class_names


def load_or_train(
    datamodule,
    cache_dir: str | Path | None = None,
    weights: str | Path | None = None,
    settings: TrainSettings | Mapping[str, Any] | None = None,
    force: bool = False,
    out: str | Path | None = None,
    verbose: bool = False,
) -> SpriteFeatureNet:
    """The sprite feature network for ``datamodule``.

    ``weights``: an explicit weights file (any data set, labelled or not). Otherwise the network
    trained on the data module's training split with ``settings``, loaded from
    ``<cache_dir>/<version>.safetensors`` when that exists, else trained now and written there
    (and to ``out`` when given). ``force`` retrains even when cached.
    """
    if weights:
        return load_weights(weights)
    settings = _settings(settings)
    images, labels, class_names = training_data(datamodule)
    version = f"{ARCH_VERSION}-{content_hash(images, labels, class_names, settings)[:8]}"
    cache_dir = Path(cache_dir or Path(".cache") / "features").expanduser()
    path = cache_dir / f"{version}.safetensors"
    if path.is_file() and not force:
        model = load_weights(path)
    else:
        if verbose:
            print(f"training the sprite feature network {version} on {len(images)} images ({len(class_names)} classes)")
        model = train_feature_net(images, labels, len(class_names), verbose=verbose, **asdict(settings))
        model.version = version
        model.info["data_hash"] = version.rsplit("-", 1)[-1]
        save_weights(model, path, class_names)
        model = load_weights(path)
    if out is not None and Path(out).expanduser().resolve() != path.resolve():
        save_weights(model, Path(out).expanduser(), class_names)
        model.info["path"] = str(Path(out).expanduser())
    return model.eval().requires_grad_(False)
