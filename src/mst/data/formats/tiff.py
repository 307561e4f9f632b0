"""TIFF through ``tifffile``, which understands what PIL does not: many pages, many samples per pixel (contiguous or
planar), 16-bit and float data. Every page or sample is a band."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import FORMATS, Format, Header


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


FORMATS.register("tiff", Format((".tif", ".tiff"), tiff_header, read_tiff, order=40, alpha_may_be_data=True))
