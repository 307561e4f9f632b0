"""Reading one image file through the format registry (:mod:`mst.data.formats`): its header (size, bands, alpha)
cheaply, and its pixels without silent conversion.

Which reader a file gets is the registry's answer for its suffix (:func:`~mst.data.formats.format_for`); nothing
here names a format. A file is described by :class:`Header` (``bands`` excludes an alpha band) and its pixels come
back as a PIL image (everyday 8-bit formats) or an (H, W, bands[+alpha]) array at full precision.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .formats import Header, Pixels, format_for

__all__ = ["Header", "read_header", "read_pixels", "to_unit_float"]


def read_header(path: Path) -> Header:
    """The header of any supported file (raises the reader's own exception for a broken one)."""
    return format_for(path).header(Path(path))


def read_pixels(path: Path) -> Pixels:
    """The fully decoded file: a PIL image, or ((H, W, B) array, whether its last band is alpha); a reader's 2-D
    array gets its one band axis here."""
    out = format_for(path).read(Path(path))
    if isinstance(out, Image.Image):
        return out
    arr, alpha = out
    arr = np.asarray(arr)
    return (arr[:, :, None] if arr.ndim == 2 else arr), bool(alpha)


def to_unit_float(arr: np.ndarray) -> np.ndarray:
    """Integers divided by their type's maximum (uint8 / 255, uint16 / 65535, ...), floats unchanged, as float32.
    A fixed linear map: the per-channel mean / std measured on the data undo any scale."""
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    if arr.dtype == bool:
        return arr.astype(np.float32)
    return arr.astype(np.float32)
