"""The checks a key's :class:`mst.settings.Spec` describes: one ``ConfigError`` line naming the key, the value and
what is allowed.

* Types (:func:`check_value`): int keys take integers (an integral float such as 2.0 becomes 2), float keys
  numbers (ints become floats), bool keys true / false, str keys strings, list keys lists of the element type. A
  nullable key also takes null, an ``auto`` key ``"auto"``.
* Ranges and choices (:func:`check_range`, after the types); null and ``"auto"`` are not range-checked.

Registered names (``model.arch``, ``mask.strategy``, ...) are checked by their registries, combinations of keys by
``mst.config.validate`` and each method's ``validate``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from mst.registry import ConfigError

AUTO = "auto"


@dataclass(frozen=True)
class ListOf:
    """A list whose elements are ``item`` (int, float, bool, str; None: anything)."""

    item: type | None


# -------------------------------------------------------------------------------------------------------- types

def kind_of(default: Any) -> type | ListOf | None:
    """The type a default stands for (None: unknown, anything goes)."""
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    if isinstance(default, str):
        return str
    if isinstance(default, (list, tuple)):
        kinds = {kind_of(v) for v in default}
        if kinds == {int, float}:
            return ListOf(float)
        return ListOf(kinds.pop() if len(kinds) == 1 else None)
    return None


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_PLURAL = {int: "integers", float: "numbers", bool: "booleans (true / false)", str: "strings"}


def _describe(kind: type | ListOf, nullable: bool, auto: bool) -> str:
    text = f"a list of {_PLURAL[kind.item]}" if isinstance(kind, ListOf) and kind.item else (
        "a list" if isinstance(kind, ListOf) else _NAMES[kind])
    extra = (["null"] if nullable else []) + (["'auto'"] if auto else [])
    return " or ".join([", ".join([text] + extra[:-1])] + extra[-1:]) if extra else text


def show(value: Any) -> str:
    """A value as messages show it: YAML's null / true / false, else Python's repr."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


class _Bad(Exception):
    pass


def _number_text(value: str) -> float:
    """'1e-3' (YAML 1.1 reads it as a string) -> 0.001; anything else that is not a number -> _Bad."""
    try:
        return float(value)
    except ValueError:
        raise _Bad from None


def _convert(kind: type | None, value: Any) -> Any:
    """``value`` as ``kind`` (int, float, bool, str; None: as it is), or raise _Bad."""
    if kind is None:
        return value
    if kind is bool or kind is str:
        if not isinstance(value, kind):
            raise _Bad
        return value
    if isinstance(value, str):
        value = _number_text(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad
    if isinstance(value, float) and not math.isfinite(value):
        raise _Bad
    if kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise _Bad
            return int(value)
        return value
    return float(value)


def check_value(key: str, value: Any, spec) -> Any:
    """``value`` of ``key`` converted to the key's type (ints of float keys become floats, integral floats of int
    keys ints, '1e-3' a number); a ConfigError naming the key, the value, the type and the default if it has
    another type. ``spec``: the key's :class:`mst.settings.Spec`."""
    kind, default = spec.kind, spec.default
    if kind is None or (value is None and spec.nullable) or (value == AUTO and spec.auto):
        return value
    try:
        if isinstance(kind, ListOf):
            if not isinstance(value, (list, tuple)):
                raise _Bad
            return [_convert(kind.item, v) for v in value]
        return _convert(kind, value)
    except _Bad:
        # "auto" is named where it is the default (elsewhere it is accepted, but not advertised)
        what = _describe(kind, spec.nullable, spec.auto and default == AUTO)
        if kind in (int, float) and isinstance(value, float) and not math.isfinite(value):
            what = f"a finite {'integer' if kind is int else 'number'}"
        raise ConfigError(f"{key}={show(value)} must be {what} (default {show(default)})") from None


# ------------------------------------------------------------------------------------------------------- ranges

def _fmt(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Range:
    """lo <= x <= hi (either end open or absent)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, x: float) -> bool:
        if self.lo is not None and not (x > self.lo if self.lo_open else x >= self.lo):
            return False
        if self.hi is not None and not (x < self.hi if self.hi_open else x <= self.hi):
            return False
        return True

    def __str__(self) -> str:  # "> 0", ">= 1", "in [0, 1)"
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {_fmt(self.lo)}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {_fmt(self.hi)}"
        return f"in {'(' if self.lo_open else '['}{_fmt(self.lo)}, {_fmt(self.hi)}{')' if self.hi_open else ']'}"

    def check(self, key: str, value: Any) -> str | None:
        if value in self:
            return None
        return f"must {'lie' if self.lo is not None and self.hi is not None else 'be'} {self}"


@dataclass(frozen=True)
class Each:
    """A list of ``n`` numbers (any number if None), each in ``range``; ``ordered``: a [low, high] pair."""

    range: Range
    n: int | None = None
    ordered: bool = False
    what: str = ""  # what the elements are, e.g. "global 1, global 2, locals"

    def check(self, key: str, value: list) -> str | None:
        if (self.n is None or len(value) == self.n) and all(v in self.range for v in value) and not (
                self.ordered and value[0] > value[1]):
            return None
        count = {None: "a list of numbers", 2: "two numbers", 3: "three numbers", 4: "four numbers"}.get(
            self.n, f"{self.n} numbers")
        what = f" ({self.what})" if self.what else ""
        if self.ordered:
            return f"must be {count} [low, high] with low <= high{what}, each {self.range}"
        return f"must be {count}{what}, each {self.range}"


@dataclass(frozen=True)
class Rule:
    """Anything else: ``test(value)`` holds, else the message ``must ...``."""

    test: Callable[[Any], bool]
    must: str

    def check(self, key: str, value: Any) -> str | None:
        return None if self.test(value) else f"must {self.must}"


POSITIVE = Range(0, lo_open=True)  # > 0
NON_NEGATIVE = Range(0)  # >= 0
AT_LEAST_1 = Range(1)  # >= 1 (counts, sizes)
PROBABILITY = Range(0, 1)  # [0, 1]
RATIO = Range(0, 1, hi_open=True)  # [0, 1)
SCALE = Each(Range(0, 1, lo_open=True), n=2, ordered=True)  # a crop's share of the image: 0 < low <= high <= 1
SIGMA = Each(POSITIVE, n=2, ordered=True)  # a blur's sigma range: 0 < low <= high

def check_range(key: str, value: Any, spec) -> None:
    """A ConfigError if ``value`` (already of the key's type) is outside the key's range or choices (``spec``: its
    :class:`mst.settings.Spec`); null and ``"auto"`` pass."""
    if value is None or (value == AUTO and spec.auto):
        return
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"{key}={show(value)} is not one of {', '.join(map(str, spec.choices))}")
    problem = spec.range.check(key, value) if spec.range is not None else None
    if problem:
        raise ConfigError(f"{key}={show(value)} {problem}")
