"""FID against NFE for every sampler on one trained model.

    python -m diffusion.tools.sampler_fid CKPT [--samplers ddpm heun ...] [--nfe 5 10 20 50] [--n 1000]
                                         [--full-ddpm] [--collapse] [--floor] [--json out.json]

Every sampler starts from the same noise (one seed) and the same class labels, so the figures
differ only by the sampler; the labels follow the reference's (validation split's) class mix unless
``--labels uniform``. The reference set, the feature network and its version are those the
model was trained with (the checkpoint's own config), as in the FID logged during training.
``--floor`` adds the figure of n real training images against the same reference: the best a
model can score with n samples. ``--collapse`` adds DDPM over all T steps without the added noise
(``add_noise=false``, z = 0): the course's collapse to blurred "blobs" near the data mean, measured.
``--level scheduled predicted`` measures each sampler with the denoiser at the sampler's level and at each image's
predicted level (a model of ``experiment=level_free``; ``core.level_prediction``), one row each.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from diffusion.core.errors import ConfigError, OneLineArgumentParser
from diffusion.core.labels import LABEL_MIXES, sample_labels
from diffusion.core.level_prediction import LEVELS
from diffusion.core.samplers.common import model_evaluations, steps_for_nfe
from diffusion.core.sampling import Sampler
from diffusion.evaluation.metrics import ImageQuality, build_feature_net
from diffusion.evaluation.searched_levels import levels_path, search_command, with_searched_levels
from diffusion.tools.cli import integer_at_least, reports_user_errors
from diffusion.training.builders import sampler_from_conf, sampler_names
from diffusion.training.checkpoints import load_checkpoint, module_from_checkpoint, stored_config
from diffusion.training.precision import pick_device, sampling_in_bf16


def sampler_for(name: str, steps: int, options: dict | None = None, spacing: str = "auto", ckpt: str | None = None,
                analytic_first_step: bool = False) -> Sampler:
    """``sampler=NAME``'s configuration with ``steps`` and ``options``; ``spacing="auto"`` keeps the config's own
    (DDPM and DDIM walk the schedule's levels, the Karras family the rho = 7 levels); ``optimized`` reads the levels
    searched for ``ckpt`` (``tools.search_steps``); ``analytic_first_step``: ``Sampler``'s."""
    sampler = sampler_from_conf(name, steps, **(options or {}))
    if analytic_first_step:
        sampler = sampler.replace(analytic_first_step=True)
    if spacing != "auto":
        sampler = sampler.replace(spacing=spacing)
    return with_searched_levels(sampler, ckpt) if ckpt is not None else sampler


def parse_options(items: list[str]) -> dict[str, float]:
    """``KEY=VALUE`` pairs of sampler keyword options, e.g. ``s_churn=40``."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            options[key] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key:
            raise ConfigError(f"--options takes KEY=NUMBER pairs such as s_churn=40, got {item!r}")
    return options


def options_for(name: str, options: dict[str, float]) -> dict[str, float]:
    """The options that sampler ``name`` takes (``s_churn`` goes to Euler and Heun only)."""
    accepted = inspect.signature(sampler_from_conf(name).function).parameters
    return {key: value for key, value in options.items() if key in accepted}


def steps_at_nfe(name: str, nfe: int, options: dict, analytic_first_step: bool = False) -> int | None:
    """Noise levels giving at most ``nfe`` evaluations with the config's options and ``options`` (Restart's cost
    depends on its restart_times and restart_steps), or None where even its least run costs more; with the
    ``analytic_first_step`` one evaluation is free and two levels are the least."""
    sampler = sampler_from_conf(name, **options)
    free = int(analytic_first_step)
    steps = steps_for_nfe(sampler.function, nfe + free, sampler.options)
    least = max(getattr(sampler.function, "least_steps", 1), 1 + free)  # Restart needs a positive level to restart from
    return steps if steps >= least and model_evaluations(sampler.function, steps, sampler.options) - free <= nfe else None


def lowest_nfe(name: str, options: dict) -> int:
    """The evaluations of the sampler's shortest run it accepts (``least_steps``: Heun, Restart, DPM++ 3M SDE refuse
    fewer steps, issue 18)."""
    sampler = sampler_from_conf(name, **options)
    return model_evaluations(sampler.function, getattr(sampler.function, "least_steps", 1), sampler.options)


def row_label(name: str, options: dict, analytic_first_step: bool = False) -> str:
    first = " +AFS" if analytic_first_step else ""
    if options.get("add_noise") is False:
        return f"{name} (z=0){first}"
    return name + "".join(f" {key}={value:g}" for key, value in options.items()) + first


def sample_images(
    module, sampler: Sampler, n: int, seed: int, batch_size: int, bf16: bool = False, labels: torch.Tensor | None = None,
    level: str | None = None, level_spread: float = 1.0,
) -> torch.Tensor:
    """n images from one seed; ``labels`` (n of them, or None for unconditional models) as ``sample_labels`` draws;
    ``level``, ``level_spread``: ``DiffusionModule.sampling_denoiser``'s."""
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    for start in range(0, n, batch_size):
        chunk_labels = labels[start : start + batch_size] if labels is not None else None
        count = min(batch_size, n - start)
        chunks.append(module.sample(count, labels=chunk_labels, sampler=sampler, generator=generator, bf16=bf16,
                                    level=level, level_spread=level_spread).cpu())
    return torch.cat(chunks)


def fid_labels(module, datamodule, n: int, mix: str = "data") -> torch.Tensor | None:
    """Labels for n FID samples: by default in the reference's (the validation split's) class mix, as the FID
    logged during training draws them; ``mix="uniform"`` cycles over the classes."""
    counts = datamodule.class_counts("val") if mix == "data" and module.num_classes else None
    return sample_labels(n, module.num_classes, counts, mix)


def checkpoint_datamodule(checkpoint: dict):
    """The data module the checkpoint was trained with (its stored config), its data prepared."""
    datamodule = instantiate(stored_config(checkpoint["diffusion"]).data)
    datamodule.prepare_data()
    return datamodule


def reference_quality(checkpoint: dict, kid_subsets: int = 100):
    """FID/KID as the checkpoint's training measured them: its data's validation split as the reference set, its
    feature network. Returns the metric, its reference already added, and the data module."""
    config = stored_config(checkpoint["diffusion"])  # today's names: fid_features was metrics at 44e540d
    datamodule = checkpoint_datamodule(checkpoint)
    fid_features = config.fid_features
    feature = build_feature_net(
        fid_features.features, datamodule, fid_features.feature_weights, fid_features.inception_weights, fid_features.cache_dir,
        OmegaConf.to_container(fid_features.train, resolve=True),
    )
    quality = ImageQuality(feature, kid_subsets=kid_subsets)
    quality.update_real(datamodule.real_images("val"))
    return quality, datamodule


def fill_data_mean(module, datamodule) -> None:
    """A checkpoint from before the training images' mean travelled in it takes it from its own data module (the
    analytic first step's closed form)."""
    if module.data_mean is None and hasattr(datamodule, "mean_image"):
        module.data_mean = datamodule.mean_image("train")


@reports_user_errors
def run(args: argparse.Namespace) -> list[dict]:
    options = parse_options(args.options)
    device = pick_device(args.device)
    bf16 = sampling_in_bf16(args.precision, device)
    checkpoint = load_checkpoint(args.ckpt)
    module = module_from_checkpoint(checkpoint).eval().to(device)
    levels = args.level or [module.default_level()]
    for level in levels:
        module.sampling_denoiser(level, args.level_spread)  # predicted without a predictor: one line, before any work
    quality, datamodule = reference_quality(checkpoint, args.kid_subsets)
    quality.to(device)
    fill_data_mean(module, datamodule)
    labels = fid_labels(module, datamodule, args.n, args.labels)

    full_steps = module.schedule.full_steps
    plan = []
    for nfe in args.nfe:
        for name in args.samplers:
            for analytic in (first == "analytic" for first in args.first_step):
                if analytic and not sampler_from_conf(name).takes_analytic_first_step:
                    print(f"{name}: no analytic first step for a consistency model, skipped", flush=True)
                    continue
                steps = steps_at_nfe(name, nfe, options_for(name, options), analytic)
                if steps is None:
                    print(f"{row_label(name, {}, analytic)}: skipped at NFE {nfe}, below its lowest sound NFE "
                          f"({lowest_nfe(name, options_for(name, options)) - analytic})", flush=True)
                    continue
                for spacing in args.spacing:
                    sampler = sampler_for(name, steps, options_for(name, options), analytic_first_step=analytic)
                    if spacing == "optimized" and sampler.steps < 2:
                        print(f"{row_label(name, {}, analytic)}: one level at NFE {sampler.nfe} (sigma_max), nothing to "
                              "search: its optimized row is the Karras one, skipped", flush=True)
                        continue
                    if spacing == "optimized" and not levels_path(args.ckpt, sampler).exists():
                        print(f"{row_label(name, {}, analytic)}: no levels searched at NFE {sampler.nfe} "
                              f"({search_command(args.ckpt, sampler)}), skipped", flush=True)
                        continue
                    if spacing == "optimized":  # levels searched for another version of the file: stop before sampling
                        with_searched_levels(sampler.replace(spacing="optimized"), args.ckpt)
                    plan += [(name, steps, options_for(name, options), spacing, level, analytic) for level in levels]
    if args.full_ddpm:
        plan += [("ddpm", full_steps, {}, "schedule", level, False) for level in levels]
    if args.collapse:
        plan += [("ddpm", full_steps, {"add_noise": False}, "schedule", level, False) for level in levels]
    rows = []
    if args.floor:
        train = datamodule.real_images("train")
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[: args.n]
        quality.update_fake(train[pick])
        result = quality.compute()
        quality.reset_fake()
        rows.append({"sampler": "training images (floor)", "steps": 0, "nfe": 0, "fid": result["fid"], "kid": result["kid_mean"],
                     "sampling_seconds": 0.0, "n": len(pick), "features": quality.version})
        # a small set has fewer training images than n samples: the count is what was measured
        print(f"floor: {len(pick)} training images: FID {result['fid']:.3f}, KID {result['kid_mean']:.5f} ({quality.version})")
    width = max([len("sampler"), *(len(row_label(name, options, analytic)) for name, _, options, _, _, analytic in plan)])
    print(f"{'sampler':{width}} {'spacing':>9} {'level':>9} {'steps':>5} {'NFE':>5} {'FID':>9} {'KID':>9} {'seconds':>8}   ({quality.version}, {args.n} samples)")
    for name, steps, options, spacing, level, analytic in plan:
        sampler = sampler_for(name, steps, options, spacing, ckpt=args.ckpt, analytic_first_step=analytic)
        label = row_label(name, options, analytic)
        start = time.perf_counter()
        images = sample_images(module, sampler, args.n, args.seed, args.batch_size, bf16, labels, level, args.level_spread)
        seconds = time.perf_counter() - start
        quality.update_fake(images)
        result = quality.compute()
        quality.reset_fake()
        row = {"sampler": label, "steps": steps, "nfe": sampler.nfe, "spacing": sampler.spacing, "level": level,
               "first_step": "analytic" if analytic else "network", "fid": result["fid"], "kid": result["kid_mean"],
               "sampling_seconds": round(seconds, 2), "n": args.n, "features": quality.version,
               "precision": "bf16" if bf16 else "32", "labels": args.labels}
        rows.append(row)
        print(f"{label:{width}} {sampler.spacing:>9} {level:>9} {steps:5d} {sampler.nfe:5d} {row['fid']:9.3f} {row['kid']:9.5f} {seconds:8.1f}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"ckpt": str(args.ckpt), "rows": rows}, indent=2) + "\n")
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", help="a checkpoint or .safetensors export from train.py")
    parser.add_argument("--samplers", nargs="*", default=sampler_names(), choices=sampler_names())
    parser.add_argument("--nfe", nargs="*", type=integer_at_least(1), default=[5, 10, 20, 50], help="model evaluations per sample")
    parser.add_argument("--full-ddpm", action="store_true", help="also DDPM over all of the schedule's T steps")
    parser.add_argument("--collapse", action="store_true", help="also DDPM over all T steps with add_noise=false")
    parser.add_argument("--floor", action="store_true", help="also FID of n training images (the floor)")
    parser.add_argument("--options", nargs="*", default=[], metavar="KEY=VALUE",
                        help="sampler options, given to the samplers that take them, e.g. s_churn=40 s_tmax=50")
    parser.add_argument("--spacing", nargs="+", default=["auto"], choices=["auto", "karras", "schedule", "optimized"],
                        help="noise levels of the fast samplers, one row each: auto: DDPM/DDIM the schedule's, the others "
                             "Karras rho=7; optimized: the levels searched for this checkpoint (tools.search_steps)")
    parser.add_argument("--first-step", nargs="+", default=["network"], choices=["network", "analytic"],
                        help="the first evaluation by the network, or in closed form (AMED's analytical first step: one "
                             "evaluation saved, a level more at the same NFE), one row each")
    parser.add_argument("--level", nargs="+", choices=LEVELS,
                        help="the level the denoiser sees, one row each: the sampler's (scheduled) or each image's predicted "
                             "one (a model of experiment=level_free); default: the model's own")
    parser.add_argument("--level-spread", type=float, default=1.0,
                        help="--level predicted: each image's logit(alpha_bar) clamped to the batch median +- this")
    parser.add_argument("--precision", default="32", choices=["32", "bf16", "auto"],
                        help="the network in float32 (the tables in BENCHMARKS.md) or under bf16 autocast")
    parser.add_argument("--n", type=integer_at_least(2), default=1000, help="samples per figure")
    parser.add_argument("--seed", type=integer_at_least(0), default=0)
    parser.add_argument("--device", default="auto",
                        help="where the model samples and the features are computed: auto (the GPU where there is one, "
                             "else the CPU: the tables in BENCHMARKS.md), cpu, cuda or cuda:N")
    parser.add_argument("--labels", default="data", choices=LABEL_MIXES,
                        help="the samples' class labels: the validation split's class mix (as in training's FID) or uniform")
    parser.add_argument("--batch-size", type=integer_at_least(1), default=500)
    parser.add_argument("--kid-subsets", type=integer_at_least(1), default=100)
    parser.add_argument("--json", help="also write the rows here")
    return parser


def main(argv: list[str] | None = None) -> None:
    run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
