"""DICOM through ``pydicom`` when it is installed (``pip install mst[dicom]``): pixels in the modality's units,
frames or samples as bands."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import FORMATS, Format, Header


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


def read_dicom(path: Path) -> tuple[np.ndarray, bool]:
    """(H, W, B) float32 in the modality's units (RescaleSlope / RescaleIntercept applied; frames are bands), and
    no alpha."""
    ds = _dicom(path).dcmread(path)
    arr = ds.pixel_array.astype(np.float32)
    arr = arr * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    if arr.ndim == 2:
        return arr[:, :, None], False
    if int(getattr(ds, "SamplesPerPixel", 1)) > 1 and arr.ndim == 3:
        return arr, False  # (H, W, S)
    return np.moveaxis(arr.reshape(-1, *arr.shape[-2:]), 0, -1), False  # frames (F, H, W) -> (H, W, F)


FORMATS.register("dicom", Format((".dcm", ".dicom"), dicom_header, read_dicom, order=60))
