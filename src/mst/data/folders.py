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
from PIL import Image, ImageFile, ImageOps

EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A data directory or image file cannot be used; the message names the path and the fix."""


class BadFileWarning(UserWarning):
    """Files were skipped under ``data.bad_files=skip``."""


def _is_image(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS)


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
        f"{where} has no images with a supported extension ({', '.join(EXTENSIONS)}, any case); found: {found}"
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


def _composite_on_black(img: Image.Image) -> Image.Image:
    """Premultiply by alpha (= alpha-composite onto black) and drop the alpha band: 'LA' -> 'L', else 'RGB'."""
    if img.mode != "LA":
        img = img.convert("RGBA")
    arr = np.asarray(img).astype(np.float32)
    out = arr[..., :-1] * (arr[..., -1:] / 255.0)
    out = np.rint(out).astype(np.uint8)
    return Image.fromarray(out[..., 0], mode="L") if img.mode == "LA" else Image.fromarray(out, mode="RGB")


def to_channels(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to 'L' (channels=1) or 'RGB' (channels=3).

    Transparent pixels (RGBA, LA, PA, P with a transparency key) are composited onto black; high bit-depth
    images are rescaled by :func:`_scale_to_uint8`; RGB -> L uses PIL's ITU-R 601-2 luma.
    """
    mode = img.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        img = _scale_to_uint8(img)
    elif mode in ("LA", "La", "RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in img.info):
        img = _composite_on_black(img)
    elif mode not in ("L", "RGB"):
        img = img.convert("RGB") if mode not in ("1",) else img.convert("L")
    want = "RGB" if channels == 3 else "L"
    return img if img.mode == want else img.convert(want)


def load_image(path: str | Path, channels: int, min_size: int = 0) -> Image.Image:
    """Fully decode ``path`` (truncated files are errors) and convert it; any failure -> DataError."""
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, not load grey
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im) or im
            img = to_channels(im, channels)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, zlib.error, ...
        raise DataError(f"image {path} cannot be decoded ({type(e).__name__}: {e}); fix or delete it, "
                        f"or set data.bad_files=skip") from e
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    _check_size(path, img.size, min_size)
    return img


def _check_size(path: str | Path, size: tuple[int, int], min_size: int) -> None:
    if min(size) < min_size:
        raise DataError(
            f"image {path} is {size[0]}x{size[1]}, smaller than the global crop {min_size} px; "
            f"resize it or lower augment.global_size"
        )


def _check_header(path: Path, min_size: int) -> None:
    """Cheap check: PIL reads only the header (format, size, mode)."""
    try:
        with Image.open(path) as im:
            size = im.size
    except Exception as e:  # noqa: BLE001
        raise DataError(f"image {path} cannot be opened ({type(e).__name__}: {e}); fix or delete it, "
                        f"or set data.bad_files=skip") from e
    _check_size(path, size, min_size)


class ImageFolderDataset(torch.utils.data.Dataset):
    """(PIL image, label) from a directory: class subfolders (``labelled``) or any nesting (label -1).

    Hidden files and folders (names starting with '.') are ignored. Every file's header is checked at
    construction so a bad file is found before training starts; ``verify=False`` skips that for very
    large trees (errors then surface at ``__getitem__``).
    """

    def __init__(self, root: str | Path, labelled: bool, channels: int, bad_files: str = "error",
                 min_size: int = 0, verify: bool = True) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if bad_files not in ("error", "skip"):
            raise ValueError(f"bad_files must be 'error' or 'skip', got {bad_files!r}")
        self.root = Path(root)
        self.labelled, self.channels, self.bad_files, self.min_size = labelled, channels, bad_files, min_size
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
        if not files:
            raise DataError(f"data directory {self.root} is empty")
        images = [p for p in files if _is_image(p.name)]
        if not images:
            raise _no_images_error(self.root, suffixes)
        return [(p, -1) for p in images]

    def _scan_labelled(self) -> list[tuple[Path, int]]:
        entries = sorted(e for e in os.listdir(self.root) if not e.startswith("."))
        if not entries:
            raise DataError(f"data directory {self.root} is empty")
        self.classes = [e for e in entries if (self.root / e).is_dir()]
        if not self.classes:
            raise DataError(
                f"data directory {self.root} has no class subfolders (data.name=image_folder expects "
                f"root/CLASS/image.jpg); use data.name=folder for unlabelled images"
            )
        samples: list[tuple[Path, int]] = []
        for idx, cls in enumerate(self.classes):
            files, suffixes = _walk(self.root / cls)
            images = [p for p in files if _is_image(p.name)]
            if not images:
                if not files:
                    raise DataError(f"class folder {self.root / cls} is empty (no images)")
                raise _no_images_error(self.root / cls, suffixes)
            samples.extend((p, idx) for p in images)
        return samples

    def _verify(self, samples: list[tuple[Path, int]]) -> list[tuple[Path, int]]:
        kept: list[tuple[Path, int]] = []
        reasons: list[str] = []
        for path, label in samples:
            try:
                _check_header(path, self.min_size)
            except DataError as e:
                if self.bad_files == "error":
                    raise
                self.skipped.append(str(path))
                reasons.append(str(e))
                continue
            kept.append((path, label))
        if self.skipped:
            first = "; ".join(reasons[:3])
            more = f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else ""
            warnings.warn(f"skipped {len(self.skipped)} of {len(samples)} files under {self.root} "
                          f"(data.bad_files=skip): {first}{more}", BadFileWarning, stacklevel=3)
        if not kept:
            raise DataError(f"every image under {self.root} was skipped as unreadable or too small")
        return kept

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> np.ndarray:
        return np.array([label for _, label in self.samples], dtype=np.int64)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        n = len(self.samples)
        for step in range(n):
            path, label = self.samples[(i + step) % n]
            try:
                return load_image(path, self.channels, self.min_size), label
            except DataError as e:
                if self.bad_files == "error":
                    raise
                warnings.warn(f"{e}; using the next image instead (data.bad_files=skip)", BadFileWarning,
                              stacklevel=2)
        raise DataError(f"no image under {self.root} could be decoded")
