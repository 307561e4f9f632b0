"""Named registries, one per extension axis (methods, backbones, mask strategies, decoders, degradations).

Adding an entry is one ``register`` call; config validation, the CLI's choices and the error for an unknown name
all read the registry, so a new entry is usable by name everywhere at once.
"""
from __future__ import annotations

import difflib
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override names an unknown key or an invalid value."""


class Registry(Generic[T]):
    """name -> object (a class or a factory). ``key`` is the config key that selects an entry, used in errors."""

    def __init__(self, what: str, key: str) -> None:
        self.what, self.key = what, key
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, replace: bool = False):
        """``REG.register("name", obj)`` or ``@REG.register("name")`` on a class or function."""

        def add(o: T) -> T:
            if name in self._entries and not replace:
                raise ValueError(f"{self.what} {name!r} is already registered (pass replace=True to override)")
            self._entries[name] = o
            return o

        return add(obj) if obj is not None else add

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str, key: str | None = None) -> T:
        """The entry ``name``; an unknown name is a ConfigError naming ``key`` (default: the registry's) and the
        valid choices."""
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self.names(), n=2, cutoff=0.5)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise ConfigError(f"{key or self.key}={name!r} is not a registered {self.what}; "
                              f"choose one of {', '.join(self.names())}{hint}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names()]

