"""The one validation pass: a composed config against its declared schema (``diffusion.tools.config_schema``).

``check_config`` raises ``ConfigError("<key>=<value> must be <kind>; set e.g. <key>=<example>")`` for the first
key of the wrong type or out of range, and ``<key> is not a setting of <group>; did you mean ...`` for a key a
closed group does not declare (how a group is closed or open, and why a table rather than Hydra structured
configs: ``diffusion.tools.config_types``). ``strict=True`` treats every group as closed, and a class without
a declared group as an error: the tests use it to prove every key of the default configs is declared.

The config is read once as plain dicts and lists, unresolved (``OmegaConf.to_container(resolve=False)``):
interpolations stay as their ``${...}`` text and are skipped, and the walk costs well under a millisecond.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from diffusion.core.errors import ConfigError
from diffusion.tools.config_types import OPEN, ByTarget, Either, Kind, Node, is_reference


def _show(value: Any) -> str:
    """A value as the message quotes it: strings in quotes (so '32' and 32 differ), null as null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{...}"
    return repr(value) if isinstance(value, str) else str(value)


def _unknown(key: str, path: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {path + '.' if path else ''}{close[0]}?" if close else f"known: {', '.join(sorted(known))}"
    return ConfigError(f"{path + '.' if path else ''}{key} is not a setting of {path or 'this command'}; {hint} (check the spelling)")


def _pick(spec: Node | ByTarget, cfg: Mapping[str, Any], full: str, strict: bool) -> Node:
    if isinstance(spec, Node):
        return spec
    node = spec.pick(cfg)
    if strict and node is OPEN:
        raise ConfigError(f"{full}._target_={cfg.get('_target_')} has no declared settings in diffusion.tools.config_schema")
    return node


def _check_node(cfg: Mapping[str, Any], node: Node, path: str, open_: bool, strict: bool) -> None:
    open_ = not strict and (open_ or not node.closed(cfg))
    for key, value in cfg.items():
        full = f"{path}.{key}" if path else str(key)
        spec = node.keys.get(key, node.each)
        if spec is None:
            if open_:
                continue
            raise _unknown(key, path, list(node.keys))
        if not is_reference(value):
            check_value(value, spec, full, open_, strict)


def check_value(value: Any, spec: Kind | Node | ByTarget, full: str, open_: bool = False, strict: bool = False) -> None:
    """Check one plain value against its declaration; raise the one-line ConfigError naming ``full``."""
    if isinstance(spec, (Node, ByTarget)):
        if value is None and spec.null:
            return
        if not isinstance(value, dict):
            raise ConfigError(f"{full}={_show(value)} must be a group of settings; set its keys as {full}.KEY=VALUE")
        _check_node(value, _pick(spec, value, full, strict), full, open_, strict)
        return
    nodes = [kind for kind in spec.kinds if isinstance(kind, Node)] if isinstance(spec, Either) else []
    if isinstance(value, dict) and nodes:  # an object's node (a Lightning strategy or profiler with its _target_)
        _check_node(value, nodes[0], full, open_, strict)
        return
    if isinstance(value, list) and any(is_reference(item) for item in value):
        return  # a list with interpolated items: they are checked where they point to
    problem = spec.problem(value)
    if problem is not None:
        raise ConfigError(f"{full}={_show(value)} {problem}; set e.g. {full}={spec.example()}")


def plain(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The config as dicts and lists, interpolations unresolved."""
    return OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else dict(cfg)


def check_config(cfg: DictConfig | Mapping[str, Any], schema: Node, strict: bool = False) -> None:
    """Check every key of a composed config against ``schema``."""
    _check_node(plain(cfg), schema, "", False, strict)


def sites(cfg: Mapping[str, Any], node: Node, path: str = "") -> Iterator[tuple[str, Kind]]:
    """(key, kind) of every declared leaf this (plain) config has or could be given (``+key=value``), for the
    tests: a group the config holds is entered; one it lacks (``training.method`` without experiment=ect) is not."""
    names = list(node.keys) + ([k for k in cfg if k not in node.keys] if node.each is not None else [])
    for key in names:
        spec, full, value = node.keys.get(key, node.each), f"{path}.{key}" if path else key, cfg.get(key)
        if isinstance(spec, (Node, ByTarget)):
            if isinstance(value, dict):
                yield from sites(value, _pick(spec, value, full, strict=False), full)
        elif not isinstance(value, dict):
            yield full, spec
