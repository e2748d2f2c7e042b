"""Noise levels searched for one trained model, sampler and NFE (``spacing: optimized``).

A few-step sampler's quality depends on where its few evaluations sit. Karras et al.'s rho = 7 levels end at the
schedule's sigma_min, so at 3-4 NFE one of the evaluations is spent at a level where D(x, sigma) ~ x; where the
others should go depends on the model and the data. Align Your Steps (Sabour et al. 2024) moves one level at a
time to the best of a few candidates around it, under a bound on the discretisation error; GITS and LD3 search
against a teacher's trajectory. Here the objective is the quality of the samples themselves, as in Watson et al.
2022 (DDSS, "Learning fast samplers for diffusion models by differentiating through sample quality"): the caller
passes a function of the levels (the FID of n samples against the training images, built in
``evaluation.searched_levels``), and ``compass_search`` moves one level at a time in log sigma (compass search, Kolda,
Lewis & Torczon 2003, section 3): a move that lowers the objective is kept, a sweep without one halves the step.
The first level (sigma_max, where the starting noise is drawn) and the final 0 stay fixed, the levels stay in
descending order and above ``floor``.

The objective is evaluated with common random numbers (the same starting noise, labels and sampler noise for every
candidate), so two candidates differ by their levels only and the search is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from diffusion.core.errors import ConfigError


@dataclass
class SearchResult:
    """The best levels found (descending, without the final 0), their objective, and the path that led there."""

    levels: list[float]
    value: float
    start_value: float
    evaluations: int
    history: list[tuple[list[float], float]] = field(default_factory=list)
    stopped: bool = False  # ended by ``stop`` (a time budget), not by its evaluations or its step


def check_levels(levels: Sequence[float], steps: int | None = None) -> list[float]:
    """Noise levels a sampler may walk: positive finite numbers in strictly descending order (the final 0 is the
    sampler's), ``steps`` of them when given."""
    try:
        values = [float(v) for v in levels]
    except (TypeError, ValueError):
        raise ConfigError(f"sampler levels {levels!r} must be a list of numbers") from None
    if steps is not None and len(values) != steps:
        raise ConfigError(f"{len(values)} searched levels for a sampler with steps={steps}: search again for this NFE")
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"sampler levels {values} must be positive finite numbers")
    if any(a <= b for a, b in zip(values, values[1:], strict=False)):
        raise ConfigError(f"sampler levels {values} must be in strictly descending order")
    return values


def compass_search(
    objective: Callable[[list[float]], float],
    start: Sequence[float],
    *,
    evaluations: int = 30,
    step: float = 0.7,
    min_step: float = 0.05,
    floor: float | None = None,
    stop: Callable[[], bool] | None = None,
    others: Sequence[Sequence[float]] = (),
) -> SearchResult:
    """Minimise ``objective(levels)`` over the levels after the first, one at a time, in log sigma.

    Args:
        objective: lower is better; called with a descending list of levels (as many as ``start``).
        start: the levels to start from (usually the Karras ones); the first stays where it is.
        evaluations: the budget: calls of ``objective``, the one at ``start`` included.
        step: the first move in log sigma (0.7: a factor of about 2).
        min_step: stop when the step has been halved below this.
        floor: the lowest level allowed (default: none below the start's lowest / 10).
        stop: asked before each evaluation after the first; True ends the search there (a time budget).
        others: more starting points (as many levels, the same first), each evaluated once after ``start``; the
            search goes on from the best. ``start``'s value stays the result's ``start_value``.
    """
    levels = check_levels(start)
    if evaluations < 1:
        raise ConfigError(f"the search needs at least 1 evaluation, got {evaluations}")
    logs = [math.log(v) for v in levels]
    low = (math.log(floor) if floor is not None else logs[-1] - math.log(10.0)) - 1e-9  # the floor itself allowed
    best = float(objective(levels))
    result = SearchResult(list(levels), best, best, 1, [(list(levels), best)])
    for other in others:
        other = check_levels(other, len(levels))
        if other[0] != levels[0] or result.evaluations >= evaluations:
            continue
        if stop is not None and stop():
            result.stopped, evaluations = True, result.evaluations
            break
        value = float(objective(other))
        result.evaluations += 1
        result.history.append((other, value))
        if value < result.value:
            logs, result.levels, result.value = [math.log(v) for v in other], other, value
    while step >= min_step and result.evaluations < evaluations:
        moved = False
        for i in range(1, len(logs)):
            for direction in (1.0, -1.0):
                if result.evaluations >= evaluations:
                    break
                if stop is not None and stop():
                    result.stopped, evaluations = True, result.evaluations  # ends the sweep and the search
                    break
                trial = list(logs)
                trial[i] += direction * step
                upper = trial[i - 1]
                lower = trial[i + 1] if i + 1 < len(trial) else low
                if not lower < trial[i] < upper:
                    continue
                candidate = list(result.levels)  # the levels not moved stay exactly as they were
                candidate[i] = math.exp(trial[i])
                value = float(objective(candidate))
                result.evaluations += 1
                result.history.append((candidate, value))
                if value < result.value:
                    logs, result.levels, result.value, moved = trial, candidate, value, True
                    break
        if not moved:
            step /= 2
    return result
