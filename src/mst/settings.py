"""One home for every setting: a config section is a frozen dataclass beside the code that owns it, and each field
carries every fact about its key — default, type, range or choices, whether it may be ``auto`` (derived from the
data), whether it may change when a run resumes, its old names, and a one-line doc.

The validator (:mod:`mst.config`), resume (:func:`mst.engine.trainer.config_changes`), ``mst config`` and the
method's step all read these fields; nothing else lists keys.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Probe(Settings, section="probe_doc"):
    ...     scale: float = setting(1.0, "how much", range=POSITIVE)
    >>> spec("probe_doc.scale").range
    Range(lo=0, hi=None, lo_open=True, hi_open=False)
    >>> Probe(scale=2.0)["scale"]  # a section reads like the mapping it replaces
    2.0

A section read by several owners (``degrade``: one key per degradation) is declared key by key with
:func:`declare`; its dataclass is made from the keys (:func:`section_class`).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from mst.config_checks import (AT_LEAST_1, AUTO, NON_NEGATIVE, POSITIVE, PROBABILITY, RATIO, SCALE, SIGMA,  # noqa: F401
                               Each, ListOf, Range, Rule, kind_of)

__all__ = ["Spec", "Settings", "setting", "declare", "spec", "specs", "defaults", "section_class", "old_names",
           "sections", "typed", "AT_LEAST_1", "NON_NEGATIVE", "POSITIVE", "PROBABILITY", "RATIO", "SCALE", "SIGMA",
           "Each", "ListOf", "Range", "Rule"]


@dataclass(frozen=True)
class Spec:
    """Everything about one key. ``kind``: int, float, bool, str or :class:`ListOf` (None: anything);
    ``choices``: the words it takes (names in a registry are checked by the registry instead); ``auto``: it may be
    ``"auto"``, resolved from the data; ``resumable``: a resumed run may change it (it does not change what is
    trained); ``old``: earlier dotted names, still read with a notice."""

    default: Any
    doc: str = ""
    kind: Any = None
    range: Range | Each | Rule | None = None
    choices: tuple | None = None
    auto: bool = False
    nullable: bool = False
    resumable: bool = False
    old: tuple[str, ...] = ()


def make_spec(default: Any, doc: str = "", *, kind: Any = None, range: Any = None, choices=None, auto: bool = False,
              nullable: bool = False, resumable: bool = False, old=(), strict: bool = True) -> Spec:
    """A :class:`Spec`; ``kind`` is the default's type unless given. ``strict``: a default that tells no type
    (None, ``"auto"``, an empty list) must come with ``kind`` (a key's type is always written down)."""
    if kind is None:  # "auto" tells no type unless it is one of the choices
        kind = None if default == AUTO and choices is None else kind_of(default)
    if kind is None and strict and default is not None:
        raise ValueError(f"setting with default {default!r} needs kind= (its default does not tell the type)")
    if kind is None and strict and default is None:
        raise ValueError("a setting whose default is None needs kind= (the type it takes besides null)")
    auto = auto or (default == AUTO and choices is None)  # "auto" as a default is data-derived unless a choice
    return Spec(default, doc, kind, range, tuple(choices) if choices is not None else None, auto,
                nullable or default is None, resumable, tuple(old))


def setting(default: Any, doc: str = "", **facts) -> Any:
    """A dataclass field declaring one key (see :func:`make_spec` for ``facts``)."""
    s = make_spec(default, doc, **facts)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={"spec": s})
    return dataclasses.field(default=default, metadata={"spec": s})


class Settings:
    """Base of a section's frozen dataclass: ``class Data(Settings, section="data")`` registers it. Fields are read
    as attributes (``cfg.data.root``) or, where code still passes sections around as mappings, by ``[key]``."""

    section: ClassVar[str] = ""

    def __init_subclass__(cls, section: str | None = None, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if section is not None:
            cls.section = section
            cls._owner = f"{cls.__module__}.{cls.__qualname__}"
            _PENDING.append(cls)  # registered once @dataclass has made its fields (on first lookup)

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)]

    def items(self):
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_dict(self) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in self.items()}

    @classmethod
    def specs(cls) -> dict[str, Spec]:
        return {f.name: f.metadata["spec"] for f in dataclasses.fields(cls) if "spec" in f.metadata}


# section -> key -> (spec, owner); the registry every check reads
_KEYS: dict[str, dict[str, tuple[Spec, str]]] = {}
_CLASSES: dict[str, type] = {}  # section -> its declared dataclass (one owner) or the one made from its keys
_PENDING: list[type] = []


def _flush() -> None:
    while _PENDING:
        cls = _PENDING.pop(0)
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls._owner} subclasses Settings with a section but is not a @dataclass(frozen=True)")
        declare(cls.section, cls.specs(), cls._owner)
        _CLASSES[cls.section] = cls


def declare(section: str, keys: dict[str, Spec], owner: str) -> None:
    """Add ``owner``'s keys to ``section``. A key declared before must come with the same default or from the same
    owner (one key, one default; a re-run notebook cell replaces its own); nothing is added when one clashes."""
    _flush()
    have = _KEYS.get(section, {})
    for key, s in keys.items():
        if key in have and have[key][0].default != s.default and have[key][1] != owner:
            raise ValueError(f"config key {section}.{key} is declared by {have[key][1]} and, with another default, "
                             f"by {owner}")
    have = _KEYS.setdefault(section, {})
    for key, s in keys.items():
        have[key] = (s, have[key][1] if key in have else owner)
    if section in _CLASSES and set(_CLASSES[section].specs()) != set(have):
        del _CLASSES[section]  # a shared section gained keys: its dataclass is made again


def sections() -> dict[str, dict[str, Spec]]:
    """Every registered section: key -> spec."""
    _flush()
    return {name: {k: s for k, (s, _) in keys.items()} for name, keys in _KEYS.items()}


def specs(section: str) -> dict[str, Spec]:
    _flush()
    return {k: s for k, (s, _) in _KEYS.get(section, {}).items()}


def owner(section: str, key: str | None = None) -> str:
    _flush()
    keys = _KEYS.get(section, {})
    return keys[key][1] if key is not None else next(iter(keys.values()), (None, ""))[1]


def spec(dotted: str) -> Spec | None:
    """The spec of ``section.key`` (None: no such key)."""
    section, _, key = dotted.partition(".")
    return specs(section).get(key)


def defaults(section: str) -> dict[str, Any]:
    return {k: copy.deepcopy(s.default) for k, s in specs(section).items()}


def old_names() -> dict[str, str]:
    """Every old dotted name -> the key that now holds it."""
    return {old: f"{name}.{key}" for name, keys in sections().items() for key, s in keys.items() for old in s.old}


def section_class(section: str) -> type:
    """The frozen dataclass of ``section``: its owner's, or one made from the keys of a shared section."""
    _flush()
    if section not in _CLASSES:
        keys = specs(section)
        fields = [(k, Any, dataclasses.field(default=None, metadata={"spec": s})) for k, s in keys.items()]
        _CLASSES[section] = dataclasses.make_dataclass(section.title().replace("_", "") + "Settings", fields,
                                                       bases=(Settings,), frozen=True)
    return _CLASSES[section]


def typed(section: str, values: dict[str, Any]) -> Settings:
    """``section``'s dataclass holding ``values`` (a resolved config's section; keys it lacks take their
    defaults, so a checkpoint written before a key existed still builds)."""
    cls = section_class(section)
    keys = specs(section)
    return cls(**{k: copy.deepcopy(values[k]) if k in values else copy.deepcopy(s.default) for k, s in keys.items()})


@dataclass(frozen=True)
class Config:
    """A resolved config, typed: ``seed``, ``method`` and one frozen dataclass per section, read as attributes
    (``config.mask.p``). Built once from the resolved mapping (:meth:`of`); the mapping stays what is saved
    (config.yaml, checkpoints) and what the engine reads.

    >>> from mst.config import load_config
    >>> Config.of(load_config(overrides=["method=mae"])).mask.ratio
    0.75
    """

    seed: int
    method: str
    sections: dict

    def __getattr__(self, name: str):
        if name == "sections":  # (during construction)
            raise AttributeError(name)
        try:
            return self.sections[name]
        except KeyError:
            raise AttributeError(f"the config has no section {name!r} (its method {self.method!r} reads "
                                 f"{', '.join(self.sections)})") from None

    @classmethod
    def of(cls, cfg: dict) -> "Config":
        return cls(int(cfg["seed"]), str(cfg["method"]),
                   {name: typed(name, values) for name, values in cfg.items() if isinstance(values, dict)})
