"""Train a diffusion model: `python train.py [group=option ...] [key=value ...]`.

Examples:
    python train.py                                   # DDPM on the embedded procedural sprites
    python train.py experiment=course data=sprites    # the DeepLearning.AI course's setup
    python train.py schedule=edm objective=edm sampler=heun trainer.max_steps=5000
    python train.py hydra.run.dir=runs/mine ckpt_path=last   # resume that run
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from diffusion.tools.cli import check_settings, reports_user_errors, run_hydra_main
from diffusion.training.renamed_groups import renamed_overrides


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@reports_user_errors
def main(cfg: DictConfig) -> float:
    check_settings(cfg, "train")  # every key's type and range, before any work
    from diffusion.tools.train import train  # imported here so `--help` stays fast

    return train(cfg)


if __name__ == "__main__":
    sys.argv[1:] = renamed_overrides(sys.argv[1:])  # model= -> network=, for one release
    run_hydra_main(main)
