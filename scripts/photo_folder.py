"""Folders of real photos for trying `mst` on your own kind of data, cut from the photos bundled with scikit-image.

    python scripts/photo_folder.py OUT [--per-class 50] [--seed 0]

writes OUT/unlabelled (nested folders, JPEG / PNG / WebP / TIFF, some RGBA and some greyscale, 64-160 px),
OUT/labelled/{train,val}/CLASS (other crops of the same photos; the class is the photo a crop came from) and OUT/multiband/{4,13}band/{train,val}/CLASS
(uint16 TIFFs: a photo's RGB plus bands mixed from it, written with tifffile). The tests build small versions.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "colorwheel")
FORMATS = (".jpg", ".png", ".webp", ".jpg", ".png", ".tiff")


def photo(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)()[..., :3]


def random_crop(img: np.ndarray, rng: np.random.Generator, low: int = 64, high: int = 160) -> np.ndarray:
    """A crop of side ``low``..``high`` px (aspect 3:4 to 4:3) from a random window of 1-2.5x that size, resized."""
    h, w = img.shape[:2]
    side = int(rng.integers(low, high + 1))
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    out_w, out_h = max(low, int(round(side * aspect))), side
    zoom = rng.uniform(1.0, 2.5)
    win_w, win_h = min(w, int(out_w * zoom)), min(h, int(out_h * zoom))
    x0, y0 = int(rng.integers(0, w - win_w + 1)), int(rng.integers(0, h - win_h + 1))
    window = Image.fromarray(img[y0 : y0 + win_h, x0 : x0 + win_w])
    return np.asarray(window.resize((out_w, out_h), Image.BICUBIC))


def _save_variant(arr: np.ndarray, path: Path, k: int) -> Path:
    """Every 7th file RGBA (opaque except a transparent corner), every 11th greyscale, else RGB; format by k."""
    ext = FORMATS[k % len(FORMATS)]
    img = Image.fromarray(arr)
    if k % 11 == 3:
        img = img.convert("L")
    elif k % 7 == 2:
        ext = ".png"
        rgba = np.dstack([arr, np.full(arr.shape[:2], 255, np.uint8)])
        rgba[:8, :8, 3] = 0
        img = Image.fromarray(rgba, "RGBA")
    path = path.with_suffix(ext)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **({"quality": 92} if ext in (".jpg", ".webp") else {}))
    return path


def make_photo_folders(out: str | Path, per_class: int = 50, seed: int = 0, val_share: float = 0.4,
                       photos: tuple[str, ...] = PHOTOS) -> dict[str, Path]:
    """The unlabelled and labelled folders (see the module docstring); returns their paths."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    k = 0
    for c, name in enumerate(photos):
        src = photo(name)
        n_val = int(round(per_class * val_share))
        for i in range(per_class):
            crop = random_crop(src, rng)
            split = "val" if i < n_val else "train"
            _save_variant(crop, out / "labelled" / split / name / f"{name}_{i:03d}", k)
            nested = out / "unlabelled" / f"batch{c % 3}" / ("a" if i % 2 else "b") / f"img_{k:05d}"
            _save_variant(random_crop(src, rng), nested, k + 1)  # other crops: pretraining never sees a val image
            k += 1
    return {"unlabelled": out / "unlabelled", "labelled": out / "labelled"}


def multiband(arr: np.ndarray, bands: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, bands) uint16: R, G, B, then bands mixed from them with fixed weights (a stand-in
    for near-infrared and other sensors), in the 12-bit range satellites deliver."""
    rgb = arr.astype(np.float64) / 255.0
    mix = np.random.default_rng(bands).uniform(0, 1, (3, max(0, bands - 3)))
    extra = rgb @ mix / np.maximum(mix.sum(0), 1e-6)
    out = np.concatenate([rgb, extra], axis=-1)[..., :bands]
    return np.rint(out * 4095).astype(np.uint16)


def make_multiband_folder(out: str | Path, bands: int, per_class: int = 20, seed: int = 0, val_share: float = 0.4,
                          photos: tuple[str, ...] = PHOTOS[:4], planar: bool = False) -> Path:
    """OUT/{train,val}/CLASS/*.tif with ``bands`` bands each (contiguous samples, or one page per band when
    ``planar``)."""
    import tifffile

    out = Path(out)
    rng = np.random.default_rng(seed)
    for name in photos:
        src = photo(name)
        n_val = int(round(per_class * val_share))
        for i in range(per_class):
            data = multiband(random_crop(src, rng, 48, 96), bands)
            path = out / ("val" if i < n_val else "train") / name / f"{name}_{i:03d}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            if planar:
                tifffile.imwrite(path, np.moveaxis(data, -1, 0), photometric="minisblack")
            else:  # as a user writes them: tifffile tags the 4th sample of an (H, W, 4) array as alpha
                tifffile.imwrite(path, data)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    paths = make_photo_folders(args.out, args.per_class, args.seed)
    for b in (4, 13):
        paths[f"{b}band"] = make_multiband_folder(Path(args.out) / "multiband" / f"{b}band", b, seed=args.seed)
    for k, v in paths.items():
        print(f"{k:10s} {v}")


if __name__ == "__main__":
    main()
