"""Images from a directory tree, with every failure mode turned into a :class:`DataError` naming the file.

A pretraining run may read millions of user files; a bad one should either stop the run with its path
(``bad_files="error"``) or be dropped with one summary warning (``bad_files="skip"``), never crash a
DataLoader worker with a bare PIL traceback or silently feed a half-decoded (truncated) image.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile

from .formats import extensions, is_supported
from .formats.pil import PIL_MODES
from .readers import Header, read_header, read_pixels, to_unit_float

ALPHA_POLICIES = ("black", "white", "drop", "keep")  # data.alpha: composite onto black / white, drop, or keep as a band
SMALL_POLICIES = ("upscale", "skip", "error")  # data.small_images


class DataError(ValueError):
    """A data directory or image file cannot be used; the message names the path and the fix."""


class SmallImageError(DataError):
    """An image is smaller than the crop (``data.small_images=error``; skipped under ``skip``)."""


class BandMismatchError(DataError):
    """A file's band count differs from ``data.channels``: always an error, never converted or skipped."""


class BadFileWarning(UserWarning):
    """Files were skipped under ``data.bad_files=skip`` or ``data.small_images=skip``."""


def _is_image(name: str, exts: tuple[str, ...] | None = None) -> bool:
    """A registered format's file (:mod:`mst.data.formats`); ``exts``: ``extensions()``, read once per scan."""
    return is_supported(name, exts)


def _walk(root: Path) -> tuple[list[Path], Counter]:
    """All non-hidden files under ``root`` (sorted, symlinks followed once) and a count of their suffixes."""
    files: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop; do not descend again
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    suffixes = Counter(p.suffix.lower() or "(none)" for p in files)
    return files, suffixes


def _no_images_error(where: Path, suffixes: Counter) -> DataError:
    found = ", ".join(f"{s} ({n})" for s, n in suffixes.most_common(5))
    return DataError(
        f"{where} has no images with a supported extension ({', '.join(extensions())}, any case); found: {found}"
    )


def _scale_to_uint8(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit int / float single-band images -> 'L', scaled (never clipped) into 0..255.

    'I;16*' are divided by 65535. 'I' is treated as 16-bit when its values lie in 0..65535 (PNG/TIFF
    16-bit data often arrive as 'I'), otherwise min-max scaled. 'F' in [0, 1] is multiplied by 255,
    otherwise min-max scaled.
    """
    arr = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16"):
        arr = arr / 65535.0
    elif img.mode == "F" and arr.size and 0.0 <= arr.min() and arr.max() <= 1.0:
        pass
    elif img.mode == "I" and arr.size and 0 <= arr.min() and arr.max() <= 65535:
        arr = arr / 65535.0
    else:
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 1.0)
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    arr = np.nan_to_num(arr, nan=0.0)
    return Image.fromarray(np.rint(arr * 255.0).astype(np.uint8), mode="L")


def remove_alpha(arr: np.ndarray, policy: str, top: float) -> np.ndarray:
    """(H, W, B+1) with alpha last (0..``top``) -> (H, W, B) float: composited onto black or white, or dropped."""
    data, a = arr[..., :-1].astype(np.float32), arr[..., -1:].astype(np.float32) / float(top)
    if policy == "drop":
        return data
    if policy not in ALPHA_POLICIES or policy == "keep":
        raise ValueError(f"data.alpha={policy!r} is not one of {', '.join(ALPHA_POLICIES)}")
    background = 0.0 if policy == "black" else float(top)
    return data * a + background * (1.0 - a)


def _composite(img: Image.Image, policy: str) -> Image.Image:
    """Apply the alpha policy and drop the alpha band: 'LA' -> 'L', else 'RGB'."""
    if img.mode != "LA":
        img = img.convert("RGBA")
    out = np.rint(remove_alpha(np.asarray(img), policy, 255.0)).astype(np.uint8)
    return Image.fromarray(out[..., 0], mode="L") if img.mode == "LA" else Image.fromarray(out, mode="RGB")


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    """(H, W, 1 or 3) of any dtype -> 'L' / 'RGB' with the 8-bit rules of :func:`_scale_to_uint8` (uint16 / 65535,
    float in [0, 1] x 255, any other range min-max scaled)."""
    if arr.dtype == np.uint8:
        out = arr
    else:
        x = arr.astype(np.float64)
        if arr.dtype == np.uint16 or (np.issubdtype(arr.dtype, np.integer) and x.size and 0 <= x.min()
                                      and x.max() <= 65535):
            x = x / 65535.0
        elif not (np.issubdtype(arr.dtype, np.floating) and x.size and 0.0 <= np.nanmin(x) and np.nanmax(x) <= 1.0):
            lo, hi = (float(np.nanmin(x)), float(np.nanmax(x))) if x.size else (0.0, 1.0)
            x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
        out = np.rint(np.nan_to_num(x, nan=0.0) * 255.0).astype(np.uint8)
    return Image.fromarray(out[..., 0], mode="L") if out.shape[-1] == 1 else Image.fromarray(out, mode="RGB")


def to_channels(img: Image.Image, channels: int, alpha: str = "black") -> Image.Image:
    """Convert any PIL mode to 'L' (channels=1) or 'RGB' (channels=3).

    Transparent pixels (RGBA, LA, PA, P with a transparency key) follow ``alpha`` (data.alpha: composited onto
    black (default) or white, or the alpha band dropped); high bit-depth images are rescaled by
    :func:`_scale_to_uint8`; RGB -> L uses PIL's ITU-R 601-2 luma; L -> RGB repeats the grey band.
    """
    mode = img.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        img = _scale_to_uint8(img)
    elif mode in ("LA", "La", "RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in img.info):
        img = _composite(img, alpha)
    elif mode not in ("L", "RGB"):
        img = img.convert("RGB") if mode not in ("1",) else img.convert("L")
    want = "RGB" if channels == 3 else "L"
    return img if img.mode == want else img.convert(want)


def _bands_error(path, bands: int, alpha: bool, channels: int) -> BandMismatchError:
    what = f"{bands} band{'s' if bands != 1 else ''}" + (" + alpha" if alpha else "")
    keep = f" (or data.channels={bands + 1} to keep the alpha band as data)" if alpha else ""
    return BandMismatchError(f"image {path} has {what} but data.channels={channels}; use files with {channels} "
                             f"bands, or set data.channels={bands}{keep} (nothing is dropped or merged silently)")


def keeps_alpha(bands: int, alpha: bool, channels: int, policy: str) -> bool:
    """Whether a file's alpha band is kept as an ordinary band: ``data.alpha=keep``, or ``data.channels`` asking
    for every sample of the file (a 4-sample TIFF tagged RGB + alpha read as RGB + NIR with data.channels=4)."""
    return alpha and (policy == "keep" or channels == bands + 1)


def compatible(bands: int, channels: int) -> bool:
    """Grey files join colour data (the band repeated) and colour files grey data (ITU-R 601-2 luma); any other
    difference is an error."""
    return bands == channels or {bands, channels} == {1, 3}


def _from_array(path: Path, arr: np.ndarray, has_alpha: bool, channels: int, alpha: str):
    """A reader's (H, W, B) array: 8-bit grey or RGB -> PIL. Anything else -> a float32 (C, H, W) tensor at full
    precision: integers divided by their type's maximum (uint16 / 65535), floats as stored (DICOM in the modality's
    units). The measured statistics normalise them; nothing is windowed to 8 bits."""
    if has_alpha and not keeps_alpha(arr.shape[-1] - 1, True, channels, alpha):
        top = float(np.iinfo(arr.dtype).max) if np.issubdtype(arr.dtype, np.integer) else 1.0
        arr = remove_alpha(arr, alpha, top).astype(arr.dtype)
    bands = arr.shape[-1]
    if not compatible(bands, channels):
        raise _bands_error(path, bands, False, channels)
    if channels in (1, 3) and arr.dtype == np.uint8:  # 8-bit grey / RGB: the PIL pipeline, as a JPEG would go
        return to_channels(_array_to_pil(arr), channels, alpha)
    arr = to_unit_float(arr)
    if arr.shape[-1] != channels:  # a grey file in colour data (repeated), or the reverse (ITU-R 601-2 luma)
        arr = np.repeat(arr, 3, -1) if channels == 3 else (arr @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _from_pil(path: Path, im: Image.Image, channels: int, alpha: str):
    """A decoded PIL image -> 'L' / 'RGB' (:func:`to_channels`), or a float32 tensor when the alpha band is kept."""
    bands, has_alpha = PIL_MODES.get(im.mode, (1, False) if im.mode.startswith("I;16") else (3, False))
    has_alpha = has_alpha or (im.mode == "P" and "transparency" in im.info)
    if keeps_alpha(bands, has_alpha, channels, alpha):  # every sample, alpha as data: a float tensor
        if channels != bands + 1:
            raise _bands_error(path, bands + 1, False, channels)
        arr = np.asarray(im.convert("LA" if bands == 1 else "RGBA"), dtype=np.float32) / 255.0
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    if channels not in (1, 3):
        raise _bands_error(path, bands, has_alpha, channels)
    return to_channels(im, channels, alpha)


def _upscale(img, min_size: int):
    """Shorter side -> ``min_size``, aspect kept (bicubic): data.small_images=upscale."""
    if isinstance(img, Image.Image):
        w, h = img.size
        s = min_size / min(w, h)
        return img.resize((max(min_size, round(w * s)), max(min_size, round(h * s))), Image.BICUBIC)
    h, w = img.shape[-2:]
    s = min_size / min(w, h)
    size = (max(min_size, round(h * s)), max(min_size, round(w * s)))
    return torch.nn.functional.interpolate(img[None], size=size, mode="bicubic", align_corners=False)[0]


def image_size(img) -> tuple[int, int]:
    """(width, height) of a PIL image or a (C, H, W) tensor."""
    return img.size if isinstance(img, Image.Image) else (int(img.shape[-1]), int(img.shape[-2]))


def load_image(path: str | Path, channels: int, min_size: int = 0, alpha: str = "black", small: str = "error"):
    """Fully decode ``path`` (truncated files are errors) and convert it; any failure -> DataError.

    1 or 3 channels: a PIL image ('L' / 'RGB'). Any other count (multiband TIFF, DICOM frames): a float32 (C, H, W)
    tensor, integers divided by their type's maximum. ``small``: an image below ``min_size`` is upscaled
    (``upscale``), else an error (:class:`SmallImageError`)."""
    path = Path(path)
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, not load grey
    try:
        pixels = read_pixels(path)  # the registered format's full read
        img = _from_pil(path, pixels, channels, alpha) if isinstance(pixels, Image.Image) else \
            _from_array(path, *pixels, channels, alpha)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, zlib.error, ...
        raise DataError(f"image {path} cannot be decoded ({type(e).__name__}: {e}); fix or delete it, "
                        f"or set data.bad_files=skip") from e
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    size = image_size(img)
    if min(size) < min_size and small == "upscale":
        return _upscale(img, min_size)
    _check_size(path, size, min_size)
    return img


def _check_size(path: str | Path, size: tuple[int, int], min_size: int) -> None:
    if min(size) < min_size:
        raise SmallImageError(
            f"image {path} is {size[0]}x{size[1]}, smaller than the global crop {min_size} px; resize it or "
            f"lower model.img_size, or set data.small_images=upscale (or skip)"
        )


def _check_header(path: Path, min_size: int, channels: int | None = None, alpha: str = "black") -> Header:
    """Cheap check: only the header (format, size, bands) is read."""
    try:
        header = read_header(path)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"image {path} cannot be opened ({type(e).__name__}: {e}); fix or delete it, "
                        f"or set data.bad_files=skip") from e
    if channels is not None:
        bands = header.bands + int(keeps_alpha(header.bands, header.alpha, channels, alpha))
        if not compatible(bands, channels):
            raise _bands_error(path, header.bands, header.alpha, channels)
    _check_size(path, (header.width, header.height), min_size)
    return header


class ImageFolderDataset(torch.utils.data.Dataset):
    """(image, label) from a directory: class subfolders (``labelled``) or any nesting (label -1). The image is a
    PIL image for 1 or 3 channels, a float32 (C, H, W) tensor for any other count (:func:`load_image`).

    Hidden files and folders (names starting with '.') are ignored. Every file's header is checked at
    construction (readable, band count compatible with ``channels``, size against ``min_size``) so a bad file is
    found before training starts; ``verify=False`` skips that for very large trees (errors then surface at
    ``__getitem__``). ``small``: images below ``min_size`` are upscaled, skipped (one warning) or an error.
    """

    def __init__(self, root: str | Path, labelled: bool, channels: int, bad_files: str = "error",
                 min_size: int = 0, verify: bool = True, alpha: str = "black", small: str = "error",
                 exclude: tuple[str, ...] = ()) -> None:
        if int(channels) < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if bad_files not in ("error", "skip"):
            raise ValueError(f"bad_files must be 'error' or 'skip', got {bad_files!r}")
        if small not in SMALL_POLICIES or alpha not in ALPHA_POLICIES:
            raise ValueError(f"small={small!r} / alpha={alpha!r} not in {SMALL_POLICIES} / {ALPHA_POLICIES}")
        self.root = Path(root)
        self.labelled, self.channels, self.bad_files, self.min_size = labelled, int(channels), bad_files, min_size
        self.alpha, self.small, self.exclude = alpha, small, tuple(exclude)  # top-level folders to skip (val/ test/)
        if not self.root.exists():
            raise DataError(f"data directory {self.root} does not exist; check data.root / --data")
        if not self.root.is_dir():
            raise DataError(f"data root {self.root} is not a directory")
        self.classes: list[str] = []
        samples = self._scan_labelled() if labelled else self._scan_unlabelled()
        self.skipped: list[str] = []
        if verify:
            samples = self._verify(samples)
        self.samples: list[tuple[Path, int]] = samples

    def _scan_unlabelled(self) -> list[tuple[Path, int]]:
        files, suffixes = _walk(self.root)
        files = [p for p in files if p.relative_to(self.root).parts[0] not in self.exclude]
        if not files:
            raise DataError(f"data directory {self.root} is empty")
        exts = extensions()
        images = [p for p in files if _is_image(p.name, exts)]
        if not images:
            raise _no_images_error(self.root, suffixes)
        return [(p, -1) for p in images]

    def _scan_labelled(self) -> list[tuple[Path, int]]:
        entries = sorted(e for e in os.listdir(self.root) if not e.startswith("."))
        if not entries:
            raise DataError(f"data directory {self.root} is empty")
        self.classes = [e for e in entries if (self.root / e).is_dir() and e not in self.exclude]
        if not self.classes:
            raise DataError(
                f"data directory {self.root} has no class subfolders (data.name=image_folder expects "
                f"root/CLASS/image.jpg); use data.name=folder for unlabelled images"
            )
        samples: list[tuple[Path, int]] = []
        exts = extensions()
        for idx, cls in enumerate(self.classes):
            files, suffixes = _walk(self.root / cls)
            images = [p for p in files if _is_image(p.name, exts)]
            if not images:
                if not files:
                    raise DataError(f"class folder {self.root / cls} is empty (no images)")
                raise _no_images_error(self.root / cls, suffixes)
            samples.extend((p, idx) for p in images)
        return samples

    def _verify(self, samples: list[tuple[Path, int]]) -> list[tuple[Path, int]]:
        kept: list[tuple[Path, int]] = []
        reasons: list[str] = []
        check_size = 0 if self.small == "upscale" else self.min_size
        for path, label in samples:
            try:
                _check_header(path, check_size, self.channels, self.alpha)
            except DataError as e:
                too_small_skipped = isinstance(e, SmallImageError) and self.small == "skip"
                if isinstance(e, BandMismatchError) or (self.bad_files == "error" and not too_small_skipped):
                    raise
                self.skipped.append(str(path))
                reasons.append(str(e))
                continue
            kept.append((path, label))
        if self.skipped:
            first = "; ".join(reasons[:3])
            more = f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else ""
            warnings.warn(f"skipped {len(self.skipped)} of {len(samples)} files under {self.root} "
                          f"(data.bad_files=skip / data.small_images=skip): {first}{more}", BadFileWarning, stacklevel=3)
        if not kept:
            raise DataError(f"every image under {self.root} was skipped as unreadable or too small")
        return kept

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> np.ndarray:
        return np.array([label for _, label in self.samples], dtype=np.int64)

    def __getitem__(self, i: int):
        n = len(self.samples)
        for step in range(n):
            path, label = self.samples[(i + step) % n]
            try:
                return load_image(path, self.channels, self.min_size, self.alpha, self.small), label
            except DataError as e:
                if self.bad_files == "error":
                    raise
                warnings.warn(f"{e}; using the next image instead (data.bad_files=skip)", BadFileWarning,
                              stacklevel=2)
        raise DataError(f"no image under {self.root} could be decoded")
