"""The file-format registry: what each readable format declares, and the look-ups the scan and the loader make.

A format is its extensions, a cheap header read (size, bands, alpha, bit depth: what the folder scan checks without
decoding pixels) and a full read (what the loader converts). Registering one makes the scan pick its files up, the
loader read them and every "supported extensions" message list it; nothing else names extensions.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import numpy as np
from PIL import Image

from mst.registry import Registry


@dataclass(frozen=True)
class Header:
    """What a file holds, read without decoding the pixels. ``bands`` counts data bands (alpha excluded);
    ``bits``: 8 for 8-bit data, 16 for 16-bit, 32 for 32-bit int or float."""

    width: int
    height: int
    bands: int
    alpha: bool
    bits: int


# A full read: a loaded PIL image (converted by the 8-bit PIL rules), or an (H, W, B) array at full precision and
# whether its last band is alpha (integers are later divided by their type's maximum, floats kept as stored).
Pixels = Union[Image.Image, tuple[np.ndarray, bool]]


@dataclass(frozen=True)
class Format:
    """One readable file format.

    ``order`` places its extensions in the listed ones (and so in error messages); ``sniffs``: it tells formats
    apart by content, so the loader also hands it a file whose suffix no format claims (PIL, for a ``.gif`` passed
    directly; the folder scan still picks up registered suffixes only); ``alpha_may_be_data``: its alpha tag may
    mark a data band (RGB + NIR TIFFs), which the folder inspection points out."""

    extensions: tuple[str, ...]  # lower case, with the dot
    header: Callable[[Path], Header]
    read: Callable[[Path], Pixels]
    order: int = 100
    sniffs: bool = False
    alpha_may_be_data: bool = False


FORMATS: Registry[Format] = Registry("file format", "format")


def formats() -> list[Format]:
    """The registered formats in their listing order (``order``, then name)."""
    return [f for _, f in sorted(FORMATS.items(), key=lambda item: (item[1].order, item[0]))]


def extensions() -> tuple[str, ...]:
    """Every registered extension (lower case, with the dot) in listing order: what the folder scan picks up."""
    return tuple(e for f in formats() for e in f.extensions)


def is_supported(name: str, exts: tuple[str, ...] | None = None) -> bool:
    """Whether a file name ends in a registered extension (any case); pass ``extensions()`` when testing many."""
    return name.lower().endswith(exts if exts is not None else extensions())


def format_for(path: str | Path) -> Format:
    """The format claiming ``path``'s suffix (any case), else the first that sniffs content; two formats claiming
    one suffix is an error, not a silent choice."""
    suffix = Path(path).suffix.lower()
    found = [(n, f) for n, f in FORMATS.items() if suffix in f.extensions]
    if len(found) > 1:
        raise ValueError(f"file formats {' and '.join(n for n, _ in found)} both claim {suffix}; unregister one")
    if found:
        return found[0][1]
    sniffing = [f for f in formats() if f.sniffs]
    if not sniffing:
        raise ValueError(f"{path}: no file format reads {suffix or 'files without a suffix'} (supported: "
                         f"{', '.join(extensions())})")
    return sniffing[0]
