"""Entry-point plumbing: bad input ends as one line on stderr and exit status 2, not a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from diffusion.errors import ConfigError


def wandb_mode() -> str:
    """W&B logs live only when asked (WANDB_MODE) or when an API key is set; otherwise offline, never prompting."""
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


OmegaConf.register_new_resolver("wandb_mode", wandb_mode, replace=True)


def _user_error(err: BaseException) -> str | None:
    """The one-line message of a user error, looking through the wrappers Hydra puts around it."""
    seen = err
    while seen is not None:
        if isinstance(seen, ConfigError):
            return str(seen)
        if isinstance(seen, MissingMandatoryValue):
            return f"missing required setting {getattr(seen, 'full_key', '') or seen}; pass it on the command line as KEY=VALUE"
        if isinstance(seen, OmegaConfBaseException):
            return str(seen).splitlines()[0]
        seen = seen.__cause__ or seen.__context__
    return None


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
