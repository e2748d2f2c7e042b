"""Throughput of this framework's training and sampling, side by side with a course-style pipeline.

    python -m diffusion.tools.throughput [--model small|course|large] [--batch 100] [--steps 20] [--precision 32|bf16|auto]
                              [--device auto|cpu|cuda] [--channels-last] [--compile] [--quick] [--json PATH]
                              [hydra overrides, e.g. network.base_channels=48]

Method. Everything is measured in one process and side by side: each contender is built once and warmed
up (warm-up steps, which include torch.compile's compilation, are never timed), then the contenders take
turns, one chunk of steps each per repetition (A B C A B C ...), so a burst of load from another process
hits all of them alike. A chunk is sized from the contender's warm-up to about 1.5 s (0.5 s with --quick,
which also takes 3 turns instead of 5, 2 sampling repetitions instead of 3, the fast samplers at --steps
only, and skips the naive loader with workers). Every figure is the median over repetitions (turns); a
training ratio is the median over turns of the two contenders' ratio within the turn, so load that lasts
a turn cancels out. On CUDA the clock is read after torch.cuda.synchronize(). The report gives the share
of CPU time that other processes took during the run (from /proc/stat): judge the figures by it.

Training contenders (the same U-Net, initial weights, batch size and AdamW from conf/; the data are
10,000 procedural sprites from ``data.procedural``, 16x16 uint8, in memory):

  ours       the framework: DiffusionModule from ``builders.build_module`` (Hydra's compose API on conf/),
             the SpriteDataModule path (the sprites as one uint8 tensor in device memory, batches as
             randperm slices, scaled to [-1, 1] in bulk after transfer), Lightning with gradient clipping
             1.0, --precision, and --channels-last / --compile. Its clock is read at consecutive
             on_train_batch_start hooks, so a chunk holds whole iterations: fetch, scaling, step,
             clipping, optimizer, Lightning's bookkeeping. EMA, sample-grid and checkpoint callbacks are
             not part of the step and are left out.
  raw        DiffusionModule's loss, backward, clipping and AdamW step on one fixed batch, no Lightning
             and no data: ours / raw is what the data path and Lightning cost.
  raw fp32   raw without bf16 autocast, channels_last or compile, only when one of them is on: raw / raw
             fp32 is what they buy (run with one option at a time to see each one's share).
  naive      the DeepLearning.AI course's pipeline: a per-item Dataset (PIL image -> ToTensor -> Normalize
             to [-1, 1]), a DataLoader with shuffle and default collate, fp32, the course's loss on the
             same U-Net, no clipping (as in the course). Run with num_workers=0 and 2 (persistent workers,
             prefetch_factor=1); with workers each chunk first runs as many untimed steps as the workers
             prefetch, so batches queued while the other contenders ran are not counted. ours / naive
             uses the faster of the two.

Options: --channels-last stores the U-Net's weights as NHWC, which makes the convolutions (oneDNN on
CPU, cuDNN on CUDA) work and return NHWC; --compile runs ``Module.compile()`` (TorchInductor) on the
U-Net; bf16 is autocast (Lightning's ``bf16-mixed``): weights and optimizer stay fp32.

Sampling: ``sampling.generate`` under inference_mode, in fp32 and under bf16 autocast, for the fast
samplers (conf/sampler/*.yaml) at about --steps and --steps / 2 model evaluations (NFE; Heun's steps are
chosen so that 2 * steps - 1 stays within it), unconditional, and for ``samplers.sample_ddpm`` over the 500
levels of conf/sampler/ddpm.yaml. DDPM is timed over all 500 levels on CUDA (100 with --quick) and over the
first 10 (5) on CPU, and scaled to 500: every DDPM step is the same evaluation and update.

Peak memory: on CUDA torch.cuda.max_memory_allocated (tensors only), reset before each chunk; on CPU the
process's peak resident set (VmHWM in /proc/self/status), reset through /proc/self/clear_refs before each
chunk, or getrusage's ru_maxrss (the process's lifetime peak) where that file cannot be written. Either
way it is the whole process: every contender's weights and optimizer state and the data set are in it,
so the differences between contenders are what each step adds. DataLoader workers are not counted.

Hardware fraction: forward FLOPs per image are counted with torch.utils.flop_counter.FlopCounterMode on
one batch; a training step is taken as 3x the forward; achieved FLOP/s = 3 * forward FLOPs per image *
images/s, divided by the rate of a large square matmul in the contender's precision (what this machine
reaches in practice, not a datasheet peak), which takes its turns among the training contenders so that it
is measured under the same load. On CUDA the fp32 matmul is true fp32 (torch's default) while cuDNN
convolutions may use TF32 (``torch.backends.cudnn.allow_tf32``, on by default); both flags are reported.

Convolution bound (CPU only): after the turns, the raw steps run 3 more steps under a dispatch mode that
clocks every aten operator (``OperatorClock``), which gives the time spent in convolutions, forward and
backward. The step can never be faster than its convolutions, so the naive step's time over the
convolutions' time bounds ours / naive from above.

The package, by job: ``measure`` (the plan, clocks, peak memory, a contender measured in chunks), ``contenders``
(the training contenders and their turns), ``operators`` (FLOPs and the convolution bound), ``sampling``,
``machine`` (device, precision, the machine's description and load), ``report`` (rows, ratios, the printed
tables); this module runs them and writes the result.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import warnings
from pathlib import Path

import torch

from diffusion.core.errors import OneLineArgumentParser
from diffusion.data.procedural import generate_sprites
from diffusion.tools.cli import integer_at_least, run_hydra_main
from diffusion.tools.throughput.contenders import compare_training
from diffusion.tools.throughput.machine import OtherLoad, describe_machine, pick_precision
from diffusion.tools.throughput.measure import PeakMemory, Plan, compose_config, fresh_module
from diffusion.tools.throughput.operators import convolution_bound, forward_flops_per_image
from diffusion.tools.throughput.report import format_report, sampling_rows, training_ratios, training_rows
from diffusion.tools.throughput.sampler_timing import FAST_SAMPLERS, compare_sampling, sampling_precisions  # noqa: F401
from diffusion.training.precision import pick_device


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineArgumentParser(
        prog="python -m diffusion.tools.throughput",  # not argv[0], which is throughput/__main__.py
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="small", help="a conf/network config: small, course or large")
    parser.add_argument("--batch", type=integer_at_least(1), default=100, help="training batch size")
    parser.add_argument("--steps", type=integer_at_least(1), default=20,
                        help="fast samplers' model evaluations (NFE); the full run also does half")
    parser.add_argument("--precision", choices=["32", "bf16", "auto"], default="auto",
                        help="ours and raw: fp32, bf16 autocast, or bf16 where the hardware has fast bf16")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--channels-last", action="store_true", help="NHWC weights for ours and raw")
    parser.add_argument("--compile", action="store_true", help="torch.compile the U-Net of ours and raw")
    parser.add_argument("--quick", action="store_true",
                        help="fewer turns, shorter chunks, fast samplers at --steps only, naive without workers")
    parser.add_argument("--sample-batch", type=integer_at_least(1), default=None,
                        help="images per sampling run (default 256 on CUDA, 32 on CPU, 16 on CPU with --quick)")
    parser.add_argument("--threads", type=integer_at_least(1), default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the JSON result here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the train config, e.g. network.base_channels=48")
    return parser.parse_args(argv)


def quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")


def run(args: argparse.Namespace) -> dict:
    start, other_load = time.perf_counter(), OtherLoad()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    precision = pick_precision(args.precision, device)
    plan = Plan.make(args, device)
    cfg = compose_config(args.model, args.batch, args.overrides)
    images, labels = generate_sprites(plan.data_size, seed=0)
    machine = describe_machine(device)
    forward = forward_flops_per_image(cfg, args.batch, device)
    options = (args.channels_last, args.compile)
    contenders, matmuls = compare_training(cfg, images, labels, device, precision, options, plan)
    rates = {m.precision: m.rate for m in matmuls}
    jobs = compare_sampling(cfg, plan, device)
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["cpu_share_taken_by_others"] = other_load.share()
    rows = training_rows(contenders, 3 * forward, rates)
    training = {
        "batch": args.batch, "reps": plan.train_reps,
        "memory_method": PeakMemory(device).method, "rows": rows, "ratios": training_ratios(contenders),
    }
    if device.type == "cpu":  # CUDA kernels run asynchronously: their time is not the profiler's CPU time
        training["convolutions"] = convolution_bound(contenders, args.batch)
    if 2 not in plan.naive_workers:
        training["skipped"] = "--quick: naive with num_workers=2 not run"
    return {
        "model": args.model,
        "parameters": sum(p.numel() for p in fresh_module(cfg, device).parameters()),
        "precision": precision,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "machine": machine,
        "flops": {
            "forward_per_image": forward, "matmul_size": plan.matmul_size, "matmul_rate": rates,
            "matmul_rate_reps": {m.precision: m.rates for m in matmuls},
        },
        "training": training,
        "sampling": {
            "batch": plan.sample_batch, "reps": plan.sample_reps, "ddpm_timed_levels": plan.ddpm_timed_levels,
            "precisions": sampling_precisions(device), "rows": sampling_rows(jobs, plan),
        },
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    quiet_lightning()
    result = run_hydra_main(lambda: run(args))  # a bad override ends as one `error:` line, as on train.py
    print(format_report(result))
    line = json.dumps(result)
    print(line)
    if args.json:
        args.json.write_text(line + "\n")
    return result
