"""Sample from a trained model: `python sample.py ckpt=PATH n=64 seed=0 out=DIR`.

Options: sampler=NAME (a file of conf/sampler/: `python sample.py --help` lists them) steps=N label=<name|index|uncond|data>
guidance=W trajectory=true. Writes DIR/samples.npz (uint8 images (n, 16, 16, 3) and labels, the
course's layout), DIR/grid.png and, with trajectory=true, DIR/trajectory.gif.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from diffusion.tools.cli import check_settings, reports_user_errors, run_hydra_main


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
@reports_user_errors
def main(cfg: DictConfig) -> None:
    check_settings(cfg, "sample")  # every key's type and range, before any work
    from diffusion.tools.sample import sample_to_folder

    sample_to_folder(cfg)


if __name__ == "__main__":
    run_hydra_main(main)
