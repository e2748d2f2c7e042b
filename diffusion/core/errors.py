"""User-facing errors: raised for bad input, reported by the entry points as one line."""

from __future__ import annotations

import sys


class ConfigError(ValueError):
    """A setting, a data file or a checkpoint the user gave cannot be used.

    The message names the problem and the fix; entry points print it alone, without a traceback.
    """


class TrainingDiverged(ConfigError):
    """The loss stayed non-finite; raised instead of letting NaN weights reach a checkpoint."""


def warn_inexact_resume(reason: str, rank: int = 0) -> None:
    """One line on stderr, from the first process only: a resume that cannot reproduce the uninterrupted run, and why."""
    if rank == 0:
        print(f"warning: this resume is not exact: {reason}", file=sys.stderr)
