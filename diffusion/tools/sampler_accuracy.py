"""Compare the samplers on the exact denoiser of a fixed image set (no network, no training).

    python -m diffusion.tools.sampler_accuracy [--steps 5 10 20 50] [--n 64] [--data images.npz]

For each sampler and step count it reports the denoiser evaluations (NFE), how close the samples are to
the data set (mean RMS-per-pixel distance to the nearest image: 0 means an exact member), and, for the
deterministic samplers, how far they are from a very fine Heun solution of the same probability-flow ODE
from the same noise: the median RMS error of x at sigma_min (before the last step to 0 snaps x onto an
image) and the fraction of samples that end on the same image as that solution. See ``diffusion.core.exact``.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from diffusion.core.errors import OneLineArgumentParser
from diffusion.core.exact import DETERMINISTIC, Harness, make_dataset, nearest_distance, pairwise_rms, rms
from diffusion.core.samplers import all_samplers
from diffusion.core.schedules import LinearSchedule
from diffusion.tools.cli import integer_at_least


def load_images(path: str) -> torch.Tensor:
    """Images from an .npz (key ``images``, else its first array): (N, C, H, W) or (N, H, W, C), uint8 in
    [0, 255] or floats in [-1, 1]."""
    with np.load(path) as archive:
        array = archive["images"] if "images" in archive.files else archive[archive.files[0]]
    images = torch.from_numpy(np.asarray(array))
    if images.ndim == 3:
        images = images[:, None]
    if images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
        images = images.permute(0, 3, 1, 2)
    images = images.float() / 127.5 - 1 if array.dtype == np.uint8 else images.float()
    return images.contiguous()


def run_to_end(harness: Harness, name: str, steps: int, n: int, seed: int):
    """A run, plus x at sigma_min (the last level before 0) taken from the same run, or None for 1 step."""
    at_sigma_min = []
    run = harness.run(name, steps, n, seed, callback=lambda i, x, d: at_sigma_min.append(x) if i == steps - 2 else None)
    return run, (at_sigma_min[0] if at_sigma_min else None)


def benchmark(
    data: torch.Tensor,
    steps: list[int],
    n: int,
    samplers: list[str],
    spacing: str = "karras",
    seed: int = 0,
    reference_steps: int = 500,
) -> list[dict]:
    harness = Harness(data, schedule=LinearSchedule(T=1000) if spacing == "linear" else None)
    reference, reference_end = run_to_end(harness, "heun", reference_steps, n, seed)
    reference_image = pairwise_rms(reference.samples, data).argmin(1)
    rows = []
    for name in samplers:
        for count in steps:
            run, end = run_to_end(harness, name, count, n, seed)
            image = pairwise_rms(run.samples, data).argmin(1)
            row = {
                "sampler": name,
                "steps": count,
                "nfe": run.nfe,
                "nearest": nearest_distance(run.samples, data).mean().item(),
                "distinct": len(image.unique()),
                "seconds": run.seconds,
            }
            if name in DETERMINISTIC:
                row["same"] = (image == reference_image).double().mean().item()
                if end is not None:
                    row["ode_err"] = rms(end, reference_end).median().item()
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        f"{'sampler':<16} {'steps':>5} {'NFE':>5} {'nearest':>9} {'distinct':>8} {'ode_err':>9} {'same_img':>8} {'ms':>7}"
    ]
    for r in rows:
        ode = f"{r['ode_err']:9.2e}" if "ode_err" in r else f"{'-':>9}"
        same = f"{r['same']:8.0%}" if "same" in r else f"{'-':>8}"
        lines.append(
            f"{r['sampler']:<16} {r['steps']:>5} {r['nfe']:>5} {r['nearest']:9.2e} {r['distinct']:>8} {ode} {same}"
            f" {1e3 * r['seconds']:7.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=integer_at_least(1), nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--n", type=integer_at_least(1), default=64, help="samples per run")
    parser.add_argument("--data", help=".npz of images; default: a fixed set of sprite-like random images")
    parser.add_argument("--n-data", type=integer_at_least(2), default=256, help="size of the generated image set")
    parser.add_argument("--size", type=integer_at_least(1), default=16, help="side of the generated images")
    parser.add_argument("--samplers", nargs="+", default=list(all_samplers()), choices=list(all_samplers()))
    parser.add_argument("--spacing", choices=["karras", "linear"], default="karras",
                        help="Karras levels in [0.002, 80], or the DDPM LinearSchedule(T=1000) levels")
    parser.add_argument("--reference-steps", type=integer_at_least(1), default=500, help="Heun steps of the reference ODE solution")
    parser.add_argument("--seed", type=integer_at_least(0), default=0)
    parser.add_argument("--threads", type=integer_at_least(1), default=1,
                        help="torch threads; the matrices are small, and extra threads only contend on a busy machine")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.data:
        data = load_images(args.data)
    else:
        data = make_dataset(args.n_data, (3, args.size, args.size), seed=args.seed, kind="sprites")
    start = time.perf_counter()
    rows = benchmark(data, args.steps, args.n, args.samplers, args.spacing, args.seed, args.reference_steps)
    print(
        f"exact denoiser over {len(data)} images {tuple(data.shape[1:])}, {args.n} samples, {args.spacing} levels, "
        f"reference: Heun {args.reference_steps} steps; distances are RMS per pixel on [-1, 1]\n"
        "nearest: mean distance to the closest image; distinct: images hit; ode_err: median distance to the\n"
        "reference ODE solution at sigma_min (deterministic samplers); same_img: share ending on its image"
    )
    print(format_table(rows))
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
