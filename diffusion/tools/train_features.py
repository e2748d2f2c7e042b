"""`python -m diffusion.tools.train_features data=...`: train (or find cached) sprite feature weights and say where they are."""

from __future__ import annotations

import sys
import time

from diffusion.evaluation.features import load_or_train
from diffusion.training.builders import CONF_DIR
from diffusion.training.renamed_groups import renamed_overrides


def main() -> None:
    import hydra
    from omegaconf import DictConfig

    from diffusion.tools.cli import check_settings, reports_user_errors, run_hydra_main

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train_features")
    @reports_user_errors
    def run(cfg: DictConfig) -> None:
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        check_settings(cfg, "train_features")
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
        start = time.perf_counter()
        settings = OmegaConf.to_container(cfg.fid_features.train, resolve=True)
        model = load_or_train(datamodule, cfg.fid_features.cache_dir, settings=settings, force=cfg.force, out=cfg.out, verbose=True)
        info = model.info
        seconds = time.perf_counter() - start
        print(f"weights:  {info['path']}")
        print(f"version:  {model.version}")
        print(
            f"accuracy: {info['accuracy']:.4f} on {info['n_holdout']} held-out images "
            f"(trained on {info['n_train']} in {info['seconds']:.1f} s; {seconds:.1f} s in all this time)"
        )
        print(f"use it with: fid_features.feature_weights={info['path']}")

    sys.argv[1:] = renamed_overrides(sys.argv[1:])  # metrics= -> fid_features=, for one release
    run_hydra_main(run)


if __name__ == "__main__":
    main()
