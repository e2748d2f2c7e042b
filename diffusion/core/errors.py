"""User-facing errors: raised for bad input, reported by the entry points as one line."""


class ConfigError(ValueError):
    """A setting, a data file or a checkpoint the user gave cannot be used.

    The message names the problem and the fix; entry points print it alone, without a traceback.
    """


class TrainingDiverged(ConfigError):
    """The loss stayed non-finite; raised instead of letting NaN weights reach a checkpoint."""
