"""Noise levels searched for a trained model (``spacing: optimized``): the objective, the search, the file.

The objective is the FID of ``n`` samples against the model's *training* images (the FID reports measure against
the validation split, which the search never sees), in the run's own feature network, with the same starting
noise, labels and sampler noise for every candidate (``core.level_search``). The levels found are written beside
the checkpoint, one small JSON file per checkpoint, sampler and NFE (``levels_path``), with the checkpoint's
SHA-256 so that levels searched for an older ``last.ckpt`` are never used for a newer one.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from torch import Tensor

from diffusion.core.errors import ConfigError
from diffusion.core.level_search import SearchResult, compass_search
from diffusion.core.sampling import Sampler
from diffusion.evaluation.metrics import ImageQuality

LEVELS_VERSION = 1
AFS_CENTRE = "training mean"  # where the analytic first step's Gaussian is centred (core.denoiser.analytic_first_step)
REFERENCE_IMAGES = 5000  # training images the objective compares against (all of a smaller set)


class SampleQuality:
    """FID of ``n`` samples drawn with given levels against a fixed reference, with common random numbers.

    Args:
        module: the trained model (``DiffusionModule``: its ``sample``), with the weights to measure (the EMA ones).
        sampler: the sampler whose levels are searched (its function, steps and options).
        quality: an ``ImageQuality`` whose reference (``training_reference``) is already added.
        n, seed: the samples per evaluation and the seed of their starting and sampler noise.
        labels: n class labels, or None for an unconditional model.
        bf16: the network under bf16 autocast.
    """

    def __init__(self, module, sampler: Sampler, quality: ImageQuality, *, n: int, seed: int,
                 labels: Tensor | None = None, bf16: bool = False, batch_size: int = 500):
        self.module, self.sampler, self.quality = module, sampler, quality
        self.n, self.seed, self.labels, self.bf16, self.batch_size = n, seed, labels, bf16, batch_size

    def samples(self, levels: list[float]) -> Tensor:
        sampler = self.sampler.replace(spacing="optimized", levels=levels)
        generator = torch.Generator().manual_seed(self.seed)
        chunks = []
        for start in range(0, self.n, self.batch_size):
            count = min(self.batch_size, self.n - start)
            labels = None if self.labels is None else self.labels[start : start + count]
            chunks.append(self.module.sample(count, labels=labels, sampler=sampler, generator=generator, bf16=self.bf16))
        return torch.cat(chunks)

    def __call__(self, levels: list[float]) -> float:
        self.quality.update_fake(self.samples(levels))
        try:
            return float(self.quality.compute()["fid"])
        finally:
            self.quality.reset_fake()


def training_reference(feature: torch.nn.Module, train_images: Tensor, seed: int, device=None) -> ImageQuality:
    """The objective's reference: up to ``REFERENCE_IMAGES`` training images (a seeded subset) in ``feature``. Its
    figures are this process's alone (``local``): in a multi-process run one rank searches while the others wait."""
    quality = ImageQuality(feature, kid_subsets=1, local=True)
    if device is not None:
        quality.to(device)
    pick = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(seed))[:REFERENCE_IMAGES]
    quality.update_real(train_images[pick])
    return quality


def search_levels(objective: SampleQuality, schedule, *, evaluations: int = 30, seconds: float | None = None,
                  others: list[list[float]] = ()) -> tuple[SearchResult, float]:
    """Search the levels of ``objective.sampler`` from its Karras levels, or from the best of ``others`` (levels
    searched before: ``searched_before``) where one is better; returns the result and the seconds spent.
    ``seconds``: a time budget; no evaluation starts that would end after it at the mean pace so far (the first,
    the Karras levels', always runs).
    The levels stay above the schedule's sigma_min; the first stays at sigma_max (measured: letting it move too spent
    the same budget for a worse optimum at 4 NFE, FID 1.40 against 1.09 on the default model)."""
    start = objective.sampler.replace(spacing="karras").sigmas(schedule)[:-1].tolist()
    began, done = time.perf_counter(), []

    def counted(levels: list[float]) -> float:
        done.append(objective(levels))
        return done[-1]

    def out_of_time() -> bool:
        spent = time.perf_counter() - began
        return spent + spent / max(len(done), 1) > seconds

    result = compass_search(counted, start, evaluations=evaluations, floor=schedule.sigma_min,
                            stop=None if seconds is None else out_of_time, others=others)
    return result, time.perf_counter() - began


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def levels_path(ckpt: str | Path, sampler: Sampler) -> Path:
    """``RUN/checkpoints/last.ckpt`` -> ``RUN/checkpoints/last.dpmpp_2m_sde.nfe4.levels.json`` (``...afs.nfe3...`` for
    the sampler with its analytic first step: other levels for the same NFE)."""
    ckpt = Path(ckpt)
    afs = ".afs" if sampler.analytic_first_step else ""
    return ckpt.with_name(f"{ckpt.stem}.{sampler.name}{afs}.nfe{sampler.nfe}.levels.json")


def search_command(ckpt: str | Path, sampler: Sampler) -> str:
    """The command that searches ``sampler``'s levels for ``ckpt``."""
    first = " --first-step analytic" if sampler.analytic_first_step else ""
    return f"python -m diffusion.tools.search_steps {ckpt} --samplers {sampler.name} --nfe {sampler.nfe}{first}"


def searched_before(ckpt: str | Path, sampler: Sampler, digest: str) -> list[dict]:
    """Levels already searched for these checkpoint bytes (``digest``) with as many levels: this setting's own file
    (so that a search run again, with a smaller budget or another seed, never ends worse than the levels it replaces
    under its own objective) and the other first step's (the analytic first step's 3-NFE levels are 4, as many as the
    plain sampler's at 4 NFE): starts besides Karras' for ``search_levels``, as ``{"file", "levels"}``. A missing,
    unreadable, stale or mismatched file gives none."""
    if sampler.steps < 2:
        return []
    settings = [sampler]
    if sampler.takes_analytic_first_step:
        settings.append(sampler.replace(analytic_first_step=not sampler.analytic_first_step))
    starts = []
    for setting in settings:
        path = levels_path(ckpt, setting)
        try:
            record = json.loads(path.read_text())
            levels = [float(v) for v in record["levels"]]
            fits = record["checkpoint_sha256"] == digest and len(levels) == sampler.steps and centre_fits(record, setting)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if fits:
            starts.append({"file": path.name, "levels": levels})
    return starts


def centre_fits(record: dict, sampler: Sampler) -> bool:
    """A file searched with the analytic first step holds levels for the closed form around the training images' mean
    (``AFS_CENTRE``); one from before the mean (zero-centred, a worse first step) does not fit."""
    return not sampler.analytic_first_step or record.get("analytic_first_step_centre") == AFS_CENTRE


def write_levels(ckpt: str | Path, sampler: Sampler, result: SearchResult, seconds: float, digest: str | None = None,
                 **record) -> Path:
    """The levels file beside ``ckpt``; ``digest``: the checkpoint's SHA-256 taken before the search read it (so
    that a ``last.ckpt`` overwritten during the search is not stamped as the one searched)."""
    path = levels_path(ckpt, sampler)
    payload = {
        "version": LEVELS_VERSION, "checkpoint": Path(ckpt).name, "checkpoint_sha256": digest or file_digest(ckpt),
        "sampler": sampler.name, "steps": sampler.steps, "nfe": sampler.nfe, "analytic_first_step": sampler.analytic_first_step,
        **({"analytic_first_step_centre": AFS_CENTRE} if sampler.analytic_first_step else {}),
        "levels": result.levels,
        "objective": {"karras": result.start_value, "searched": result.value}, "evaluations": result.evaluations,
        "search_seconds": round(seconds, 2), **record,
        "history": [{"levels": levels, "objective": value} for levels, value in result.history],
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


def read_levels(ckpt: str | Path, sampler: Sampler) -> list[float] | None:
    """The levels searched for this checkpoint, sampler and NFE, or None where no file is there; a file written for
    another version of the checkpoint (``last.ckpt`` overwritten since) is refused in one line."""
    path = levels_path(ckpt, sampler)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        levels, digest = record["levels"], record["checkpoint_sha256"]
        first = bool(record.get("analytic_first_step", False))  # files from before it: the network's first step
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(f"cannot read {path} ({err}); delete it and search again") from None
    if first and not centre_fits(record, sampler):
        raise ConfigError(f"{path} holds levels searched for the zero-centred analytic first step of an earlier version; "
                          f"delete it and search again: {search_command(ckpt, sampler)}")
    if first != sampler.analytic_first_step or record.get("steps", sampler.steps) != sampler.steps:
        raise ConfigError(f"{path} holds levels for another sampler setting (steps {record.get('steps')}, analytic first step "
                          f"{first}); delete it and search again: {search_command(ckpt, sampler)}")
    if digest != file_digest(ckpt):
        raise ConfigError(f"{path} was searched for another version of {Path(ckpt).name} (the file changed since); "
                          f"search again: {search_command(ckpt, sampler)}")
    return levels


def with_searched_levels(sampler: Sampler, ckpt: str | Path) -> Sampler:
    """``sampler`` with the levels searched for ``ckpt`` when its spacing is ``optimized`` (one line naming the
    command that searches them where there are none); other spacings pass through."""
    if sampler.spacing != "optimized" or sampler.levels is not None:
        return sampler
    levels = read_levels(ckpt, sampler)
    if levels is None:
        raise ConfigError(f"no levels searched for {Path(ckpt).name} with {sampler.name} at NFE {sampler.nfe} "
                          f"({levels_path(ckpt, sampler).name}): run {search_command(ckpt, sampler)}, or use spacing=karras")
    return sampler.replace(levels=levels)
