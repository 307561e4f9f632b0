"""File formats are a registry: a reader registered here (``.npy`` arrays) is picked up by the folder scan, checked
by its header, loaded by the dataset with its exact values, and listed in every "supported extensions" error; it
is unregistered afterwards so no other test sees it."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from mst.data import DataError, ImageFolderDataset, load_image
from mst.data.formats import FORMATS, Format, Header, extensions, format_for
from mst.data.inspect import detect_kind, scan_folder


def npy_header(path: Path) -> Header:
    arr = np.load(path, mmap_mode="r", allow_pickle=False)  # shape and dtype only: no pixels read
    bands = arr.shape[2] if arr.ndim == 3 else 1
    return Header(int(arr.shape[1]), int(arr.shape[0]), int(bands), False, 8 * arr.dtype.itemsize)


def read_npy(path: Path) -> tuple[np.ndarray, bool]:
    return np.load(path, allow_pickle=False), False


@pytest.fixture
def npy_format():
    FORMATS.register("npy", Format((".npy",), npy_header, read_npy))
    try:
        yield FORMATS.get("npy")
    finally:
        FORMATS.unregister("npy")


def write_arrays(root: Path, classes=("a", "b"), per_class: int = 3, shape=(12, 10, 2)) -> dict[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    saved = {}
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.normal(size=shape).astype(np.float32)
            np.save(root / c / f"{i}.npy", arr, allow_pickle=False)
            saved[root / c / f"{i}.npy"] = arr
    return saved


def test_registered_reader_is_scanned_and_loaded(npy_format, tmp_path):
    saved = write_arrays(tmp_path / "data")
    root = tmp_path / "data"
    assert ".npy" in extensions() and format_for("x.NPY") is npy_format
    assert detect_kind(root)[0] == "image_folder"
    scan = scan_folder(root)
    assert scan.n_files == 6 and scan.bands == {2: 6} and scan.high_bit == 6 and scan.channels() == 2
    assert scan.median_side() == 10 and sorted(scan.files) == sorted(saved)
    ds = ImageFolderDataset(root, labelled=True, channels=2, min_size=10)
    assert ds.classes == ["a", "b"] and len(ds) == 6 and list(ds.targets) == [0, 0, 0, 1, 1, 1]
    for i, (path, label) in enumerate(ds.samples):
        img, got_label = ds[i]
        assert got_label == label
        np.testing.assert_array_equal(img.numpy(), saved[path].transpose(2, 0, 1))  # float32: exactly as saved
    with pytest.raises(DataError, match="smaller than the global crop 11"):
        ImageFolderDataset(root, labelled=True, channels=2, min_size=11)  # the header's size is checked
    with pytest.raises(DataError, match="has 2 bands but data.channels=3"):
        ImageFolderDataset(root, labelled=True, channels=3)  # ... and its band count


def test_grey_arrays_load_as_one_band(npy_format, tmp_path):
    arr = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    np.save(tmp_path / "g.npy", arr)
    np.testing.assert_allclose(load_image(tmp_path / "g.npy", 1).numpy()[0], arr / 65535.0)  # 2-D: one band


def _listed(message: str, pattern: str, sep: str) -> list[str]:
    return re.search(pattern, message).group(1).split(sep)


def test_unsupported_files_error_lists_exactly_the_registered_extensions(tmp_path):
    root = tmp_path / "texts"
    root.mkdir()
    (root / "a.txt").write_text("x")
    (root / "b.npy").write_bytes(b"")

    def messages() -> tuple[str, str]:
        with pytest.raises(DataError) as folder:
            ImageFolderDataset(root, labelled=False, channels=1)
        with pytest.raises(DataError) as scan:
            scan_folder(root)
        return (_listed(str(folder.value), r"supported extension \((.*), any case\)", ", "),
                _listed(str(scan.value), r"supported: (.*)\)", " "))

    built_in = list(extensions())
    assert ".npy" not in built_in and ".dicom" in built_in
    assert messages() == (built_in, built_in)
    FORMATS.register("npy", Format((".npy",), npy_header, read_npy))
    try:
        assert extensions() == (*built_in, ".npy")
        (root / "b.npy").unlink()  # now a supported file: no longer in the folder for the error
        assert messages() == (built_in + [".npy"], built_in + [".npy"])
    finally:
        FORMATS.unregister("npy")
    assert list(extensions()) == built_in


def test_two_formats_claiming_one_suffix_is_an_error(tmp_path):
    FORMATS.register("tiff2", Format((".tif",), npy_header, read_npy))
    try:
        with pytest.raises(ValueError, match="tiff and tiff2 both claim .tif"):
            format_for(tmp_path / "x.tif")
    finally:
        FORMATS.unregister("tiff2")
