"""Samplers as plain functions over a denoiser and a list of noise levels (see ``common``), one family a module.

Found by name without a table: ``by_name("heun")`` is the ``sample_heun`` of whichever module here defines it,
so adding a sampler is adding its function (and its file in ``conf/sampler/``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

PREFIX = "sample_"

# Repeats by design (what `duplicates` pairs across these modules): every sampler spells out the same signature,
# `(denoiser, x, sigmas, *, <its options>, generator=None, callback=None)`, and the same loop head over sigmas.
# The signature is the contract (``common``), as in k-diffusion: each function's own options stay visible to
# ``Sampler``'s option check and to a reader, where a shared wrapper or **kwargs would hide them. Loops that were
# one algorithm are one function (DPM-Solver++(2M) is ``sde.sample_dpmpp_2m_sde`` at eta = 0). The pairs with
# ``evaluation/features.train_feature_net`` are the same shape only: a list of typed keyword defaults.


def all_samplers() -> dict[str, Callable]:
    """Every ``sample_<name>`` function defined in this package's modules, by name."""
    found: dict[str, Callable] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for attr, value in vars(module).items():
            if attr.startswith(PREFIX) and callable(value) and getattr(value, "__module__", None) == module.__name__:
                found[attr.removeprefix(PREFIX)] = value
    return dict(sorted(found.items()))


def by_name(name: str) -> Callable | None:
    return all_samplers().get(name)


def is_stochastic(fn: Callable) -> bool:
    """Whether the sampler draws fresh noise with its default options (see ``common.stochastic``)."""
    return getattr(fn, "stochastic", False)
