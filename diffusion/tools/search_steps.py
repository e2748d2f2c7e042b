"""Search the noise levels of a few-step sampler for one trained model (``spacing: optimized``).

    python -m diffusion.tools.search_steps RUN/checkpoints/last.ckpt --nfe 3 4 [--samplers dpmpp_2m_sde dpmpp_2m]
                                          [--n 256] [--evaluations 30] [--max-share 0.05] [--seed 1] [--precision auto]

For each sampler and NFE: starting from the Karras levels (or from levels searched before for the same checkpoint with
as many levels, this setting's or the other ``--first-step``'s, where those are better), move one level at a time (``core.level_search``) to
lower the FID of n samples against the model's training images (``evaluation.searched_levels``), and write the levels
beside the checkpoint (``last.dpmpp_2m_sde.nfe4.levels.json``). ``sample.py sampler.spacing=optimized`` and
``sampler_fid --spacing optimized`` then use them (the FID callback searches its own, for the weights of each
measurement). Where the checkpoint sits in a run folder, each search stops starting evaluations once it has spent
``--max-share`` of the run's training time (its ``metrics.json``), and prints its share. NFE 1 has nothing to search.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from diffusion.core.errors import OneLineArgumentParser
from diffusion.evaluation.searched_levels import (
    SampleQuality,
    file_digest,
    levels_path,
    search_levels,
    searched_before,
    training_reference,
    write_levels,
)
from diffusion.tools.cli import integer_at_least, reports_user_errors, share
from diffusion.tools.sampler_fid import fid_labels, fill_data_mean, reference_quality, steps_at_nfe
from diffusion.training.builders import sampler_from_conf, sampler_names
from diffusion.training.checkpoints import load_checkpoint, module_from_checkpoint
from diffusion.training.precision import sampling_in_bf16
from diffusion.training.run_timer import training_seconds


def share_or_zero(text: str) -> float:
    """--max-share: a share in (0, 1], or 0 (written any way: 0, 0.0, 0e0) for no budget."""
    try:
        if float(text) == 0:
            return 0.0
    except ValueError:
        pass  # share() says what is wrong
    return share(text)


@reports_user_errors
def run(args: argparse.Namespace) -> list[dict]:
    bf16 = sampling_in_bf16(args.precision, torch.device("cpu"))
    digest = file_digest(args.ckpt)  # before reading it: the levels belong to these bytes
    checkpoint = load_checkpoint(args.ckpt)
    module = module_from_checkpoint(checkpoint).eval()
    validation, datamodule = reference_quality(checkpoint, kid_subsets=1)
    fill_data_mean(module, datamodule)
    quality = training_reference(validation.feature, datamodule.real_images("train"), args.seed)
    labels = fid_labels(module, datamodule, args.n)
    trained = training_seconds(Path(args.ckpt).resolve().parent.parent)  # RUN/checkpoints/last.ckpt -> RUN
    budget = None if trained is None or not args.max_share else args.max_share * trained
    rows = []
    for name, analytic, nfe in itertools.product(args.samplers, (first == "analytic" for first in args.first_step), args.nfe):
        if analytic and not sampler_from_conf(name).takes_analytic_first_step:
            print(f"{name}: no analytic first step for a consistency model, skipped", flush=True)
            continue
        steps = steps_at_nfe(name, nfe, {}, analytic)
        if steps is None:
            print(f"{name}: skipped at NFE {nfe}, below its lowest sound NFE", flush=True)
            continue
        sampler = sampler_from_conf(name, steps).replace(analytic_first_step=analytic)
        if sampler.steps < 2:
            print(f"{name}: nothing to search at NFE {nfe} (its one level is sigma_max)", flush=True)
            continue
        objective = SampleQuality(module, sampler, quality, n=args.n, seed=args.seed, labels=labels, bf16=bf16)
        before = searched_before(args.ckpt, sampler, digest)
        result, seconds = search_levels(objective, module.schedule, evaluations=args.evaluations, seconds=budget,
                                        others=[start["levels"] for start in before])
        share = None if trained is None else seconds / trained
        own_file = levels_path(args.ckpt, sampler).name
        own = next((start["levels"] for start in before if start["file"] == own_file), None)
        if own is not None and all(levels != own for levels, _ in result.history):
            # The budget ended the search before it reached the levels in the file: they may be the better ones.
            print(f"{name}{' +AFS' if analytic else ''} NFE {sampler.nfe}: the search ended ({result.evaluations} "
                  f"evaluations) before it evaluated the levels already searched in {own_file}; "
                  "kept them (a larger --max-share or --evaluations reaches them)", flush=True)
            continue
        path = write_levels(args.ckpt, sampler, result, seconds, digest, n=args.n, seed=args.seed, reference="training images",
                            features=quality.version, precision="bf16" if bf16 else "32",
                            share_of_training_time=None if share is None else round(share, 4),
                            also_started_from=before)
        if result.stopped:
            print(f"{name} NFE {sampler.nfe}: the time budget (--max-share {args.max_share}) ended the search after "
                  f"{result.evaluations} of {args.evaluations} evaluations", flush=True)
        cost = f"{seconds:.0f} s" + ("" if share is None else f", {100 * share:.1f}% of the run's {trained:.0f} s of training")
        print(f"{name}{' +AFS' if analytic else ''} NFE {sampler.nfe}: FID against training images {result.start_value:.3f} (Karras) -> {result.value:.3f}, "
              f"levels {', '.join(f'{v:.4g}' for v in result.levels)}, 0 ({result.evaluations} evaluations of "
              f"{args.n} samples, {cost}) -> {path}", flush=True)
        rows.append({"sampler": name, "analytic_first_step": analytic, "nfe": sampler.nfe, "levels": result.levels, "karras": result.start_value,
                     "searched": result.value, "seconds": seconds, "share": share, "path": str(path)})
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", help="a checkpoint or .safetensors export from train.py")
    parser.add_argument("--samplers", nargs="+", default=["dpmpp_2m_sde"], choices=sampler_names())
    parser.add_argument("--nfe", nargs="+", type=integer_at_least(1), default=[4], help="model evaluations per sample")
    parser.add_argument("--first-step", nargs="+", default=["network"], choices=["network", "analytic"],
                        help="search the levels of the sampler as it is, or with its first evaluation in closed form "
                             "(sampler.analytic_first_step: a level more at the same NFE), one file each")
    parser.add_argument("--n", type=integer_at_least(2), default=256, help="samples per evaluation of the objective")
    parser.add_argument("--evaluations", type=integer_at_least(1), default=30, help="evaluations of the objective per search")
    parser.add_argument("--seed", type=integer_at_least(0), default=1,
                        help="seed of the search's noise and reference subset (sampler_fid measures with seed 0 by default)")
    parser.add_argument("--max-share", type=share_or_zero, default=0.05,
                        help="time budget of each search as a share of the run's training time (its metrics.json; no "
                             "budget where the checkpoint has none, or with 0): no evaluation starts after it")
    parser.add_argument("--precision", default="auto", choices=["32", "bf16", "auto"],
                        help="the network under bf16 autocast where the CPU/GPU has fast bf16 (auto), or as given")
    return parser


def main(argv: list[str] | None = None) -> None:
    run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()

