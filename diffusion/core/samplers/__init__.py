"""Samplers as plain functions over a denoiser and a list of noise levels (see ``common``), one family a module.

Found by name without a table: ``by_name("heun")`` is the ``sample_heun`` of whichever module here defines it,
so adding a sampler is adding its function (and its file in ``conf/sampler/``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

PREFIX = "sample_"


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
