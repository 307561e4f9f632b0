"""Everyday image formats read by PIL (JPEG, PNG, BMP, WebP): 8-bit grey, colour, palette, with or without alpha.

One reader, registered once per family so each lists its own extensions; another PIL-readable family is one more
``FORMATS.register(name, Format(exts, pil_header, read_pil, sniffs=True))``.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps

from .base import FORMATS, Format, Header

# PIL modes -> (colour bands, has alpha). Palette images are colour (their palette is RGB).
PIL_MODES = {
    "1": (1, False), "L": (1, False), "I": (1, False), "F": (1, False), "LA": (1, True), "La": (1, True),
    "P": (3, False), "PA": (3, True), "RGB": (3, False), "YCbCr": (3, False), "LAB": (3, False), "HSV": (3, False),
    "CMYK": (3, False), "RGBA": (3, True), "RGBa": (3, True), "RGBX": (3, False),
}


def pil_header(path: Path) -> Header:
    with Image.open(path) as im:
        mode, size = im.mode, im.size
        transparent = "transparency" in im.info
    bands, alpha = PIL_MODES.get(mode, (3, False))
    if mode.startswith("I;16"):
        bands, bits = 1, 16
    else:
        bits = 32 if mode in ("I", "F") else 8
    return Header(size[0], size[1], bands, alpha or (mode == "P" and transparent), bits)


def read_pil(path: Path) -> Image.Image:
    """The fully decoded image, turned upright by its EXIF orientation; the file is closed on return."""
    with Image.open(path) as im:
        im.load()
        return ImageOps.exif_transpose(im) or im.copy()


FORMATS.register("jpeg", Format((".jpg", ".jpeg"), pil_header, read_pil, order=10, sniffs=True))
FORMATS.register("png", Format((".png",), pil_header, read_pil, order=20, sniffs=True))
FORMATS.register("bmp", Format((".bmp",), pil_header, read_pil, order=30, sniffs=True))
FORMATS.register("webp", Format((".webp",), pil_header, read_pil, order=50, sniffs=True))  # listed after TIFF (40)
