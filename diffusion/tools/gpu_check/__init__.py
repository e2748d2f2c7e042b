"""Does distributed training on this machine do what one process does, and resume bit for bit?

    python -m diffusion.tools.gpu_check [--steps 40] [--processes N] [--out DIR] [--compile] [--checks resume,ema,...] [KEY=VALUE ...]

Runs the real ``train.py`` (subprocesses, Hydra overrides, one run directory each under ``--out``) with Lightning
DDP on every visible GPU in bf16-mixed (or on 2 CPU processes over gloo where there is no GPU, bf16-mixed where
the CPU has fast bf16), a short run (``trainer.max_steps``, a few thousand procedural sprites), and checks:

* ``repeat``: two uninterrupted runs end with the same bits (the baseline the resume check needs: where it fails,
  the machine's kernels are not deterministic, and resume cannot be judged bit for bit);
* ``ema``: every rank ends with the same EMA weights (each rank writes what it holds, ``probe.RankProbe``);
* ``resume``: a run killed with SIGKILL right after its mid-run checkpoint (mid-epoch) and resumed with
  ``ckpt_path=auto`` in the same directory ends with the uninterrupted run's final checkpoint: torch.equal on every
  tensor of the EMA weights (``state_dict``), the raw weights, the optimizer states and the LR schedule;
* ``fid``: the FID callback on N processes gives the figure one process gets on the same images (``fid.py`` says
  why the callback's one-process default draws other images); the one-process default is printed beside it;

* ``distil`` (asked for by name, ``--checks distil``: long): a rectified-flow teacher at the main job's budget (or
  ``--teacher``), ``experiment=dmd`` (``--method dmd_1step`` or ``cd``: that experiment) from it for
  ``--distil-steps`` with its FID curve at 1, 2 and 4 steps, and the teacher's DDPM-500: passes when the few-step
  figures meet issue 19's targets (``distil.py``);

and prints training images/s (over the last three quarters of the steps) with the share of the GPU's dense bf16
peak it reaches (FLOPs per image of one forward and backward, counted by FlopCounterMode). One PASS/FAIL line a
check; the exit status is 0 only when every check passed. KEY=VALUE arguments go to every train.py run last
(e.g. ``network=large``, or a small data set: ``data=sprites data.dir=DIR``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffusion.core.errors import ConfigError, OneLineArgumentParser
from diffusion.tools.cli import reports_user_errors
from diffusion.tools.gpu_check import compare, distil, runs, speed

CHECKS = ("repeat", "ema", "resume", "fid", "distil")
DEFAULT_CHECKS = CHECKS[:4]  # distil trains a teacher and distils it: asked for by name
PROCEDURAL_VAL_FRACTION = 0.05  # conf/data/procedural.yaml
FID_TOLERANCE = 1e-3  # relative: float64 feature sums added in another order, reference features in other batches


def check_list(text: str) -> list[str]:
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in CHECKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown check(s) {', '.join(unknown) or text!r}; choose from {','.join(CHECKS)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineArgumentParser(
        prog="python -m diffusion.tools.gpu_check", description=__doc__.split("\n\n")[0],
        epilog="Checks: repeat (two runs, same bits), ema (ranks agree), resume (SIGKILL + ckpt_path=auto, same bits), "
        "fid (N processes = one process on the same images), distil (only by name: a flow teacher, distribution "
        "matching or consistency distillation from it, FID at 1, 2 and 4 steps against the teacher's DDPM-500). Exit status 0 only if every check passed. "
        "CUDA_VISIBLE_DEVICES= (empty) runs the CPU variant on a GPU machine.",
    )
    parser.add_argument("--steps", type=int, default=40, help="trainer.max_steps of every run (default 40)")
    parser.add_argument("--processes", type=int, help="DDP processes (default: every visible GPU; 2 on a CPU-only machine)")
    parser.add_argument("--out", type=Path, help="folder for the runs (default: a new temporary folder)")
    parser.add_argument("--compile", action="store_true", help="training.compile=true (TorchInductor; slow to warm up)")
    parser.add_argument("--checks", type=check_list, default=list(DEFAULT_CHECKS),
                        help=f"comma-separated, of {','.join(CHECKS)} (default: {','.join(DEFAULT_CHECKS)})")
    parser.add_argument("--batch-size", type=int, default=128, help="data.batch_size, images per process and step")
    parser.add_argument("--data-n", type=int, default=4000, help="procedural sprites generated (data.n; default 4000)")
    parser.add_argument("--checkpoint-every", type=int,
                        help="callbacks.checkpoint.every_n_steps, where the resume check kills the run (default: mid-run, mid-epoch)")
    parser.add_argument("--precision", default="auto", help="trainer.precision (default: bf16-mixed where fast, else 32-true)")
    parser.add_argument("--fid-samples", type=int, default=1000, help="generated images of the FID check")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one train.py run may take")
    parser.add_argument("--teacher", type=Path,
                        help="distil: the teacher's checkpoint, of train.py objective=flow schedule=flow (default: train one); "
                             "give the check the data overrides it was trained with")
    parser.add_argument("--teacher-steps", type=int, help="distil: the teacher's trainer.max_steps (default: the main job's)")
    parser.add_argument("--method", choices=sorted(distil.METHODS), default="dmd",
                        help="distil: the few-step method, experiment=dmd (distribution matching, judged at 2 steps), "
                             "dmd_1step (judged at 1 step) or cd (consistency distillation, both); default dmd")
    parser.add_argument("--distil-steps", type=int,
                        help="distil: the distillation's steps (default: about the teacher's cost, "
                             + ", ".join(f"{name} {m.steps}" for name, m in sorted(distil.METHODS.items())) + ")")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides for every train.py run")
    return parser.parse_args(argv)


def describe_machine(processes: int | None, precision: str) -> tuple[str, int, str, str]:
    """The first line of the report, the process count, the accelerator and the precision."""
    from diffusion.training.precision import fast_bf16_available

    if processes is not None and processes < 1:
        raise ConfigError(f"--processes={processes} must be at least 1")
    gpus = torch.cuda.device_count()
    if gpus:
        processes = processes or gpus
        if processes > gpus:
            raise ConfigError(f"--processes={processes} exceeds the {gpus} visible GPUs; give at most {gpus}")
        precision = "bf16-mixed" if precision == "auto" else precision
        names = sorted({torch.cuda.get_device_name(i) for i in range(processes)})
        return f"gpu_check: {processes} x {', '.join(names)} (CUDA), DDP over NCCL, {precision}", processes, "gpu", precision
    processes = processes or 2
    if precision == "auto":
        precision = "bf16-mixed" if fast_bf16_available("cpu") else "32-true"
    return f"gpu_check: no GPU: {processes} CPU processes (DDP over gloo), {precision}", processes, "cpu", precision


def make_plan(args: argparse.Namespace, processes: int, accelerator: str, precision: str) -> runs.Plan:
    for name, value, low in (("--batch-size", args.batch_size, 1), ("--steps", args.steps, 2), ("--data-n", args.data_n, 10),
                             ("--fid-samples", args.fid_samples, 2)):
        if value < low:
            raise ConfigError(f"{name}={value} must be at least {low}")
    if not args.timeout > 0:
        raise ConfigError(f"--timeout={args.timeout} must be a number of seconds > 0")
    procedural = not any(o.startswith(("data=", "+data=")) for o in args.overrides)
    extra = ([f"data.n={args.data_n}"] if procedural else []) + list(args.overrides)
    if args.checkpoint_every is not None:
        every = args.checkpoint_every
    else:
        train_images = args.data_n - round(args.data_n * PROCEDURAL_VAL_FRACTION) if procedural else 0
        every = runs.mid_epoch_step(args.steps, train_images // processes // args.batch_size)
    if not 0 < every < args.steps:
        raise ConfigError(f"--checkpoint-every={every} must lie inside the run (1..{args.steps - 1}) for the resume check")
    if "distil" in args.checks:
        if args.distil_steps is None:
            args.distil_steps = distil.METHODS[args.method].steps
        if args.distil_steps < distil.STAGES:
            raise ConfigError(f"--distil-steps={args.distil_steps} must be at least {distil.STAGES} (one FID a stage)")
        if args.teacher_steps is not None and args.teacher_steps < 1:
            raise ConfigError(f"--teacher-steps={args.teacher_steps} must be at least 1")
        if args.teacher is not None:
            if args.teacher_steps is not None:
                raise ConfigError("--teacher-steps is the length of the teacher the check trains; drop it with --teacher")
            if not args.teacher.is_file():
                raise ConfigError(f"--teacher {args.teacher} is not a file; give a checkpoint of train.py objective=flow, "
                                  "or leave it out to train one")
            args.teacher = args.teacher.resolve()  # the runs start in the repository's root
            distil.check_teacher(args.teacher)
    return runs.Plan(processes, accelerator, precision, args.steps, args.batch_size, every, args.compile, extra)


class Report:
    def __init__(self):
        self.results: dict[str, bool] = {}

    def check(self, name: str, passed: bool, detail: str) -> None:
        self.results[name] = passed
        print(f"{'PASS' if passed else 'FAIL'} {name}: {detail}", flush=True)

    @staticmethod
    def info(line: str) -> None:
        print(f"     {line}", flush=True)


def tensors_equal(name: str, found: list[str], what: str, report: Report) -> None:
    shown = "; ".join(found[:5]) + (f"; ... {len(found) - 5} more" if len(found) > 5 else "")
    report.check(name, not found, what if not found else f"{len(found)} difference(s): {shown}")


def check_ema(records: list[dict], report: Report) -> None:
    found = [f"rank {r}: {d}" for r in range(1, len(records)) for d in compare.differences(records[0]["weights"], records[r]["weights"])]
    tensors_equal("ema", found, f"the {len(records)} ranks end with the same EMA weights (torch.equal, every tensor)", report)


def batch_order(whole: list[dict], resumed: list[dict]) -> str:
    """Whether the resumed run trained on the uninterrupted run's batches, step by step, on every rank."""
    parted = []
    for rank, (a, b) in enumerate(zip(whole, resumed)):
        theirs = dict(a["batches"])
        steps = [step for step, digest in b["batches"] if theirs.get(step) != digest]
        if steps:
            parted.append(f"rank {rank} from step {steps[0]} ({len(steps)} of {len(b['batches'])} steps)")
    if not parted:
        return "the resumed run trained on the uninterrupted run's batches at every step"
    return "the resumed run trained on other batches than the uninterrupted run: " + ", ".join(parted)


def check_speed(plan: runs.Plan, whole_dir: Path, records: list[dict], accelerator: str, report: Report) -> None:
    from diffusion.training.checkpoints import load_checkpoint, module_from_checkpoint

    rate = speed.images_per_second(records[0]["step_ends"], plan.batch_size * plan.processes)
    module = module_from_checkpoint(load_checkpoint(whole_dir / "checkpoints" / "last.ckpt"))
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    flops = speed.train_flops_per_image(module.denoiser.net, plan.batch_size, module.num_classes, module.image_size, device)
    if rate is None:
        report.info(f"speed: too few steps to time; {flops / 1e9:.3f} GFLOP per image (forward + backward)")
        return
    line = f"speed: {rate:,.0f} training images/s on {plan.processes} processes, {flops / 1e9:.3f} GFLOP per image (forward + backward)"
    if accelerator != "gpu":
        report.info(line + "; no GPU: no bf16 peak to compare with")
        return
    name = torch.cuda.get_device_name(0)
    peak = speed.bf16_peak(name)
    if peak is None:
        report.info(line + f"; bf16 peak of {name!r} unknown (add it to speed.BF16_PEAK_TFLOPS)")
    else:
        share = rate * flops / (peak * plan.processes)
        report.info(line + f" = {rate * flops / 1e12:.1f} TFLOP/s, {share:.2%} of {plan.processes} x {peak / 1e12:.0f} TFLOP/s ({name}, dense bf16)")


def check_fid(args: argparse.Namespace, plan: runs.Plan, whole_dir: Path, out: Path, report: Report) -> None:
    from diffusion.tools.gpu_check import fid

    figures = {}
    for devices in (plan.processes, 1):
        path = out / f"fid-{devices}.json"
        cmd = [sys.executable, "-m", "diffusion.tools.gpu_check.fid", str(whole_dir), "--devices", str(devices),
               "--accelerator", plan.accelerator, "--num-samples", str(args.fid_samples), "--out", str(path)]
        with open(out / f"fid-{devices}.log", "w") as log:
            code = subprocess.run(cmd, cwd=runs.ROOT, env=runs.environment(plan), stdout=log, stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise runs.Failed(f"the FID measurement on {devices} process(es) exited with {code}; log {out / f'fid-{devices}.log'}")
        figures[devices] = json.loads(path.read_text())["fid"]
    device = torch.device("cuda" if plan.accelerator == "gpu" else "cpu")
    same = fid.same_images_figure(whole_dir, plan.processes, args.fid_samples, device)["fid"]
    gap = abs(figures[plan.processes] - same) / max(abs(same), 1e-12)
    report.check("fid", gap <= FID_TOLERANCE,
                 f"FID {figures[plan.processes]:.6g} on {plan.processes} processes, {same:.6g} in one process on the same "
                 f"images (relative gap {gap:.1e}, tolerance {FID_TOLERANCE:g})")
    report.info(f"fid: one process with the callback's own noise (other images, FID's sampling noise): {figures[1]:.6g}")


def training_checks(args: argparse.Namespace) -> list[str]:
    """The asked checks that share the short run (all but distil)."""
    return [name for name in args.checks if name in DEFAULT_CHECKS]


def run_checks(args: argparse.Namespace, plan: runs.Plan, out: Path, report: Report) -> None:
    if training_checks(args):
        run_training_checks(args, plan, out, report)
    if "distil" in args.checks:
        try:
            distil.check_distil(args, plan, out, report)
        except runs.Failed as err:
            report.check("distil", False, str(err))


def run_training_checks(args: argparse.Namespace, plan: runs.Plan, out: Path, report: Report) -> None:
    """repeat, ema, resume, fid: one short run and its twins."""
    started = time.perf_counter()
    whole_dir = out / "whole"
    try:
        probe = runs.run_whole(plan, whole_dir, args.timeout)
        whole = runs.final_checkpoint(whole_dir, plan.steps)
        records = runs.rank_records(probe, plan.processes)
    except runs.Failed as err:
        for i, name in enumerate(training_checks(args)):
            report.check(name, False, f"the uninterrupted run failed: {err}" if i == 0 else "not run: the uninterrupted run failed")
        return
    report.info(f"the uninterrupted run: {plan.steps} steps in {whole_dir} ({time.perf_counter() - started:.0f} s with start-up)")
    check_speed(plan, whole_dir, records, plan.accelerator, report)
    if "ema" in args.checks:
        check_ema(records, report)
    if "repeat" in args.checks:
        try:
            runs.run_whole(plan, out / "repeat", args.timeout)
            found = compare.resume_differences(whole, runs.final_checkpoint(out / "repeat", plan.steps))
            tensors_equal("repeat", found, "a second uninterrupted run ends with the same bits", report)
        except runs.Failed as err:
            report.check("repeat", False, str(err))
    if "resume" in args.checks:
        try:
            resumed = runs.rank_records(runs.run_killed_and_resumed(plan, out / "resumed", args.timeout), plan.processes)
            found = compare.resume_differences(whole, runs.final_checkpoint(out / "resumed", plan.steps))
            tensors_equal("resume", found, f"killed (SIGKILL) after the checkpoint at step {plan.checkpoint_every}, resumed "
                          "with ckpt_path=auto: EMA and raw weights, optimizer and LR states equal the uninterrupted run's", report)
            report.info(f"resume: {batch_order(records, resumed)}")
        except runs.Failed as err:
            report.check("resume", False, str(err))
    if "fid" in args.checks:
        try:
            check_fid(args, plan, whole_dir, out, report)
        except runs.Failed as err:
            report.check("fid", False, str(err))


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    first_line, processes, accelerator, precision = describe_machine(args.processes, args.precision)
    plan = make_plan(args, processes, accelerator, precision)
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise ConfigError(f"--out {out} is not empty; give a new folder")
    print(first_line, flush=True)
    if training_checks(args):
        print(f"     {plan.steps} steps at batch {plan.batch_size} a process, checkpoint every {plan.checkpoint_every} steps"
              f"{', training.compile=true' if plan.compile else ''}; runs in {out}", flush=True)
    else:
        print(f"     runs in {out}", flush=True)
    if plan.processes == 1 and {"ema", "fid"} & set(args.checks):
        print("     one process: the ema and fid checks have no second rank to compare with", flush=True)
    report = Report()
    run_checks(args, plan, out, report)
    passed = all(report.results.values())
    print(f"{'PASS' if passed else 'FAIL'}: {sum(report.results.values())} of {len(report.results)} checks passed", flush=True)
    sys.exit(0 if passed else 1)
