"""Reading one image file: its header (size, bands, alpha) cheaply, and its pixels without silent conversion.

PIL reads the everyday formats (JPEG, PNG, WebP, BMP). TIFF goes through ``tifffile``, which understands what PIL
does not: many pages, many samples per pixel (contiguous or planar), 16-bit and float data. DICOM goes through
``pydicom`` when it is installed (``pip install mst[dicom]``). Whatever the reader, a file is described by
:class:`Header` (``bands`` excludes an alpha band) and its pixels come back as (H, W, bands[+alpha]) arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")

# PIL modes -> (colour bands, has alpha). Palette images are colour (their palette is RGB).
_PIL_MODES = {
    "1": (1, False), "L": (1, False), "I": (1, False), "F": (1, False), "LA": (1, True), "La": (1, True),
    "P": (3, False), "PA": (3, True), "RGB": (3, False), "YCbCr": (3, False), "LAB": (3, False), "HSV": (3, False),
    "CMYK": (3, False), "RGBA": (3, True), "RGBa": (3, True), "RGBX": (3, False),
}


@dataclass(frozen=True)
class Header:
    """What a file holds, read without decoding the pixels. ``bands`` counts data bands (alpha excluded);
    ``bits``: 8 for 8-bit data, 16 for 16-bit, 32 for 32-bit int or float."""

    width: int
    height: int
    bands: int
    alpha: bool
    bits: int


def is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES


def is_dicom(path: Path) -> bool:
    return path.suffix.lower() in DICOM_SUFFIXES


def _tiff_layout(tf) -> tuple[str, tuple[int, ...]]:
    if len(tf.series) != 1:
        shapes = ", ".join(str(tuple(s.shape)) for s in tf.series[:4])
        raise ValueError(f"it holds {len(tf.series)} images of different shapes ({shapes}); save one image (all "
                         "bands the same size) per file")
    series = tf.series[0]
    axes, shape = series.axes, tuple(series.shape)
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"its axes are {axes!r}, with no Y and X")
    extra = [a for a in axes if a not in "YX"]
    if len(extra) > 1:
        raise ValueError(f"its axes are {axes!r} {shape}: more than one band axis (e.g. time and channels); save "
                         "one (Y, X, bands) image per file")
    return axes, shape


def _tiff_alpha(tf, bands: int) -> bool:
    """A trailing extra sample marked as (associated or unassociated) alpha, on an 8-bit RGB or grey page.

    Only 8-bit files (photos) have transparency here: ``tifffile.imwrite(path, array)`` tags the fourth sample of
    any (H, W, 4) array as alpha, so a 16-bit or float RGB + NIR image would otherwise lose its NIR band. Their
    every sample is a band."""
    page = tf.pages.first
    extras = tuple(int(v) for v in (getattr(page, "extrasamples", ()) or ()))
    eight_bit = np.dtype(tf.series[0].dtype).itemsize == 1
    return bool(extras) and extras[-1] in (1, 2) and bands in (2, 4) and eight_bit


def tiff_header(path: Path) -> Header:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        axes, shape = _tiff_layout(tf)
        bands = int(np.prod([n for a, n in zip(axes, shape) if a not in "YX"] or [1]))
        alpha = _tiff_alpha(tf, bands)
        dtype = np.dtype(tf.series[0].dtype)
    h, w = shape[axes.index("Y")], shape[axes.index("X")]
    return Header(int(w), int(h), bands - int(alpha), alpha, 8 * dtype.itemsize)


def read_tiff(path: Path) -> tuple[np.ndarray, bool]:
    """(H, W, B) array of the file's dtype (every page or sample is a band), and whether the last band is alpha."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        axes, _ = _tiff_layout(tf)
        arr = tf.series[0].asarray()
        bands = arr.size // (arr.shape[axes.index("Y")] * arr.shape[axes.index("X")])
        alpha = _tiff_alpha(tf, bands)
    order = [axes.index("Y"), axes.index("X")] + [i for i, a in enumerate(axes) if a not in "YX"]
    arr = np.transpose(arr, order)
    return (arr if arr.ndim == 3 else arr[:, :, None]), alpha


def _dicom(path: Path):
    try:
        import pydicom
    except ImportError as e:
        raise ValueError("DICOM files need pydicom: pip install 'mst[dicom]' (or pip install pydicom)") from e
    return pydicom


def dicom_header(path: Path) -> Header:
    ds = _dicom(path).dcmread(path, stop_before_pixels=True)
    bands = int(getattr(ds, "SamplesPerPixel", 1))
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    return Header(int(ds.Columns), int(ds.Rows), bands * frames, False, int(getattr(ds, "BitsAllocated", 16)))


def read_dicom(path: Path) -> np.ndarray:
    """(H, W, B) float32 in the modality's units (RescaleSlope / RescaleIntercept applied); frames are bands."""
    pydicom = _dicom(path)
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.astype(np.float32)
    arr = arr * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    if arr.ndim == 2:
        return arr[:, :, None]
    if int(getattr(ds, "SamplesPerPixel", 1)) > 1 and arr.ndim == 3:
        return arr  # (H, W, S)
    return np.moveaxis(arr.reshape(-1, *arr.shape[-2:]), 0, -1)  # frames (F, H, W) -> (H, W, F)


def pil_header(path: Path) -> Header:
    from PIL import Image

    with Image.open(path) as im:
        mode, size = im.mode, im.size
        transparent = "transparency" in im.info
    bands, alpha = _PIL_MODES.get(mode, (3, False))
    if mode.startswith("I;16"):
        bands, bits = 1, 16
    else:
        bits = 32 if mode in ("I", "F") else 8
    return Header(size[0], size[1], bands, alpha or (mode == "P" and transparent), bits)


def read_header(path: Path) -> Header:
    """The header of any supported file (raises the reader's own exception for a broken one)."""
    if is_tiff(path):
        return tiff_header(path)
    if is_dicom(path):
        return dicom_header(path)
    return pil_header(path)


def to_unit_float(arr: np.ndarray) -> np.ndarray:
    """Integers divided by their type's maximum (uint8 / 255, uint16 / 65535, ...), floats unchanged, as float32.
    A fixed linear map: the per-channel mean / std measured on the data undo any scale."""
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    if arr.dtype == bool:
        return arr.astype(np.float32)
    return arr.astype(np.float32)
