"""The noise-level predictor's error against the true level, on the validation images of the model's own data.

    python -m diffusion.tools.level_error CKPT [--n 2000] [--bins 8] [--seed 0] [--json level_error.json]

Each image is noised at a level of its own, drawn log-uniformly over the schedule's range [sigma_min, sigma_max]
(every level a sampler visits equally weighted; the training distribution weights some far more), and the predictor
(``experiment=level_free``; ``core.level_prediction``) is scored by the error of ln sigma_hat against ln sigma:
RMSE over all, and RMSE and mean (the bias) in ``--bins`` log-spaced bins of sigma. The baseline is the lesson's: the
RMSE of one constant guess for every image (the mean ln sigma), the figure a predictor must beat to know anything.
The predictions are unclamped: sampling's clamp to the batch median (``level_spread``) only narrows them.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from hydra.utils import instantiate

from diffusion.core.errors import ConfigError, OneLineArgumentParser
from diffusion.core.level_prediction import log_sigma_errors
from diffusion.tools.cli import integer_at_least, reports_user_errors
from diffusion.training.checkpoints import load_checkpoint, module_from_checkpoint, stored_config


def level_error_table(errors: torch.Tensor, sigma: torch.Tensor, sigma_min: float, sigma_max: float, bins: int) -> dict:
    """RMSE of ln sigma overall, the constant-guess baseline, and RMSE and bias per log-spaced bin of sigma."""
    log_sigma = sigma.log()
    edges = torch.linspace(math.log(sigma_min), math.log(sigma_max), bins + 1, dtype=torch.float64)
    index = torch.bucketize(log_sigma.double(), edges[1:-1], right=True)
    rows = []
    for b in range(bins):
        e = errors[index == b]
        rows.append({"sigma_low": math.exp(edges[b]), "sigma_high": math.exp(edges[b + 1]), "n": int(e.numel()),
                     "rmse_log_sigma": float(e.pow(2).mean().sqrt()) if e.numel() else None,
                     "bias_log_sigma": float(e.mean()) if e.numel() else None})
    return {"rmse_log_sigma": float(errors.pow(2).mean().sqrt()),
            "baseline_rmse_log_sigma": float((log_sigma - log_sigma.mean()).pow(2).mean().sqrt()), "bins": rows}


@reports_user_errors
def run(args: argparse.Namespace) -> dict:
    checkpoint = load_checkpoint(args.ckpt)
    module = module_from_checkpoint(checkpoint).eval()
    predictor = module.level_predictor
    if predictor is None:
        raise ConfigError(f"{args.ckpt} holds no noise-level predictor; train one with python train.py experiment=level_free")
    datamodule = instantiate(stored_config(checkpoint["diffusion"]).data)
    datamodule.prepare_data()
    images = datamodule.real_images("val")
    generator = torch.Generator().manual_seed(args.seed)
    pick = torch.randint(len(images), (args.n,), generator=generator)
    schedule = module.schedule
    x0 = (images[pick].float() / 127.5 - 1) * schedule.input_scale
    lo, hi = math.log(schedule.sigma_min), math.log(schedule.sigma_max)
    sigma = (lo + (hi - lo) * torch.rand(args.n, generator=generator, dtype=torch.float64)).exp().float()
    errors = torch.cat([
        log_sigma_errors(predictor, x0[i : i + args.batch_size], sigma[i : i + args.batch_size], schedule.input_scale, generator)
        for i in range(0, args.n, args.batch_size)
    ])
    table = {"ckpt": str(args.ckpt), "n": args.n, "seed": args.seed, "sigma_min": schedule.sigma_min, "sigma_max": schedule.sigma_max,
             **level_error_table(errors, sigma, schedule.sigma_min, schedule.sigma_max, args.bins)}
    print(f"ln sigma RMSE {table['rmse_log_sigma']:.4f} (constant guess {table['baseline_rmse_log_sigma']:.4f}), "
          f"{args.n} validation images, sigma log-uniform in [{schedule.sigma_min:.4g}, {schedule.sigma_max:.4g}]")
    print(f"{'sigma from':>11} {'to':>9} {'n':>6} {'RMSE':>8} {'bias':>8}")
    for row in table["bins"]:
        rmse, bias = (f"{row[k]:8.4f}" if row[k] is not None else f"{'-':>8}" for k in ("rmse_log_sigma", "bias_log_sigma"))
        print(f"{row['sigma_low']:11.4g} {row['sigma_high']:9.4g} {row['n']:6d} {rmse} {bias}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")
    return table


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", help="a checkpoint or .safetensors export of a run of experiment=level_free")
    parser.add_argument("--n", type=integer_at_least(2), default=2000, help="noisy validation images")
    parser.add_argument("--bins", type=integer_at_least(1), default=8, help="log-spaced bins of sigma")
    parser.add_argument("--seed", type=integer_at_least(0), default=0)
    parser.add_argument("--batch-size", type=integer_at_least(1), default=500)
    parser.add_argument("--json", help="also write the table here")
    return parser


def main(argv: list[str] | None = None) -> None:
    run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
