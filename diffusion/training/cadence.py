"""When the work outside training steps happens: validation, sample grids, FID, checkpoints.

Every cadence is counted in optimizer steps, never in epochs: an epoch is 16 steps on a 1,780-image folder
at batch 100 and 445 on the 57,000 procedural sprites at batch 128, so an epoch cadence that suits one data
set measures FID 45 times a run on the other. A cadence is ``every_n_steps`` (a fixed interval) or a
``fraction`` of the run's length (``trainer.max_steps``, or Lightning's estimate from ``max_epochs``): 0.5
is twice a run, whatever the data. The last step always gets each of them.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, open_dict

from diffusion.core.errors import ConfigError


def interval(every_n_steps: int | None, fraction: float | None, total_steps: int | float | None, name: str) -> int:
    """Steps between two events; 0 means never. ``every_n_steps`` wins over ``fraction``."""
    if every_n_steps is not None:
        if not (isinstance(every_n_steps, int) and every_n_steps >= 0):
            raise ConfigError(f"{name}.every_n_steps={every_n_steps} must be a whole number of steps >= 0 (0: never)")
        return every_n_steps
    if fraction is None or fraction == 0:
        return 0
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ConfigError(f"{name}.fraction={fraction} must be a share of the run in (0, 1] (0.1: ten times a run)")
    if total_steps is None or not math.isfinite(total_steps) or total_steps <= 0:
        raise ConfigError(f"{name}.fraction needs the run's length: set trainer.max_steps, or give {name}.every_n_steps")
    return max(1, round(fraction * total_steps))


def crossed(previous_step: int, step: int, every: int) -> bool:
    """Whether a multiple of ``every`` lies in (previous_step, step]: the event is due at ``step`` when the
    checks come at other intervals (validations every 30 steps, grids every 50: grids at 60, 120, 150)."""
    return every > 0 and step // every > previous_step // every


def run_length(trainer) -> float:
    """The run's length in optimizer steps: ``max_steps``, else Lightning's estimate from ``max_epochs``."""
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return trainer.max_steps
    return trainer.estimated_stepping_batches


class Cadence:
    """A callback's schedule: ``due(trainer)`` at the checks (validations, training steps) where a multiple
    of the interval was crossed since the last event, and at the run's last step or epoch."""

    def __init__(self, every_n_steps: int | None, fraction: float | None, name: str):
        self.every_n_steps, self.fraction, self.name = every_n_steps, fraction, name
        interval(every_n_steps, fraction, 1, name)  # a bad value fails at construction, not mid-run
        self.every: int | None = None  # resolved when training starts
        self.previous_step = 0
        self.restored = False  # previous_step came from a checkpoint: a resumed run keeps the one it had

    @property
    def off(self) -> bool:
        return self.every_n_steps == 0 or (self.every_n_steps is None and not self.fraction)

    def start(self, trainer) -> None:
        """Resolve the interval against the run, counting from the step reached (or, resumed, from the last event)."""
        self.every = interval(self.every_n_steps, self.fraction, run_length(trainer), self.name)
        if not self.restored:
            self.previous_step = trainer.global_step

    def due(self, trainer) -> bool:
        if self.off or trainer.sanity_checking:
            return False
        if self.every is None:
            self.start(trainer)
            self.previous_step = -1  # validation without training (trainer.validate): measure now
        step = trainer.global_step
        last_step = trainer.max_steps is not None and trainer.max_steps > 0 and step >= trainer.max_steps
        last_epoch = trainer.max_epochs is not None and trainer.max_epochs > 0 and trainer.current_epoch + 1 >= trainer.max_epochs
        return step > self.previous_step and (crossed(self.previous_step, step, self.every) or last_step or last_epoch)

    def done(self, trainer) -> None:
        self.previous_step = trainer.global_step

    # In the owning callback's checkpoint state: an event due since the last one is still due after a resume.
    def state_dict(self) -> dict[str, int]:
        return {"previous_step": self.previous_step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.previous_step, self.restored = int(state["previous_step"]), True


def apply_validation_cadence(cfg: DictConfig) -> None:
    """Turn ``validation.every_n_steps`` / ``validation.fraction`` into Lightning's step-counted validation
    (``trainer.val_check_interval`` steps, counted across epochs: ``check_val_every_n_epoch=None``).

    With neither set, or with a fraction and no ``trainer.max_steps``, Lightning's own settings stay."""
    node = cfg.get("validation")
    if node is None:
        return
    max_steps = cfg.trainer.get("max_steps", -1)
    if node.get("every_n_steps") is None and (not node.get("fraction") or max_steps is None or max_steps <= 0):
        return
    steps = interval(node.get("every_n_steps"), node.get("fraction"), max_steps, "validation")
    with open_dict(cfg):
        if steps == 0:
            cfg.trainer.limit_val_batches = 0
        else:
            cfg.trainer.val_check_interval = steps
            cfg.trainer.check_val_every_n_epoch = None
