"""User-facing errors: raised for bad input, reported by the entry points as one line."""

from __future__ import annotations

import argparse
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


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse for the commands, with a bad argument reported as the entry points report bad settings: one
    ``error:`` line and exit status 2 (argparse prints its usage block first)."""

    def error(self, message: str):
        print(f"error: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)
