"""File formats the folder datasets read, a registry (:data:`FORMATS`) like the methods' and the masks'.

Importing the package registers the built-in readers (PIL: JPEG, PNG, BMP, WebP; ``tifffile``: TIFF; ``pydicom``:
DICOM). A new format is one ``FORMATS.register(name, Format(extensions, header, read))``; the folder scan, the
loader and the "supported extensions" messages all read the registry.

>>> extensions()
('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.dcm', '.dicom')
>>> format_for("scan.TIF") is FORMATS.get("tiff")
True
"""
from .base import FORMATS, Format, Header, Pixels, extensions, format_for, formats, is_supported
from . import dicom, pil, tiff  # noqa: F401 - registers the built-in readers

__all__ = ["FORMATS", "Format", "Header", "Pixels", "extensions", "format_for", "formats", "is_supported"]
