"""The one validation pass: a composed config against its declared schema (``diffusion.tools.config_schema``).

``check_config`` raises ``ConfigError("<key>=<value> must be <kind>; set e.g. <key>=<example>")`` for the first
key of the wrong type or out of range, and ``<key> is not a setting of <group>; did you mean ...`` for a key a
closed group does not declare (how a group is closed or open, and why a table rather than Hydra structured
configs: ``diffusion.tools.config_types``). ``strict=True`` treats every group as closed, and a class without
a declared group as an error: the tests use it to prove every key of the default configs is declared.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from diffusion.core.errors import ConfigError
from diffusion.tools.config_types import OPEN, ByTarget, Either, Kind, Node


def _show(value: Any) -> str:
    """A value as the message quotes it: strings in quotes (so '32' and 32 differ), null as null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, ListConfig):
        try:
            return OmegaConf.to_container(value, resolve=True)
        except Exception:  # noqa: BLE001 - an interpolation only the run can resolve: its target is checked there
            return None
    return {"...": "..."} if isinstance(value, DictConfig) else value


def _unknown(key: str, path: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {path + '.' if path else ''}{close[0]}?" if close else f"known: {', '.join(sorted(known))}"
    return ConfigError(f"{path + '.' if path else ''}{key} is not a setting of {path or 'this command'}; {hint} (check the spelling)")


def _pick(spec: Node | ByTarget, cfg: DictConfig, full: str, strict: bool) -> Node:
    if isinstance(spec, Node):
        return spec
    node = spec.pick(cfg)
    if strict and node is OPEN:
        raise ConfigError(f"{full}._target_={cfg.get('_target_')} has no declared settings in diffusion.tools.config_schema")
    return node


def _check_node(cfg: DictConfig, node: Node, path: str, open_: bool, strict: bool) -> None:
    open_ = not strict and (open_ or not node.closed(cfg))
    for key in map(str, cfg.keys()):
        full = f"{path}.{key}" if path else key
        spec = node.keys.get(key, node.each)
        if spec is None:
            if open_:
                continue
            raise _unknown(key, path, list(node.keys))
        if OmegaConf.is_interpolation(cfg, key) or OmegaConf.is_missing(cfg, key):
            continue  # checked where it points to; a missing value is reported by the command that needs it
        check_value(cfg[key], spec, full, open_, strict)


def check_value(value: Any, spec: Kind | Node | ByTarget, full: str, open_: bool = False, strict: bool = False) -> None:
    """Check one value against its declaration; raise the one-line ConfigError naming ``full``."""
    if isinstance(spec, (Node, ByTarget)):
        if value is None and spec.null:
            return
        if not isinstance(value, DictConfig):
            raise ConfigError(f"{full}={_show(_plain(value))} must be a group of settings; set its keys as {full}.KEY=VALUE")
        _check_node(value, _pick(spec, value, full, strict), full, open_, strict)
        return
    nodes = [kind for kind in spec.kinds if isinstance(kind, Node)] if isinstance(spec, Either) else []
    if isinstance(value, DictConfig) and nodes:  # an object's node (a Lightning strategy or profiler with its _target_)
        _check_node(value, nodes[0], full, open_, strict)
        return
    problem = spec.problem(_plain(value))
    if problem is not None:
        raise ConfigError(f"{full}={_show(_plain(value))} {problem}; set e.g. {full}={spec.example()}")


def check_config(cfg: DictConfig, schema: Node, strict: bool = False) -> None:
    """Check every key of a composed config against ``schema``."""
    _check_node(cfg, schema, "", False, strict)


def sites(cfg: DictConfig, node: Node, path: str = "") -> Iterator[tuple[str, Kind]]:
    """(key, kind) of every declared leaf this config has or could be given (``+key=value``), for the tests: a
    group the config holds is entered; one it lacks (``training.method`` without experiment=ect) is not."""
    names = list(node.keys) + ([str(k) for k in cfg.keys() if str(k) not in node.keys] if node.each is not None else [])
    for key in names:
        spec, full = node.keys.get(key, node.each), f"{path}.{key}" if path else key
        value = cfg.get(key) if key in cfg and not OmegaConf.is_interpolation(cfg, key) else None
        if isinstance(spec, (Node, ByTarget)):
            if isinstance(value, DictConfig):
                yield from sites(value, _pick(spec, value, full, strict=False), full)
        elif not isinstance(value, DictConfig):
            yield full, spec
