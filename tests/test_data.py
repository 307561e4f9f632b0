"""Fashion-MNIST IDX reader and image-folder datasets (modes, errors, skip policy)."""
from __future__ import annotations

import gzip
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from mst.data import (
    CLASSES,
    DEFAULT_ROOT,
    BadFileWarning,
    DataError,
    FashionMNIST,
    ImageFolderDataset,
    load_fashion_mnist,
    read_idx,
)

HAVE_FMNIST = Path(DEFAULT_ROOT, "train-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason=f"Fashion-MNIST not installed at {DEFAULT_ROOT}")


def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def gray(value: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    return Image.new("L", size, value)


def m(path: Path) -> str:
    return re.escape(str(path))


# ----------------------------------------------------------------------------------------- Fashion-MNIST


@needs_fmnist
def test_fashion_mnist_train_shapes_and_balance():
    images, labels = load_fashion_mnist(split="train")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and labels.dtype == np.int64
    assert labels.min() == 0 and labels.max() == 9
    assert np.bincount(labels).tolist() == [6000] * 10
    assert images.max() == 255 and images.min() == 0
    assert abs(images.mean() / 255 - 0.2860) < 1e-3  # the data.mean default


@needs_fmnist
def test_fashion_mnist_test_split():
    images, labels = load_fashion_mnist(DEFAULT_ROOT, split="test")
    assert images.shape == (10000, 28, 28)
    assert np.bincount(labels).tolist() == [1000] * 10
    assert len(CLASSES) == 10 and CLASSES[9] == "Ankle boot"


@needs_fmnist
def test_fashion_mnist_dataset_pil():
    ds = FashionMNIST(split="test", channels=1)
    img, label = ds[0]
    assert img.mode == "L" and img.size == (28, 28) and label == int(ds.labels[0])
    assert np.array_equal(np.asarray(img), ds.images[0])
    rgb, _ = FashionMNIST(split="test", channels=3)[0]
    arr = np.asarray(rgb)
    assert rgb.mode == "RGB" and np.array_equal(arr[..., 1], ds.images[0]) and np.array_equal(arr[..., 0], arr[..., 2])


def test_read_idx_round_trip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(idx_bytes(arr))
    assert np.array_equal(read_idx(tmp_path / "a.idx"), arr)
    with gzip.open(tmp_path / "a.idx.gz", "wb") as f:
        f.write(idx_bytes(arr))
    out = read_idx(tmp_path / "a.idx.gz")
    assert out.dtype == np.uint8 and np.array_equal(out, arr)


def test_read_idx_bad_files(tmp_path):
    arr = np.zeros((2, 3, 3), np.uint8)
    short = tmp_path / "short-idx3-ubyte"
    short.write_bytes(idx_bytes(arr)[:-5])
    with pytest.raises(ValueError, match=m(short) + ".*truncated"):
        read_idx(short)
    magic = tmp_path / "magic-idx3-ubyte"
    magic.write_bytes(b"\x01\x02" + idx_bytes(arr)[2:])
    with pytest.raises(ValueError, match=m(magic) + ".*magic"):
        read_idx(magic)
    wrong_type = tmp_path / "float-idx3-ubyte"
    wrong_type.write_bytes(b"\x00\x00\x0d" + idx_bytes(arr)[3:])
    with pytest.raises(ValueError, match=m(wrong_type) + ".*0x0d"):
        read_idx(wrong_type)
    gz = tmp_path / "cut.gz"
    gz.write_bytes(gzip.compress(idx_bytes(np.ones((50, 50), np.uint8)))[:30])
    with pytest.raises(ValueError, match=m(gz)):
        read_idx(gz)


def test_load_fashion_mnist_uncompressed_and_missing(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(imgs))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([0, 1, 2, 9, 3])))
    x, y = load_fashion_mnist(tmp_path, "test")
    assert np.array_equal(x, imgs) and y.tolist() == [0, 1, 2, 9, 3] and y.dtype == np.int64
    with pytest.raises(FileNotFoundError, match=m(tmp_path / "train-images-idx3-ubyte.gz") + ".*apt-get install "
                       "dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path, "train")
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=m(missing) + ".*apt-get install dataset-fashion-mnist.*--data"):
        load_fashion_mnist(missing)
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist(tmp_path, "val")


# ----------------------------------------------------------------------------------------- folders


def test_labelled_folder_classes(tmp_path):
    save(gray(10), tmp_path / "dog" / "b.jpg")
    save(gray(20), tmp_path / "cat" / "a.PNG")
    save(gray(30), tmp_path / "dog" / "deeper" / "c.webp", lossless=True)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    save(gray(40), tmp_path / "dog" / ".hidden.png")
    ds = ImageFolderDataset(tmp_path, labelled=True, channels=1)
    assert ds.classes == ["cat", "dog"]
    assert [p.name for p, _ in ds.samples] == ["a.PNG", "b.jpg", "c.webp"]
    assert ds.targets.tolist() == [0, 1, 1]
    img, label = ds[2]
    assert label == 1 and img.mode == "L" and np.asarray(img).mean() == 30


def test_unlabelled_nested_folder(tmp_path):
    save(gray(1), tmp_path / "a" / "b" / "c" / "x.tif")
    save(gray(2), tmp_path / "y.BMP")
    save(gray(3), tmp_path / "a" / "z.jpeg")
    (tmp_path / "readme.md").write_text("hi")
    ds = ImageFolderDataset(tmp_path, labelled=False, channels=3)
    assert len(ds) == 3 and ds.targets.tolist() == [-1, -1, -1] and ds.classes == []
    img, label = ds[0]
    assert label == -1 and img.mode == "RGB" and img.size == (32, 32)


def _mode_images() -> dict[str, tuple[Image.Image, tuple[int, int, int], int]]:
    """mode -> (image whose pixels are all one colour, expected RGB, expected L)."""
    la = Image.merge("LA", [gray(200), gray(128)])  # half transparent onto black: 200 * 128/255 = 100.4
    rgba = Image.new("RGBA", (32, 32), (0, 255, 0, 255))
    p = Image.new("RGB", (32, 32), (255, 0, 0)).convert("P")
    i16 = Image.fromarray(np.full((32, 32), 65535, np.uint16))
    return {
        "L": (gray(77), (77, 77, 77), 77),
        "LA": (la, (100, 100, 100), 100),
        "RGB": (Image.new("RGB", (32, 32), (255, 0, 0)), (255, 0, 0), 76),  # luma 0.299 * 255
        "RGBA": (rgba, (0, 255, 0), 150),  # luma 0.587 * 255
        "P": (p, (255, 0, 0), 76),
        "I;16": (i16, (255, 255, 255), 255),
        "1": (Image.new("1", (32, 32), 1), (255, 255, 255), 255),
    }


@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_converted(tmp_path, channels):
    cases = _mode_images()
    for mode, (img, _, _) in cases.items():
        assert img.mode == mode
        save(img, tmp_path / f"{mode.replace(';', '_')}.png")
        assert Image.open(tmp_path / f"{mode.replace(';', '_')}.png").mode == mode  # PNG kept the mode
    half = Image.fromarray(np.full((32, 32), 32768, np.uint16))
    save(half, tmp_path / "half16.tiff")
    save(Image.fromarray(np.full((32, 32), 0.5, np.float32)), tmp_path / "float.tif")
    ds = ImageFolderDataset(tmp_path, labelled=False, channels=channels)
    by_name = {p.stem: ds[i][0] for i, (p, _) in enumerate(ds.samples)}
    for mode, (_, rgb, lum) in cases.items():
        out = by_name[mode.replace(";", "_")]
        arr = np.asarray(out)
        if channels == 3:
            assert out.mode == "RGB" and arr.shape == (32, 32, 3), mode
            assert np.abs(arr.astype(int) - rgb).max() <= 1, (mode, arr[0, 0])
        else:
            assert out.mode == "L" and arr.shape == (32, 32), mode
            assert np.abs(arr.astype(int) - lum).max() <= 1, (mode, arr[0, 0])
    for name, value in (("half16", 32768 / 65535), ("float", 0.5)):  # TIFF (tifffile): full precision, not 8 bits
        x = by_name[name]
        assert torch.is_tensor(x) and x.shape == (channels, 32, 32) and x.dtype == torch.float32, name
        assert torch.allclose(x, torch.full_like(x, value)), name


def test_transparent_composited_on_black(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:4, :, 3] = 255  # top half opaque white, bottom half fully transparent white
    save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png")
    out = np.asarray(ImageFolderDataset(tmp_path, labelled=False, channels=3)[0][0])
    assert (out[:4] == 255).all() and (out[4:] == 0).all()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    skd = pytest.importorskip("skimage.data")
    return Image.fromarray(skd.astronaut()).resize((128, 128), Image.BICUBIC)


@pytest.mark.parametrize("ext,lossless", [(".jpg", False), (".png", True), (".webp", False), (".tiff", True),
                                          (".bmp", True)])
def test_real_photo_formats(tmp_path, photo, ext, lossless):
    save(photo, tmp_path / f"astronaut{ext}")
    rgb, label = ImageFolderDataset(tmp_path, labelled=False, channels=3)[0]
    assert rgb.size == (128, 128) and rgb.mode == "RGB" and label == -1
    diff = np.abs(np.asarray(rgb).astype(int) - np.asarray(photo).astype(int))
    assert diff.max() == 0 if lossless else diff.mean() < 8
    gray_img, _ = ImageFolderDataset(tmp_path, labelled=False, channels=1)[0]
    ref = np.asarray(photo.convert("L")).astype(int)
    assert gray_img.mode == "L" and np.abs(np.asarray(gray_img).astype(int) - ref).mean() < 8


def test_folder_errors(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(DataError, match=m(missing) + " does not exist"):
        ImageFolderDataset(missing, labelled=False, channels=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    for labelled in (False, True):
        with pytest.raises(DataError, match=m(empty) + " is empty"):
            ImageFolderDataset(empty, labelled=labelled, channels=1)
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("x")
    (texts / "b.gif").write_bytes(b"GIF89a")
    with pytest.raises(DataError, match=m(texts) + r" has no images with a supported extension \(\.jpg, \.jpeg, "
                       r"\.png, \.bmp, \.tif, \.tiff, \.webp.*found: .*\.gif"):
        ImageFolderDataset(texts, labelled=False, channels=1)
    flat = tmp_path / "flat"
    save(gray(5), flat / "a.png")
    with pytest.raises(DataError, match=m(flat) + " has no class subfolders.*data.name=folder"):
        ImageFolderDataset(flat, labelled=True, channels=1)
    classes = tmp_path / "classes"
    save(gray(5), classes / "cat" / "a.png")
    (classes / "dog").mkdir()
    with pytest.raises(DataError, match=m(classes / "dog") + " is empty"):
        ImageFolderDataset(classes, labelled=True, channels=1)
    (classes / "dog" / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match=m(classes / "dog") + " has no images"):
        ImageFolderDataset(classes, labelled=True, channels=1)


def test_corrupt_small_and_truncated_files(tmp_path):
    corrupt = tmp_path / "c" / "corrupt.jpg"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(DataError, match=m(corrupt) + " cannot be opened"):
        ImageFolderDataset(tmp_path / "c", labelled=False, channels=1)

    small = save(gray(9, (20, 30)), tmp_path / "s" / "small.png")
    ImageFolderDataset(tmp_path / "s", labelled=False, channels=1, min_size=20)  # exactly min_size is fine
    with pytest.raises(DataError, match=m(small) + r" is 20x30, smaller than the global crop 28 px; resize it or "
                       r"lower model.img_size"):
        ImageFolderDataset(tmp_path / "s", labelled=False, channels=1, min_size=28)

    for ext in (".jpg", ".png"):
        full = tmp_path / f"full{ext}"
        save(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)), full)
        cut = tmp_path / f"t{ext}" / f"trunc{ext}"
        cut.parent.mkdir()
        cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        ds = ImageFolderDataset(cut.parent, labelled=False, channels=3)  # the header is intact
        with pytest.raises(DataError, match=m(cut) + " cannot be decoded"):
            ds[0]
        ImageFile.LOAD_TRUNCATED_IMAGES = True  # even if someone else enabled it, truncation is an error
        try:
            with pytest.raises(DataError, match=m(cut)):
                ds[0]
            assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # and their setting is restored
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_skip_policy(tmp_path):
    for v in (10, 20, 30):
        save(gray(v), tmp_path / f"good{v}.png")
    (tmp_path / "bad1.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "bad2.jpg").write_bytes(b"")
    save(gray(1, (10, 40)), tmp_path / "tiny.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ImageFolderDataset(tmp_path, labelled=False, channels=1, bad_files="skip", min_size=16)
    ours = [w for w in caught if issubclass(w.category, BadFileWarning)]
    assert len(ours) == 1
    msg = str(ours[0].message)
    assert "skipped 3 of 6 files" in msg and str(tmp_path / "bad1.png") in msg and "tiny.png" in msg
    assert len(ds) == 3
    assert sorted(Path(p).name for p in ds.skipped) == ["bad1.png", "bad2.jpg", "tiny.png"]
    assert [int(np.asarray(ds[i][0]).mean()) for i in range(3)] == [10, 20, 30]

    with pytest.raises(DataError, match=m(tmp_path / "bad1.png")):
        ImageFolderDataset(tmp_path, labelled=False, channels=1, bad_files="error")


def test_skip_truncated_at_getitem_uses_next(tmp_path):
    rng = np.random.default_rng(1)
    for name, v in (("a", 50), ("b", 0), ("c", 150)):
        arr = rng.integers(0, 256, (48, 48), dtype=np.uint8) if name == "b" else np.full((48, 48), v, np.uint8)
        save(Image.fromarray(arr), tmp_path / f"{name}.png")
    data = (tmp_path / "b.png").read_bytes()
    (tmp_path / "b.png").write_bytes(data[: len(data) // 2])
    ds = ImageFolderDataset(tmp_path, labelled=False, channels=1, bad_files="skip")
    assert len(ds) == 3 and ds.skipped == []  # the header check cannot see the truncation
    with pytest.warns(BadFileWarning, match=m(tmp_path / "b.png") + ".*next image"):
        img, _ = ds[1]
    assert np.asarray(img).mean() == 150  # c.png replaced b.png
    (tmp_path / "c.png").write_bytes(data[: len(data) // 3])
    with pytest.warns(BadFileWarning):
        img, _ = ds[2]  # c truncated too: wraps around to a.png
    assert np.asarray(img).mean() == 50
