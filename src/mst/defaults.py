"""The common config sections and the two top-level keys, gathered from their owners' dataclasses
(:mod:`mst.data.settings`, :mod:`mst.models.settings`, :mod:`mst.engine.settings`); a method's sections are declared
beside the method (``MSTSettings`` in :mod:`mst.methods.mst`, ...). Every key's facts live on its field
(:mod:`mst.settings`); ``mst config`` prints them."""
from __future__ import annotations

from typing import Any

import mst.data.settings  # noqa: F401  (declares data, augment)
import mst.engine.settings  # noqa: F401  (declares optim, log)
import mst.models.settings  # noqa: F401  (declares model)
from mst.settings import NON_NEGATIVE, Spec, declare, defaults, make_spec, sections

COMMON_SECTIONS = ("data", "augment", "model", "optim", "log")
TOP: dict[str, Spec] = {
    "seed": make_spec(0, "seed of the run: weights, views, masks", range=NON_NEGATIVE),
    "method": make_spec("mst", "a registered method: mst | dino (mst, no mask, no decoder) | mae | simmim | distill | "
                        "finetune"),
}


def common() -> dict[str, Any]:
    """The top-level keys and the common sections with their defaults, read from the registry now (a key a user
    declares into ``data`` later is in it)."""
    return {**{k: s.default for k, s in TOP.items()}, **{name: defaults(name) for name in COMMON_SECTIONS}}


COMMON: dict[str, Any] = common()  # as declared at import, for reading defaults (config building uses common())


def add_section(name: str, section_defaults: dict[str, Any], owner: str) -> None:
    """Declare ``owner``'s section ``name`` from a plain {key: default} mapping (a method registered outside the
    package, ``Method.defaults``): each key's type is its default's, with no range. One key, one default: another
    owner declaring a key with another default is an error."""
    if name in COMMON_SECTIONS or name in TOP:
        raise ValueError(f"{owner} declares {name!r}, a common config section")
    declare(name, {k: make_spec(v, strict=False) for k, v in section_defaults.items()}, owner)


def method_sections() -> dict[str, dict[str, Any]]:
    """Every section besides the common ones: key -> default."""
    return {name: defaults(name) for name in sections() if name not in COMMON_SECTIONS}
