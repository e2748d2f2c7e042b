"""FID and KID of generated sprites, through torchmetrics (in training) and torch-fidelity (offline).

Feature networks (``fid_features.features``):

* ``sprite`` (default): the framework's own sprite classifier (``diffusion.evaluation.features``); figures carry
  its version, ``sprite-cnn-v1-<hash8>``.
* ``inception``: torch-fidelity's Inception-v3 (pool3, 2048 features), the network of published FIDs.
  Its weights are never downloaded: they must already be on this machine, either given as
  ``fid_features.inception_weights=PATH`` or in torch hub's cache, where torch-fidelity and torchmetrics
  would have put them (``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``).

Images: generated samples are [-1, 1] float tensors; they are turned into uint8 exactly as
``images.to_uint8`` does before writing PNGs and .npz files, so a figure computed during training
equals one computed later from the saved samples. Reference images are the data module's uint8.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffusion.core.errors import ConfigError
from diffusion.data.images import quantize

FEATURE_CHOICES = ("sprite", "inception")
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
INCEPTION_VERSION = "inception-v3-compat-2048"


def as_uint8_nchw(x: Tensor) -> Tensor:
    """[-1, 1] images (N, 3, H, W) -> uint8 (N, 3, H, W) on the same device; uint8 input passes through.

    The rounding is ``images.quantize``, as for saved samples, so in-training figures match theirs."""
    return x if x.dtype == torch.uint8 else quantize(x)


def check_feature_choice(features: str) -> str:
    if features not in FEATURE_CHOICES:
        raise ConfigError(f"unknown fid_features.features={features!r}; choose one of {', '.join(FEATURE_CHOICES)}")
    return features


def check_weights_file(path: str | Path) -> None:
    """Refuse a weights file that holds anything but tensors and plain data (a pickle can run code) or
    that torch cannot read, before a library that loads it without ``weights_only=True`` sees it."""
    from diffusion.training.checkpoints import load_plain

    load_plain(Path(path), "weights file")


def inception_weights_path(path: str | Path | None = None) -> Path:
    """The Inception weights file on this machine, or a ConfigError saying which file is missing.

    torch-fidelity 0.4.0 (and torchmetrics through it) load ``URL_INCEPTION_V3`` with
    ``torch.hub.load_state_dict_from_url``, which keeps it as ``<torch.hub.get_dir()>/checkpoints/<file>``
    and downloads it when absent; we look for that file (or the given one) and never download."""
    if path:
        candidate = Path(path).expanduser()
        if not candidate.is_file():
            raise ConfigError(f"fid_features.inception_weights={path}: no such file; download {INCEPTION_URL} on a connected machine and pass its path")
        check_weights_file(candidate)  # torch-fidelity reads it with torch.load(weights_only=False)
        return candidate
    candidate = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not candidate.is_file():
        raise ConfigError(
            f"fid_features.features=inception needs {INCEPTION_FILE}, not found in {candidate.parent} and nothing is downloaded here; "
            f"fetch {INCEPTION_URL} on a connected machine and pass fid_features.inception_weights=PATH (or use fid_features.features=sprite)"
        )
    check_weights_file(candidate)
    return candidate


class InceptionFeatures(nn.Module):
    """torchmetrics' Inception-v3 (torch-fidelity's port) from a local file: uint8 (N, 3, H, W) of any
    size -> 2048 pool3 features. Stays in eval mode."""

    num_features = 2048

    def __init__(self, weights: str | Path):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights))
        self.version = INCEPTION_VERSION
        self.info = {"path": str(weights)}

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def build_feature_net(
    features: str = "sprite",
    datamodule=None,
    feature_weights: str | Path | None = None,
    inception_weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    train_settings: dict[str, Any] | None = None,
    verbose: bool = False,
) -> nn.Module:
    """The feature network ``fid_features.features`` names, frozen, with ``version`` and ``info``."""
    check_feature_choice(features)
    if features == "inception":
        net: nn.Module = InceptionFeatures(inception_weights_path(inception_weights))
    else:
        from diffusion.evaluation.features import load_or_train

        if datamodule is None and not feature_weights:
            raise ConfigError("the sprite feature network needs a data set to train on, or fid_features.feature_weights=PATH")
        net = load_or_train(datamodule, cache_dir, weights=feature_weights, settings=train_settings, verbose=verbose)
    return net.eval().requires_grad_(False)


def kid_subset_size_used(requested: int, n_real: int, n_fake: int) -> int:
    """The size of KID's subsets: ``requested`` (``kid_subset_size``, 1000 by default) clipped to half of the
    smaller set, and never below 2, the smallest size the unbiased estimator takes.

    KID (Binkowski et al. 2018, "Demystifying MMD GANs", sec. 4) is the unbiased estimate of the squared MMD
    under the polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over subsets that each draw ``size`` real
    AND ``size`` fake features without replacement (as torch-fidelity and torchmetrics draw them); its std is
    the spread of that estimate over the subsets. A subset as large as one set holds all of that set every
    time, so the std would measure the other set's resampling alone (the 1,000 FID samples against a larger
    validation split did exactly that). Half of the smaller set leaves every subset a different half of each
    set. The estimator is unbiased at any size: the clip changes the mean's noise, not its expectation."""
    return max(2, min(int(requested), n_real // 2, n_fake // 2))


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class ImageQuality(nn.Module):
    """FID and KID through torchmetrics with a custom feature network, real statistics kept.

    ``update_real`` once (the reference split); then per evaluation ``update_fake``, ``compute``,
    ``reset_fake``. In a multi-process run every process updates with its share and every process
    calls ``compute``: torchmetrics gathers the states across processes (FID's sums are added, KID's
    features concatenated in rank order), so the figures equal those of one process updating with
    all the images (each rank's share in rank order). KID's random subsets are drawn from a fixed
    seed so every process (and every epoch) uses the same ones.

    Args:
        feature: the feature network (uint8 (N, 3, H, W) -> (N, d)), with ``num_features``.
        kid_subsets, kid_subset_size: KID's subsets; the size is clipped to half the smaller set (``kid_subset_size``).
        seed: seed of the KID subsets.
        local: figures of this process's images alone, with no collective call (one process measuring while the
            others wait, as the FID callback's level search on rank 0).
    """

    def __init__(self, feature: nn.Module, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0, local: bool = False):
        super().__init__()
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        if not (isinstance(kid_subsets, int) and kid_subsets >= 1):
            raise ConfigError(f"kid_subsets={kid_subsets} must be an integer >= 1")
        if not (isinstance(kid_subset_size, int) and kid_subset_size >= 2):
            raise ConfigError(f"kid_subset_size={kid_subset_size} must be an integer >= 2")
        feature = feature.eval().requires_grad_(False)
        self.version = getattr(feature, "version", None) or type(feature).__name__
        self.kid_subset_size, self.seed, self.local = kid_subset_size, seed, local
        # normalize=False: the feature networks take uint8 images, the reference set's own type.
        self.fid = FrechetInceptionDistance(feature=feature, reset_real_features=False, normalize=False, sync_on_compute=not local)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
            self.kid = KernelInceptionDistance(
                feature=feature, subsets=kid_subsets, subset_size=kid_subset_size, reset_real_features=False, normalize=False,
                sync_on_compute=not local,
            )

    @property
    def feature(self) -> nn.Module:
        return self.fid.inception

    @property
    def has_real(self) -> bool:
        return int(self.fid.real_features_num_samples) > 0

    def train(self, mode: bool = True) -> ImageQuality:
        return super().train(False)  # the feature network never leaves eval mode

    @property
    def device(self) -> torch.device:
        return self.fid.real_features_sum.device

    @torch.no_grad()
    def update_real(self, images: Tensor, batch_size: int = 1000) -> None:
        """uint8 (N, 3, H, W) reference images (this process's share)."""
        self._update(images, real=True, batch_size=batch_size)

    @torch.no_grad()
    def update_fake(self, images: Tensor, batch_size: int = 1000) -> None:
        """Generated images: [-1, 1] floats or uint8, (N, 3, H, W) (this process's share)."""
        self._update(images, real=False, batch_size=batch_size)

    def _update(self, images: Tensor, real: bool, batch_size: int) -> None:
        for start in range(0, len(images), batch_size):
            chunk = as_uint8_nchw(images[start : start + batch_size]).to(self.device)
            self.fid.update(chunk, real=real)
            self.kid.update(chunk, real=real)

    def _counts(self) -> tuple[int, int]:
        counts = torch.stack([self.fid.real_features_num_samples, self.fid.fake_features_num_samples]).clone()
        if _distributed() and not self.local:
            torch.distributed.all_reduce(counts)
        return int(counts[0]), int(counts[1])

    @torch.no_grad()
    def compute(self) -> dict[str, float]:
        """{"fid", "kid_mean", "kid_std", "n_real", "n_fake"}, over all processes' images."""
        n_real, n_fake = self._counts()
        if n_real < 2 or n_fake < 2:
            raise ConfigError(f"FID needs at least 2 reference and 2 generated images, got {n_real} and {n_fake}")
        # One tensor per list state: torchmetrics then gathers one tensor per process, in rank order,
        # and processes that made different numbers of update calls cannot deadlock.
        for name in ("real_features", "fake_features"):
            state = getattr(self.kid, name)
            if len(state) > 1:
                setattr(self.kid, name, [torch.cat(state)])
        self.kid.subset_size = kid_subset_size_used(self.kid_subset_size, n_real, n_fake)
        fid = float(self.fid.compute())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            kid_mean, kid_std = (float(v) for v in self.kid.compute())
        return {"fid": fid, "kid_mean": kid_mean, "kid_std": kid_std, "n_real": n_real, "n_fake": n_fake}

    def reset_fake(self) -> None:
        self.fid.reset()  # reset_real_features=False: the real statistics stay
        self.kid.reset()


# ---------------------------------------------------------------------------------------------
# torch-fidelity: offline evaluation of saved samples (diffusion.tools.evaluate).

FIDELITY_NAME = "sprite-cnn"


def _fidelity_extractor_class():
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class SpriteFeatureExtractor(FeatureExtractorBase):
        """torch-fidelity's view of ``SpriteFeatureNet``: uint8 (N, 3, H, W) -> ("features", "logits").

        torch-fidelity builds extractors from its keyword arguments; the weights come from
        ``feature_extractor_weights_path`` (a ``diffusion.evaluation.features`` safetensors file)."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            from diffusion.evaluation.features import load_weights

            if not feature_extractor_weights_path:
                raise ConfigError("the sprite feature extractor needs feature_extractor_weights_path")
            self.net = load_weights(feature_extractor_weights_path)

        @staticmethod
        def get_provided_features_list():
            return ("features", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 16, 16, dtype=torch.uint8)

        def forward(self, x):
            features = self.net(x)
            out = {"features": features, "logits": self.net.classifier(features) if "logits" in self.features_list else None}
            return tuple(out[name] for name in self.features_list)

    return SpriteFeatureExtractor


def register_sprite_extractor() -> str:
    """Register the sprite feature network with torch-fidelity (once) and return its name."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if FIDELITY_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(FIDELITY_NAME, _fidelity_extractor_class())
    return FIDELITY_NAME


class _ImageSet(torch.utils.data.Dataset):
    """uint8 (N, 3, H, W) images as torch-fidelity's input (items are single uint8 tensors)."""

    def __init__(self, images: Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]


def fidelity_metrics(
    samples: Tensor,
    reference: Tensor,
    features: str = "sprite",
    feature_weights: str | Path | None = None,
    inception_weights: str | Path | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    prc: bool = True,
    isc: bool = False,
    prc_neighborhood: int = 3,
    batch_size: int = 256,
    cuda: bool = False,
    seed: int = 0,
    verbose: bool = False,
) -> dict[str, float]:
    """FID, KID, precision and recall (and optionally the inception score over the classifier's
    classes) of uint8 ``samples`` against uint8 ``reference`` images, both (N, 3, H, W), by
    ``torch_fidelity.calculate_metrics``. Precision: share of samples inside the reference manifold;
    recall: share of reference images inside the samples' manifold (k-NN balls, k = prc_neighborhood)."""
    import torch_fidelity

    check_feature_choice(features)
    for name, images in (("samples", samples), ("reference", reference)):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"{name} must be uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    n1, n2 = len(samples), len(reference)
    if min(n1, n2) < 2:
        raise ConfigError(f"FID needs at least 2 samples and 2 reference images, got {n1} and {n2}")
    kwargs: dict[str, Any] = dict(
        input1=_ImageSet(samples.cpu()),
        input2=_ImageSet(reference.cpu()),
        fid=True,
        kid=True,
        prc=prc and min(n1, n2) > prc_neighborhood,
        isc=isc,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size_used(kid_subset_size, n1, n2),
        prc_neighborhood=prc_neighborhood,
        batch_size=batch_size,
        cuda=cuda,
        cache=False,  # the extractor's name does not identify its weights: never reuse cached features
        save_cpu_ram=True,  # no loader worker processes
        rng_seed=seed,
        verbose=verbose,
    )
    if features == "inception":
        kwargs.update(
            feature_extractor="inception-v3-compat",
            feature_extractor_weights_path=str(inception_weights_path(inception_weights)),
            feature_layer_isc="logits_unbiased",
        )
    else:
        if not feature_weights:
            raise ConfigError("fidelity_metrics with features=sprite needs the feature network's weights file")
        kwargs.update(feature_extractor=register_sprite_extractor(), feature_extractor_weights_path=str(feature_weights))
    out = torch_fidelity.calculate_metrics(**kwargs)
    keys = {
        "frechet_inception_distance": "fid",
        "kernel_inception_distance_mean": "kid_mean",
        "kernel_inception_distance_std": "kid_std",
        "precision": "precision",
        "recall": "recall",
        "f_score": "f_score",
        "inception_score_mean": "isc_mean",
        "inception_score_std": "isc_std",
    }
    return {short: float(out[key]) for key, short in keys.items() if key in out}


def shard(n: int, rank: int, world_size: int) -> slice:
    """The contiguous part of n items that process ``rank`` of ``world_size`` handles (sizes differ by
    at most one), so gathering the parts in rank order restores the original order."""
    per, extra = divmod(n, world_size)
    start = rank * per + min(rank, extra)
    return slice(start, start + per + (rank < extra))


def describe(result: dict[str, float], version: str, keys: Sequence[str] = ("fid", "kid_mean", "kid_std")) -> str:
    figures = ", ".join(f"{k}={result[k]:.4g}" for k in keys if k in result)
    return f"{figures} (features {version})"
