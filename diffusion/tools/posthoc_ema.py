"""Post-hoc EMA: rebuild the EMA of any width from a run's snapshots, and optionally measure FID for each.

    python -m diffusion.tools.posthoc_ema RUN_DIR --sigma-rel 0.05 0.1 0.15 [--step T] [--out DIR]
                                          [--fid [--sampler dpmpp_2m] [--nfe 20] [--n 1000] [--seed 0]] [--json out.json]

RUN_DIR is a train.py run with ``callbacks=[default,posthoc_ema]`` (snapshots under RUN_DIR/ema/). Each sigma_rel
(the averaging profile's width relative to the training length, Karras et al. 2024, sec. 3) is reconstructed at
the last snapshot's step (or ``--step``) and written as OUT/sigma_rel_S.safetensors (default OUT: RUN_DIR/ema/posthoc),
which sample.py, sampler_fid and evaluate take like final.safetensors. With ``--fid``, every reconstruction samples
from the same noise and labels with one sampler and is measured against the reference set the run's training used
(``sampler_fid``'s machinery), so the figures differ only by the averaging; the run's fixed-decay EMA
(checkpoints/final.safetensors, row ``fixed``) is measured first, the same way.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from diffusion.core.errors import OneLineArgumentParser
from diffusion.core.samplers.common import steps_for_nfe
from diffusion.tools.cli import integer_at_least, reports_user_errors
from diffusion.tools.sampler_fid import fid_labels, reference_quality, sample_images, sampler_for
from diffusion.training.builders import sampler_from_conf, sampler_names
from diffusion.training.checkpoints import export_safetensors, load_checkpoint, module_from_checkpoint
from diffusion.training.power_ema import reconstruct, snapshot_index
from diffusion.training.precision import sampling_in_bf16


@reports_user_errors
def run(args: argparse.Namespace) -> list[dict]:
    run_dir = Path(args.run_dir).expanduser()
    ema_dir = run_dir / "ema"
    out_dir = Path(args.out).expanduser() if args.out else ema_dir / "posthoc"
    index = snapshot_index(ema_dir)
    stored = sorted({entry["sigma_rel"] for entry in index})
    print(f"{len(index)} snapshots in {ema_dir}: sigma_rel {', '.join(f'{s:g}' for s in stored)}, "
          f"steps {min(e['step'] for e in index)}..{max(e['step'] for e in index)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for sigma_rel in args.sigma_rel:
        state, info, coefficients = reconstruct(ema_dir, sigma_rel, args.step)
        path = export_safetensors(state, info, out_dir / f"sigma_rel_{sigma_rel:.4f}.safetensors")
        # The least-squares fit does not force the coefficients to sum to 1 (the profile's mass): far outside the
        # stored sigma_rels it drifts from 1 and the weights are scaled by it, so it is reported.
        rows.append({"sigma_rel": sigma_rel, "gamma": info["posthoc_ema"]["gamma"], "step": info["posthoc_ema"]["step"],
                     "coefficient_sum": float(coefficients.sum()), "path": str(path)})
        print(f"sigma_rel {sigma_rel:g} (gamma {rows[-1]['gamma']:.3f}) at step {rows[-1]['step']}, coefficients summing to "
              f"{rows[-1]['coefficient_sum']:.4f}: {path}", flush=True)
    if args.fid:
        # The run's own fixed-decay EMA, measured the same way: the figure a post-hoc width has to beat.
        fixed = run_dir / "checkpoints" / "final.safetensors"
        if fixed.is_file():
            rows.insert(0, {"sigma_rel": None, "gamma": None, "step": None, "path": str(fixed), "fixed_ema": True})
        measure(rows, args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"run_dir": str(run_dir), "rows": rows}, indent=2) + "\n")
    return rows


def measure(rows: list[dict], args: argparse.Namespace) -> None:
    """FID and KID of each reconstruction, in place into ``rows``."""
    quality = None
    bf16 = sampling_in_bf16(args.precision, torch.device("cpu"))
    sampler = sampler_for(args.sampler, steps_for_nfe(sampler_from_conf(args.sampler).function, args.nfe))
    for row in rows:
        checkpoint = load_checkpoint(row["path"])
        if quality is None:
            quality, datamodule = reference_quality(checkpoint, args.kid_subsets)
            print(f"{'sigma_rel':>9} {'gamma':>7} {'FID':>9} {'KID':>9} {'seconds':>8}   "
                  f"({quality.version}, {args.n} samples, {args.sampler} NFE {sampler.nfe})")
        module = module_from_checkpoint(checkpoint).eval()
        start = time.perf_counter()
        labels = fid_labels(module, datamodule, args.n)
        quality.update_fake(sample_images(module, sampler, args.n, args.seed, args.batch_size, bf16, labels))
        seconds = time.perf_counter() - start
        result = quality.compute()
        quality.reset_fake()
        row.update(fid=result["fid"], kid=result["kid_mean"], sampler=args.sampler, nfe=sampler.nfe, n=args.n,
                   seed=args.seed, features=quality.version, sampling_seconds=round(seconds, 2))
        width = "fixed" if row["sigma_rel"] is None else f"{row['sigma_rel']:g}"
        gamma = "-" if row["gamma"] is None else f"{row['gamma']:.3f}"
        print(f"{width:>9} {gamma:>7} {row['fid']:9.3f} {row['kid']:9.5f} {seconds:8.1f}", flush=True)


def sigma_rel_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sigma-rel takes numbers such as 0.05, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a train.py run directory trained with callbacks=[default,posthoc_ema]")
    parser.add_argument("--sigma-rel", nargs="+", type=sigma_rel_arg, default=[0.05, 0.10, 0.15],
                        help="EMA widths to rebuild, relative to the training length (the paper's range: 0.01 .. 0.25)")
    parser.add_argument("--step", type=integer_at_least(0), help="rebuild the averages as they were at this optimizer step (default: the last snapshot's)")
    parser.add_argument("--out", help="where to write sigma_rel_S.safetensors (default: RUN_DIR/ema/posthoc)")
    parser.add_argument("--fid", action="store_true", help="also measure FID and KID of each reconstruction")
    parser.add_argument("--sampler", default="dpmpp_2m", choices=sampler_names(), help="sampler for --fid")
    parser.add_argument("--nfe", type=integer_at_least(1), default=20, help="model evaluations per sample for --fid")
    parser.add_argument("--precision", default="32", choices=["32", "bf16", "auto"], help="the network in float32 or under bf16 autocast")
    parser.add_argument("--n", type=integer_at_least(2), default=1000, help="samples per figure")
    parser.add_argument("--seed", type=integer_at_least(0), default=0)
    parser.add_argument("--batch-size", type=integer_at_least(1), default=500)
    parser.add_argument("--kid-subsets", type=integer_at_least(1), default=100)
    parser.add_argument("--json", help="also write the rows here")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.n < 1 or args.nfe < 1:
        build_parser().error("--n and --nfe must be at least 1")
    run(args)


if __name__ == "__main__":
    main()
