"""Fashion-MNIST from its IDX files, parsed with numpy (no download, no torchvision dataset class).

Reading the four IDX files directly keeps the data path offline and lets a truncated or wrong file fail
with a message naming it, instead of a cryptic reshape error deep inside a loader.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from PIL import Image

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"

CLASSES: list[str] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_HOW_TO_GET = (
    "install them with `apt-get install dataset-fashion-mnist` (Debian), or download the four IDX files "
    "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    "t10k-labels-idx1-ubyte.gz) into a directory and pass `--data DIR` (config key data.root)"
)


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an unsigned-byte IDX file (optionally gzipped) into a uint8 array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip raises these for truncated / non-gzip content
        raise ValueError(f"IDX file {path} could not be read: {e}") from e
    if len(raw) < 4:
        raise ValueError(f"IDX file {path} is truncated: {len(raw)} bytes, no header")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"IDX file {path} has a bad magic number {raw[:4].hex()} (expected 0000XXNN)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise ValueError(f"IDX file {path} has data type 0x{dtype_code:02x}; only unsigned byte (0x08) is supported")
    if ndim == 0:
        raise ValueError(f"IDX file {path} declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {path} is truncated: header needs {header} bytes, file has {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "longer than declared"
        raise ValueError(
            f"IDX file {path} is {kind}: dims {dims} need {expected} bytes, file has {len(raw)}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"Fashion-MNIST file {root / (stem + '.gz')} (or {root / stem}) not found; {_HOW_TO_GET}")


def load_fashion_mnist(root: str | Path | None = None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (N, 28, 28), labels int64 (N,)) for split 'train' or 'test'."""
    if split not in _FILES:
        raise ValueError(f"Fashion-MNIST split {split!r} is not one of train, test")
    root = Path(root if root is not None else DEFAULT_ROOT)
    if not root.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST directory {root} not found; {_HOW_TO_GET}")
    img_path, lbl_path = (_find(root, stem) for stem in _FILES[split])
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError(f"{img_path} / {lbl_path}: expected 3-d images and 1-d labels, got {images.shape} / {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{img_path} has {len(images)} images but {lbl_path} has {len(labels)} labels")
    if labels.size and labels.max() >= len(CLASSES):
        raise ValueError(f"{lbl_path} holds label {labels.max()}, outside 0..{len(CLASSES) - 1}")
    return images, labels.astype(np.int64)


class ArrayDataset(torch.utils.data.Dataset):
    """(PIL image, int label) pairs from an in-memory uint8 array (N, H, W) or (N, H, W, 3)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None, channels: int = 1) -> None:
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"ArrayDataset needs uint8 (N,H,W) or (N,H,W,3) images, got {images.dtype} {images.shape}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.full(len(images), -1, np.int64) if labels is None else np.asarray(labels, np.int64)
        self.channels = channels

    def __len__(self) -> int:
        return len(self.images)

    @property
    def targets(self) -> np.ndarray:
        return self.labels

    def uint8_batch(self, indices) -> tuple[np.ndarray, np.ndarray] | None:
        """(uint8 (B, C, H, W), labels) for many indices at once, or None when a channel conversion is needed
        (then go through PIL per image, as ``__getitem__``). The fast path of the tensor augmentation backend."""
        gray = self.images.ndim == 3
        if gray != (self.channels == 1):
            return None
        idx = np.asarray(indices, dtype=np.int64)
        arr = self.images[idx]
        arr = arr[:, None] if gray else arr.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(arr), self.labels[idx]

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        img = Image.fromarray(self.images[i])
        img = img.convert("RGB" if self.channels == 3 else "L")
        return img, int(self.labels[i])


class FashionMNIST(ArrayDataset):
    """Fashion-MNIST as (PIL 'L' image, label); channels=3 repeats the gray level into RGB."""

    classes = CLASSES

    def __init__(self, root: str | Path | None = None, split: str = "train", channels: int = 1) -> None:
        images, labels = load_fashion_mnist(root, split)
        super().__init__(images, labels, channels)
        self.split = split
