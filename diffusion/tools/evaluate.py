"""Score saved samples: `python -m diffusion.tools.evaluate samples=DIR/samples.npz [out=DIR/eval.json] [data=...]`.

Computes FID, KID, precision and recall (and, with the sprite network, an inception score over the
sprite classes) of the samples against a split of the data set, with torch-fidelity and the feature
network ``fid_features.features`` names (default: the sprite classifier of ``diffusion.evaluation.features``,
registered with torch-fidelity as a feature extractor). Writes JSON with the figures, the feature
network's version (figures from different versions are not comparable) and the image counts.

samples: an .npz with ``images`` uint8 (N, H, W, 3), as sample.py and train.py write; a folder
holding ``samples.npz``; or a folder of PNG images, one sample per file.

Examples:
    python -m diffusion.tools.evaluate samples=samples/samples.npz
    python -m diffusion.tools.evaluate samples=runs/x/samples/final.npz data=sprites out=eval.json
    python -m diffusion.tools.evaluate samples=pngs/ fid_features.features=inception fid_features.inception_weights=PATH
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusion.core.errors import ConfigError
from diffusion.training.builders import CONF_DIR
from diffusion.training.renamed_groups import renamed_overrides

SPLITS = ("val", "train")


def load_samples(path: str | Path, image_size: int | None = None) -> tuple[torch.Tensor, Path]:
    """uint8 (N, 3, H, W) samples from an .npz, a folder holding samples.npz, or a folder of PNGs."""
    from diffusion.data.sources import check_images, load_image_folder

    path = Path(path).expanduser()
    if path.is_dir() and (path / "samples.npz").is_file():
        path = path / "samples.npz"
    if path.is_dir():
        images, _, _ = load_image_folder(path, image_size or 16, labels_from_subfolders=False)
    elif path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                if "images" not in data:
                    raise ConfigError(f"{path} holds no `images` array (found {', '.join(data.files) or 'nothing'}); write samples with sample.py")
                images = data["images"]
        except ConfigError:
            raise
        except (ValueError, OSError, EOFError) as err:
            raise ConfigError(f"cannot read samples file {path}: {err}; pass an .npz from sample.py or a folder of PNGs") from None
        if images.ndim == 4 and images.shape[1] == 3 and images.shape[-1] != 3:
            raise ConfigError(f"{path}: images must be laid out (N, H, W, 3) as sample.py writes them, got (N, 3, H, W) {images.shape}")
        images = check_images(images, str(path))
    else:
        raise ConfigError(f"samples={path} not found; pass DIR/samples.npz from sample.py or a folder of PNG images")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous(), path


def evaluate(cfg) -> dict[str, Any]:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from diffusion.evaluation.metrics import (
        INCEPTION_VERSION,
        check_feature_choice,
        describe,
        fidelity_metrics,
        inception_weights_path,
        kid_subset_size_used,
    )
    from diffusion.tools.output_records import log_evaluation, save_config

    start = time.perf_counter()
    sprite = check_feature_choice(cfg.fid_features.features) == "sprite"
    if not sprite:
        inception_weights_path(cfg.fid_features.inception_weights)  # fail before any work
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device=cuda asked for, but no CUDA GPU is available; use device=cpu")
    if cfg.reference not in SPLITS:
        raise ConfigError(f"reference={cfg.reference} must be one of {', '.join(SPLITS)}")
    if not Path(cfg.samples).expanduser().exists():
        raise ConfigError(f"samples={cfg.samples} not found; pass DIR/samples.npz from sample.py or a folder of PNG images")
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    reference = datamodule.real_images(cfg.reference)
    if len(reference) < 2:
        raise ConfigError(f"the {cfg.reference} split holds {len(reference)} images; raise data.val_fraction or use reference=train")
    samples, samples_path = load_samples(cfg.samples, reference.shape[-1])
    if samples.shape[-2:] != reference.shape[-2:]:
        print(f"note: samples are {samples.shape[-1]}x{samples.shape[-2]}, reference images {reference.shape[-1]}x{reference.shape[-2]}")

    weights, version = None, INCEPTION_VERSION
    if sprite:  # the sprite network: trained on this data set's training split (cached) or the given file
        from diffusion.evaluation.features import load_or_train

        settings = OmegaConf.to_container(cfg.fid_features.train, resolve=True)
        net = load_or_train(datamodule, cfg.fid_features.cache_dir, weights=cfg.fid_features.feature_weights, settings=settings, verbose=True)
        weights, version = net.info["path"], net.version
    figures = fidelity_metrics(
        samples,
        reference,
        features=cfg.fid_features.features,
        feature_weights=weights,
        inception_weights=cfg.fid_features.inception_weights,
        kid_subsets=cfg.kid_subsets,
        kid_subset_size=cfg.kid_subset_size,
        prc=True,
        isc=cfg.isc,
        prc_neighborhood=cfg.prc_neighborhood,
        batch_size=cfg.batch_size,
        cuda=device.startswith("cuda"),
        seed=cfg.seed,
    )
    if cfg.out:
        out = Path(cfg.out)
    else:  # next to the samples
        out = samples_path.with_name("eval.json") if samples_path.is_file() else samples_path / "eval.json"
    report = {
        **figures,
        "features": version,
        "n_samples": len(samples),
        "n_reference": len(reference),
        "samples": str(samples_path),
        "reference": {"data": cfg.data._target_.rsplit(".", 1)[-1], "split": cfg.reference},
        "kid_subset_size": kid_subset_size_used(cfg.kid_subset_size, len(samples), len(reference)),
        "seconds": round(time.perf_counter() - start, 2),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    written = [out, save_config(cfg, out.with_name(f"{out.stem}_config.yaml"), samples_path=str(samples_path.resolve()))]
    keys = ("fid", "kid_mean", "kid_std", "precision", "recall", "isc_mean")
    print(f"{len(samples)} samples vs {len(reference)} {cfg.reference} images: {describe(figures, version, keys)}")
    print("wrote " + ", ".join(str(p) for p in written))
    folder = samples_path if samples_path.is_dir() else samples_path.parent
    pictures = [folder / "grid.png", folder / "final.png", folder / "trajectory.gif"]
    logged = log_evaluation(cfg, report, samples_path, pictures)
    if logged:
        print(f"logged to W&B: {logged}")
    return report


def main() -> None:
    import hydra
    from omegaconf import DictConfig

    from diffusion.tools.cli import check_settings, reports_user_errors, run_hydra_main

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
    @reports_user_errors
    def run(cfg: DictConfig) -> None:
        check_settings(cfg, "evaluate")
        evaluate(cfg)

    sys.argv[1:] = renamed_overrides(sys.argv[1:])  # metrics= -> fid_features=, for one release
    run_hydra_main(run)


if __name__ == "__main__":
    main()
