"""Entry-point plumbing: bad input ends as one line on stderr and exit status 2, not a traceback."""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Callable

from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from diffusion.core.errors import ConfigError
from diffusion.training.renamed_groups import renamed_hint


def wandb_mode() -> str:
    """W&B logs live only when asked (WANDB_MODE) or when an API key is set; otherwise offline, never prompting."""
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


OmegaConf.register_new_resolver("wandb_mode", wandb_mode, replace=True)


def optuna_seed(seed: int, storage: str | None, study_name: str) -> int:
    """The sampler seed of an Optuna search moved on by the trials its study already holds, so that a continued
    search (the same command on the same sqlite storage) draws new start-up trials instead of the first
    session's again; the same study state always gives the same seed."""
    if not storage:
        return int(seed)
    import optuna

    try:
        return int(seed) + len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:  # no such study yet
        return int(seed)


OmegaConf.register_new_resolver("optuna_seed", optuna_seed, replace=True)


def _user_error(err: BaseException) -> str | None:
    """The one-line message of a user error, looking through the wrappers Hydra puts around it."""
    seen = err
    while seen is not None:
        if isinstance(seen, ConfigError):
            return str(seen)
        if isinstance(seen, MissingMandatoryValue):
            return f"missing required setting {getattr(seen, 'full_key', '') or seen}; pass it on the command line as KEY=VALUE"
        if isinstance(seen, OmegaConfBaseException):
            # OmegaConf's message is several lines (the message, then full_key and object_type): keep the first,
            # naming the key where the first line does not
            first, key = (str(seen).splitlines() or [type(seen).__name__])[0], getattr(seen, "full_key", None)
            return f"{key}: {first}" if key and str(key) not in first else first
        seen = seen.__cause__ or seen.__context__
    return None


def integer_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type=`` for the argparse tools: an integer >= ``low``; argparse reports anything else as
    ``error: argument --n: ...`` with its usage line and exit status 2."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give a whole number >= {low}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be an integer >= {low}")
        return value

    return parse


def share(text: str) -> float:
    """An argparse ``type=`` for a share of something: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a share in (0, 1], e.g. 0.05") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value} must be a share in (0, 1], e.g. 0.05")
    return value


def check_settings(cfg, command: str) -> None:
    """Every key of ``command``'s composed config against its declared type and range
    (``diffusion.tools.config_schema``), before any work starts; a bad one raises the one-line ConfigError."""
    from diffusion.tools.config_check import check_config
    from diffusion.tools.config_schema import SCHEMAS

    check_config(cfg, SCHEMAS[command])


def reports_user_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised unless it is the user's input
            message = _user_error(err)
            if message is None:
                raise
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def _composition_error(err: BaseException) -> str:
    """One line for a Hydra config-composition error: an unknown option, key or malformed override."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(err, OverrideParseException):
        return f"cannot parse the override {err.override!r}: {str(err).splitlines()[0]}; write KEY=VALUE or GROUP=OPTION"
    options = getattr(err, "options", None)
    missing = getattr(err, "missing_cfg_file", None)
    if isinstance(err, MissingConfigException) and options and missing and "/" in missing:
        group, name = missing.rsplit("/", 1)
        return f"unknown option {group}={name}; choose one of {', '.join(options)}"
    lines = []
    stale = re.search(r"Could not override '([^']+)'", str(err))
    hint = renamed_hint(stale.group(1)) if stale else None
    if hint:  # an old group name in a user's own config file (`override /model: large`) or a key that moved
        return f"{str(err).splitlines()[0].rstrip('.')}; {hint}"
    for line in str(err).splitlines():
        if line.strip().startswith(("Config search path", "See https://hydra.cc")):
            break
        if line.strip():
            lines.append(line.strip())
    return " ".join(lines) or type(err).__name__


def run_hydra_main(main: Callable[[], object]) -> object:
    """Call a ``@hydra.main`` entry point so that a config-composition error (``sampler=nope``, an unknown
    key, a malformed override), which Hydra reports before the task function runs, also ends as one
    ``error:`` line and exit status 2 instead of Hydra's multi-line report and status 1."""
    from hydra.errors import ConfigCompositionException, OverrideParseException

    user_setting = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing and exiting: we report it below
    try:
        return main()
    except (ConfigCompositionException, OverrideParseException) as err:
        if user_setting == "1":
            raise
        print(f"error: {_composition_error(err)}", file=sys.stderr)
        sys.exit(2)
    finally:
        if user_setting is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = user_setting
