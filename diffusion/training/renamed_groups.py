"""Config groups renamed so that their names say what they hold, their old names kept for one release.

``model`` held the network's settings beside ``module``, the LightningModule: it is ``network`` now; ``metrics``
held the settings of the FID feature network: it is ``fid_features``. On the command line an override of an old name (``model=large``, ``model.base_channels=48``, ``+model.width=4``,
``~model.dropout``) is rewritten to the new one, with one line saying so; a checkpoint's stored config is
upgraded the same way when it is read (``training.checkpoints.stored_config``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence

RENAMED_GROUPS = {"model": "network", "metrics": "fid_features"}
# Keys below a group that moved (the FID callback's one sampler became the `default` entry of a mapping): only
# named in the error for a stale override, as their old settings cannot all be carried over by a rename.
MOVED_KEYS = {"callbacks.fid.sampler": "callbacks.fid.samplers.default"}

_OVERRIDE = re.compile(r"^(~|\+\+|\+)?([A-Za-z_]\w*)(?=[.=@]|$)")


def renamed_overrides(args: Sequence[str], note: Callable[[str], None] | None = None) -> list[str]:
    """``args`` with every override of a renamed group (or of a key below it) written with the new name; ``note``
    (by default a line on stderr) hears once per old name what to write instead."""
    note = note or (lambda line: print(line, file=sys.stderr))
    noted: set[str] = set()
    out = []
    for arg in args:
        match = _OVERRIDE.match(arg)
        old = match.group(2) if match else None
        if old in RENAMED_GROUPS:
            new = RENAMED_GROUPS[old]
            arg = f"{match.group(1) or ''}{new}{arg[match.end():]}"
            if old not in noted:
                note(f"note: the config group {old} is now {new} ({arg}); {old}= is still read, for one release")
                noted.add(old)
        out.append(arg)
    return out


def renamed_keys(config: dict) -> dict:
    """A stored config's top-level keys in today's names (a checkpoint written before the renames)."""
    return {RENAMED_GROUPS.get(key, key) if RENAMED_GROUPS.get(key) not in config else key: value for key, value in config.items()}


def renamed_hint(key: str) -> str | None:
    """What to write instead of an override or defaults entry ``key`` that Hydra could not place because its group
    or key was renamed (``model.base_channels``, ``override /model: large``, ``callbacks.fid.sampler.steps``)."""
    key = key.lstrip("~+/")
    group = re.split(r"[.=@/]", key, maxsplit=1)[0]
    if group in RENAMED_GROUPS:
        return f"the group {group} is now {RENAMED_GROUPS[group]}: write {RENAMED_GROUPS[group]}{key[len(group):]}"
    for old, new in MOVED_KEYS.items():
        if key == old or key.startswith(old + "."):
            return f"{old} is now {new}: write {new}{key[len(old):]}"
    return None
