"""The kinds of value a config key may hold (type, range, choices), and the groups (nodes) that hold them.

Every user-facing key of the Hydra configs is declared once in ``diffusion.tools.config_schema`` as one of these
kinds; ``diffusion.tools.config_check`` walks the composed config before any work starts (no data generated, no
model built, no run directory touched) and raises ``ConfigError("<key>=<value> must be <kind>; set e.g. <key>=<example>")``,
which the entry points print as one ``error:`` line with exit status 2 (``diffusion.tools.cli``).

Why a declared table checked at start-up rather than Hydra structured configs (dataclasses in the ConfigStore
that the yaml files extend through their defaults lists, as in Hydra 1.3's "Structured Config schema" tutorial):

- a dataclass field declares a type, not a range or a set of names: ``trainer.max_steps=-5`` or
  ``sampler.spacing=nope`` would pass it, so a second, range-checking pass was needed anyway;
- OmegaConf's ``ValidationError`` is several lines (message, ``full_key``, ``object_type``) and is raised while
  Hydra composes, before the entry point can word it as ``<key>=<value> ...; <fix>``;
- a group whose ``_target_`` names a user's class must accept that class's own keys; one schema a yaml file
  cannot switch between open and closed by the value of ``_target_``;
- every yaml file would gain a defaults entry, where here the yaml files stay as they are.

A node is ``closed`` (unknown keys are errors, naming the closest known key) when the key that picks its code
(``_target_``, or a sampler's ``fn``) names one of the framework's classes listed with it; a user's class leaves
the node open: its own keys pass, the keys the schema declares are still checked. Values written as
interpolations (``${paths.output_dir}``, ``${seed}``) are not checked where they are used: the key they point to
is checked itself. ``bad_values()`` of each kind lists values it must reject, so tests derive their cases from
the schema rather than from a hand-written list.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_reference(value: Any) -> bool:
    """An interpolation (``${seed}``, ``${paths.output_dir}/x``) or a missing value (``???``) of a config read
    without resolving: checked where it points to, or reported by the command that needs it."""
    return isinstance(value, str) and ("${" in value or value == "???")


class Kind:
    """A leaf's declared type and range. ``problem`` is None for an accepted value."""

    null: bool = False

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def example(self) -> str:
        raise NotImplementedError

    def bad_values(self) -> list[Any]:
        """Values of the wrong type or outside the range, read off the declaration."""
        raise NotImplementedError

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.null else f"must be {self.describe()}, not null"
        return None if self.accepts(value) else f"must be {self.describe()}"

    def _or_null(self, text: str) -> str:
        return f"{text} or null" if self.null else text

    def _null_bad(self) -> list[Any]:
        return [] if self.null else [None]


@dataclass(frozen=True)
class Int(Kind):
    """An integer in [min, max]; ``also``: values allowed outside the range (Lightning's -1: no limit)."""

    min: int | None = None
    max: int | None = None
    also: tuple[int, ...] = ()
    null: bool = False
    hint: str | None = None  # the example the message gives, where the range's end is a poor one

    def accepts(self, value: Any) -> bool:
        if not _is_int(value):
            return False
        return value in self.also or ((self.min is None or value >= self.min) and (self.max is None or value <= self.max))

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            text = f"an integer in [{self.min}, {self.max}]"
        elif self.min == 1:
            text = "a positive integer"
        elif self.min is not None:
            text = f"an integer >= {self.min}"
        elif self.max is not None:
            text = f"an integer <= {self.max}"
        else:
            text = "an integer"
        text += "".join(f" or {v}" for v in self.also)
        return self._or_null(text)

    def example(self) -> str:
        return self.hint or str(self.min if self.min is not None else (self.max if self.max is not None else 0))

    def bad_values(self) -> list[Any]:
        bad: list[Any] = ["abc", 1.5, True, [1]]
        if self.min is not None:
            bad += [v for v in dict.fromkeys((self.min - 1, 0, -1, -7)) if v < self.min and v not in self.also]
        if self.max is not None:
            bad.append(self.max + 1)
        return bad + self._null_bad()


@dataclass(frozen=True)
class Float(Kind):
    """A finite number (an integer is accepted too) between ``low`` and ``high``, each end open or closed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    null: bool = False
    infinite: bool = False  # +inf accepted (a sampler's s_tmax)
    hint: str | None = None

    def accepts(self, value: Any) -> bool:
        if not _is_number(value) or math.isnan(value) or (math.isinf(value) and not (self.infinite and value > 0)):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            text = f"a number in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low == 0 and self.low_open:
            text = "a positive number"
        elif self.low is not None:
            text = f"a number {'>' if self.low_open else '>='} {self.low:g}"
        else:
            text = "a number"
        return self._or_null(text)

    def example(self) -> str:
        if self.hint:
            return self.hint
        if self.low is not None and self.high is not None:
            return f"{(self.low + self.high) / 2:g}"
        return f"{(self.low or 0) + (1 if self.low_open or self.low is None else 0):g}"

    def bad_values(self) -> list[Any]:
        bad: list[Any] = ["abc", True, [1.0], math.nan]
        if self.low is not None:
            bad.append(self.low - 1.0)
            bad += [self.low] if self.low_open else []
            bad += [-1.0] if -1.0 < self.low else []  # a negative
            bad += [0.0] if 0.0 < self.low or (self.low_open and self.low == 0) else []  # zero where out of range
        if self.high is not None:
            bad += [self.high + 1.0] + ([self.high] if self.high_open else [])
        return bad + self._null_bad()


@dataclass(frozen=True)
class Bool(Kind):
    null: bool = False

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return self._or_null("true or false")

    def example(self) -> str:
        return "true"

    def bad_values(self) -> list[Any]:
        return ["maybe", 2, [True]] + self._null_bad()


@dataclass(frozen=True)
class Str(Kind):
    """Free text: a path, a name, a class path. A number is taken as its text (``out=123`` is a folder)."""

    null: bool = False

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) or _is_number(value)

    def describe(self) -> str:
        return self._or_null("a single value (text, a path)")

    def example(self) -> str:
        return "NAME"

    def bad_values(self) -> list[Any]:
        return [["a", "b"], {"a": 1}, True] + self._null_bad()


@dataclass(frozen=True)
class Choice(Kind):
    """One of a few names. Compared as text: ``precision=32`` arrives as the integer 32 and matches "32".
    ``names`` may be a function, for a list known only at run time (Lightning's registered strategies)."""

    names: tuple[str, ...] | Callable[[], tuple[str, ...]] = ()
    null: bool = False

    def options(self) -> tuple[str, ...]:
        return tuple(self.names()) if callable(self.names) else self.names

    def accepts(self, value: Any) -> bool:
        return (isinstance(value, str) or _is_number(value)) and str(value) in self.options()

    def describe(self) -> str:
        names = self.options()
        return self._or_null(names[0] if len(names) == 1 else f"one of {', '.join(names)}")

    def example(self) -> str:
        return self.options()[0]

    def bad_values(self) -> list[Any]:
        return ["nope", True, ["a"]] + self._null_bad()


@dataclass(frozen=True)
class Pattern(Kind):
    """Text of a given form (``cuda:1``, Lightning's ``devices="0,1"``, ``max_time="00:12:00:00"``)."""

    regex: str = ""
    text: str = ""  # what the form is, for the message
    sample: str = ""  # one value of the form, the message's example
    null: bool = False

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and re.fullmatch(self.regex, value) is not None

    def describe(self) -> str:
        return self._or_null(self.text)

    def example(self) -> str:
        return self.sample

    def bad_values(self) -> list[Any]:
        return ["nope", True, 3.5, ["a"]] + self._null_bad()


@dataclass(frozen=True)
class ListOf(Kind):
    """A list whose every item is ``item``; ``length``: exactly so many items."""

    item: Kind = field(default_factory=Str)
    length: int | None = None
    null: bool = False
    min_length: int = 0

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, (list, tuple)):
            return False
        if (self.length is not None and len(value) != self.length) or len(value) < self.min_length:
            return False
        return all(self.item.accepts(v) for v in value)

    def describe(self) -> str:
        size = f"{self.length} " if self.length is not None else ("" if not self.min_length else f"at least {self.min_length} ")
        return self._or_null(f"a list of {size}items, each {self.item.describe()}")

    def example(self) -> str:
        return "[" + ",".join([self.item.example()] * (self.length or max(self.min_length, 1))) + "]"

    def bad_values(self) -> list[Any]:
        size = self.length or max(self.min_length, 1)
        item_bad = [v for v in self.item.bad_values() if v is not None and not isinstance(v, list)][:1]
        bad: list[Any] = ["abc", item_bad * size]
        if self.length or self.min_length:
            bad.append([])
        return bad + self._null_bad()


@dataclass(frozen=True)
class Either(Kind):
    """Any of several kinds (Lightning's ``devices``: an integer, "auto" or a list of indices); a ``Node`` among
    them takes a group of settings (a Lightning strategy or profiler given as an object with its ``_target_``)."""

    kinds: tuple[Kind | Node, ...] = ()
    null: bool = False

    def _leaves(self) -> list[Kind]:
        return [kind for kind in self.kinds if isinstance(kind, Kind)]

    def accepts(self, value: Any) -> bool:
        return any(kind.accepts(value) for kind in self._leaves())

    def describe(self) -> str:
        texts = [kind.describe() if isinstance(kind, Kind) else "a group of settings" for kind in self.kinds]
        return self._or_null(" or ".join(texts))

    def example(self) -> str:
        return self._leaves()[0].example()

    def bad_values(self) -> list[Any]:
        candidates = [v for kind in self._leaves() for v in kind.bad_values() if v is not None]
        return [v for v in candidates if not self.accepts(v) and not isinstance(v, dict)] + self._null_bad()


@dataclass(frozen=True)
class Anything(Kind):
    """No check: a value the framework passes on untouched (a Lightning profiler object, Hydra's own node)."""

    null: bool = True

    def accepts(self, value: Any) -> bool:
        return True

    def describe(self) -> str:
        return "anything"

    def example(self) -> str:
        return "null"

    def bad_values(self) -> list[Any]:
        return []


@dataclass(frozen=True)
class Node:
    """A group of keys. ``owner`` is the key naming the code the group configures; the node is closed (unknown
    keys rejected) when that value is one of ``closed_for`` (an entry ending in "." is a module prefix), open for
    a user's class. ``each``: the kind of every key not in ``keys`` (a group of callbacks by any name)."""

    keys: Mapping[str, Kind | Node | ByTarget] = field(default_factory=dict)
    owner: str = "_target_"
    closed_for: tuple[str, ...] = ()
    each: Kind | Node | ByTarget | None = None
    null: bool = False
    always_closed: bool = False  # a plain group of settings (training, validation): no owner decides

    def closed(self, cfg: Mapping[str, Any]) -> bool:
        if self.always_closed:
            return True
        name = cfg.get(self.owner)
        if name is None or is_reference(name):
            return False
        return any(str(name) == c or (c.endswith(".") and str(name).startswith(c)) for c in self.closed_for)


@dataclass(frozen=True)
class ByTarget:
    """A node picked by the ``_target_`` of the value (a callback, a logger); another class is a user's: open."""

    nodes: Mapping[str, Node] = field(default_factory=dict)
    null: bool = True

    def pick(self, cfg: Mapping[str, Any]) -> Node:
        target = cfg.get("_target_")
        return OPEN if target is None or is_reference(target) else self.nodes.get(str(target), OPEN)


OPEN = Node({"_target_": Str()})  # a user's class: its own keys pass
