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

    def __init__(self, what: str, key: str, fallback=None) -> None:
        """``fallback(name)``: an entry for a name that is not registered (e.g. any timm ViT by its timm name), or
        None; it is cached, not registered (``names()`` and the contract tests list registered entries only)."""
        self.what, self.key, self.fallback = what, key, fallback
        self._entries: dict[str, T] = {}
        self._fallbacks: dict[str, T] = {}

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
        """The entry ``name`` (or the fallback's for it); an unknown name is a ConfigError naming ``key`` (default:
        the registry's) and the valid choices."""
        if name in self._entries:
            return self._entries[name]
        if self.fallback is not None and name not in self._fallbacks:
            entry = self.fallback(str(name))
            if entry is not None:
                self._fallbacks[str(name)] = entry
        if name in self._fallbacks:
            return self._fallbacks[name]
        close = difflib.get_close_matches(str(name), self.names(), n=2, cutoff=0.5)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ConfigError(f"{key or self.key}={name!r} is not a registered {self.what}; "
                          f"choose one of {', '.join(self.names())}{hint}")

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names()]

