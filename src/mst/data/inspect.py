"""What a data directory holds: its kind (Fashion-MNIST IDX files, class subfolders, loose images), the band counts
and sizes of its files (headers only), and per-channel statistics measured on a seeded sample.

``mst.autoconfig`` turns these into the config's data-derived values; nothing here reads a config.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .fashion_mnist import _FILES
from .folders import BandMismatchError, DataError, _is_image, _walk, load_image
from .formats import extensions, format_for
from .readers import read_header

SPLITS = ("train", "val", "test")


def has_idx_files(root: Path) -> bool:
    return all((root / f).is_file() or (root / f"{f}.gz").is_file() for f in _FILES["train"])


def _holds_images(folder: Path) -> bool:
    exts = extensions()
    return any(_is_image(e, exts) and not e.startswith(".") and (folder / e).is_file() for e in os.listdir(folder))


def _image_subdirs(folder: Path, exclude: tuple[str, ...] = ()) -> tuple[list[str], list[str], bool]:
    """(subfolders holding images directly, other non-hidden subfolders, whether ``folder`` holds images itself)."""
    entries = sorted(e for e in os.listdir(folder) if not e.startswith("."))
    dirs = [e for e in entries if (folder / e).is_dir() and e not in exclude]
    with_images = [d for d in dirs if _holds_images(folder / d)]
    return with_images, [d for d in dirs if d not in with_images], _holds_images(folder)


def detect_kind(root: str | Path, labels: bool = True) -> tuple[str, str]:
    """(data.name, why) for ``root``: IDX files -> fashion_mnist; class subfolders (of ``root`` or of ``root/train``:
    two or more, each holding images directly, and no loose images beside them) -> image_folder; anything else
    (loose images, deeper nesting such as year/month/) -> folder (unlabelled).

    ``labels=False`` (pretraining, which needs no labels) takes subfolders as classes only when the folder has its
    own test split (``val/`` or ``test/``): without one, a labelled folder keeps ``data.holdout`` of every class out
    of training, and chunk folders (``d0000/ d0001/ ...``) are no classes. Such a folder is one unlabelled folder
    that pretrains on every image; ``data.name=image_folder`` pins the classes (and the held-out share)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data directory {root} does not exist; check --data / data.root")
    if not root.is_dir():
        raise DataError(f"data root {root} is not a directory")
    if has_idx_files(root):
        return "fashion_mnist", "Fashion-MNIST IDX files"
    from .dataset import split_layout

    split_dirs = [s for s in SPLITS if (root / s).is_dir()]
    where, test, skip = split_layout(root)  # the train split as build_dataset reads it
    classes, others, loose = _image_subdirs(where, exclude=skip)
    splits = f" (splits: {', '.join(split_dirs)})" if split_dirs else ""
    if len(classes) >= 2 and not loose and not others:
        shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
        if labels or test is not None:
            return "image_folder", f"{len(classes)} class subfolders: {shown}{splits}"
        return "folder", (f"{len(classes)} subfolders ({shown}) and no val/ or test/ split: one unlabelled folder, "
                          "every image pretrains; to take the subfolders as classes (their data.holdout share then "
                          "stays out of pretraining as the test split) --set data.name=image_folder")
    return "folder", f"unlabelled images{splits}"


@dataclass
class FolderScan:
    """Headers of (a seeded sample of) a folder's images."""

    root: Path
    n_files: int
    sampled: int
    bands: Counter = field(default_factory=Counter)  # data bands (alpha excluded) -> files
    alpha: int = 0  # files with an alpha band
    alpha_tiff: list[str] = field(default_factory=list)  # those whose alpha tag may mark data (TIFF: RGB + NIR)
    high_bit: int = 0  # files of more than 8 bits per sample
    short_sides: list[int] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    example: dict[int, str] = field(default_factory=dict)  # band count -> one file with it
    files: list[Path] = field(default_factory=list)  # every image file found (the statistics sample from them)

    def median_side(self) -> int:
        return int(np.median(self.short_sides)) if self.short_sides else 0

    def channels(self) -> int:
        """1 if every file is grey, 3 if the files are grey or colour, N if all have N bands; else an error."""
        counts = set(self.bands)
        if not counts:
            raise DataError(f"no readable image under {self.root} (first errors: {'; '.join(self.unreadable[:2])})")
        if counts <= {1}:
            return 1
        if counts <= {1, 3}:
            return 3
        if len(counts) == 1:
            return counts.pop()
        listed = ", ".join(f"{b} bands: {n} files (e.g. {self.example[b]})" for b, n in sorted(self.bands.items()))
        raise DataError(f"the images under {self.root} have different band counts ({listed}); keep one band count "
                        "per folder, or set data.channels (files that differ are then errors naming them)")

    def smaller_than(self, size: int) -> int:
        """Sampled files whose shorter side is below ``size``, scaled to the whole folder."""
        n = sum(1 for s in self.short_sides if s < size)
        return round(n * self.n_files / max(1, self.sampled))


def image_files(root: Path, exclude: tuple[str, ...] = ()) -> list[Path]:
    files, _ = _walk(root)
    exts = extensions()
    return [p for p in files if _is_image(p.name, exts) and p.relative_to(root).parts[0] not in exclude]


def scan_folder(root: str | Path, max_files: int = 2000, seed: int = 0, exclude: tuple[str, ...] = (),
                alpha: str = "black") -> FolderScan:
    """Read the headers of up to ``max_files`` images under ``root`` (a seeded sample when there are more), leaving
    out the top-level folders ``exclude`` (a test split beside the train images). ``alpha``: data.alpha (``keep``
    counts an alpha band as a band)."""
    root = Path(root)
    files = image_files(root, exclude)
    if not files:
        raise DataError(f"data directory {root} holds no images (supported: {' '.join(extensions())})")
    chosen = files
    if len(files) > max_files:
        idx = np.sort(np.random.default_rng(seed).choice(len(files), max_files, replace=False))
        chosen = [files[i] for i in idx]
    scan = FolderScan(root, len(files), len(chosen), files=files)
    for path in chosen:
        try:
            h = read_header(path)
        except Exception as e:  # noqa: BLE001 - reported by the dataset's own check, with the file named
            scan.unreadable.append(f"{path}: {type(e).__name__}: {e}")
            continue
        bands = h.bands + int(h.alpha and alpha == "keep")
        scan.bands[bands] += 1
        scan.example.setdefault(bands, str(path))
        scan.alpha += int(h.alpha)
        if h.alpha and format_for(path).alpha_may_be_data:
            scan.alpha_tiff.append(str(path))
        scan.high_bit += int(h.bits > 8)
        scan.short_sides.append(min(h.width, h.height))
    return scan


def measure_stats(files: list[Path], channels: int, max_images: int = 256, seed: int = 0, alpha: str = "black",
                  ) -> tuple[list[float], list[float], int]:
    """Per-channel mean and std over every pixel of a seeded sample of images, as the pipeline reads them (8-bit
    data / 255; multiband floats as loaded), and the number of images measured. Unreadable files are left out
    (the dataset's own check names them)."""
    if len(files) > max_images:
        files = [files[i] for i in np.sort(np.random.default_rng(seed).choice(len(files), max_images, replace=False))]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    count = 0
    used = 0
    for path in files:
        try:
            img = load_image(path, channels, alpha=alpha)
        except BandMismatchError:
            raise  # a file unlike data.channels: named now, not left out of the statistics
        except DataError:
            continue
        if isinstance(img, Image.Image):
            arr = np.asarray(img, dtype=np.float64) / 255.0
            arr = arr.reshape(-1, channels)
        else:
            arr = img.double().numpy().reshape(channels, -1).T
        total += arr.sum(0)
        total_sq += (arr ** 2).sum(0)
        count += arr.shape[0]
        used += 1
    if not count:
        raise DataError(f"no image of {files[0].parent if files else 'the folder'} could be read to measure "
                        "data.mean / data.std")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    std = np.where(std > 1e-6, std, 1.0)  # a constant band: keep its values, do not divide by ~0
    return [_round(v) for v in mean], [_round(v) for v in std], used


def _round(v: float) -> float:
    """4 significant digits: readable in the config, exact enough for 12-bit data in a 16-bit range."""
    return float(f"{float(v):.4g}")


__all__ = ["FolderScan", "detect_kind", "has_idx_files", "image_files", "measure_stats",
           "scan_folder"]
