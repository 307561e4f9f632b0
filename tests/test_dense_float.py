"""Float images (16-bit / float TIFF, multiband) in the dense probe and under augment.rand_augment: read per file at
full precision, as pretraining reads them, never quantised to 8 bits; a bad file is one error naming it."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

import mst.eval.dense as dense
from mst.config import load_config
from mst.data import DataError, build_dataset, build_pipeline
from mst.data.single_view import RandAugmentSkipWarning, SingleViewTransform
from mst.eval.dense import make_dense_set, run_dense
from mst.methods import build_method
from tests.conftest import save_method

tifffile = pytest.importorskip("tifffile")

TINY = ["model.depth=1", "dino.out_dim=64", "dino.hidden_dim=64", "dino.bottleneck_dim=32"]  # 28 px, patch 4
SIZE = 14  # item side: canvas 28 // 2


def _png(path: Path, rng) -> None:
    Image.fromarray(rng.integers(0, 256, (18, 22), dtype=np.uint8), mode="L").save(path)


def _u16(path: Path, rng, shape) -> None:
    # odd values far below 65535: an 8-bit copy would hold only 0..4 / 255
    tifffile.imwrite(path, (2 * rng.integers(0, 500, shape) + 1).astype(np.uint16), photometric="minisblack")


@pytest.fixture
def mixed(tmp_path) -> Path:
    """train/ and test/, classes a and b: an 8-bit PNG, a 16-bit TIFF of the item's size, a larger non-square
    16-bit TIFF and a float32 TIFF per class."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            _png(d / "p.png", rng)
            _u16(d / "q_exact.tif", rng, (SIZE, SIZE))
            _u16(d / "r_big.tif", rng, (23, 19))
            tifffile.imwrite(d / "s_float.tif", rng.random((20, 20), dtype=np.float32) * 10 - 5)  # outside [0, 1]
    return tmp_path


def _checkpoint(tmp_path: Path, *extra: str) -> tuple[Path, dict]:
    cfg = load_config(overrides=[*TINY, *extra])
    path = tmp_path / "checkpoint.pt"
    save_method(build_method(cfg), path)
    return path, cfg


def _reference_item(path: Path, channels: int) -> np.ndarray:
    """The full-precision item, computed here from the file: 8-bit files as PIL fits them (/ 255), TIFF integers
    / 65535 (floats as stored), centre square, bicubic antialiased resize in float; channel-last."""
    if path.suffix == ".png":
        with Image.open(path) as im:
            return np.asarray(ImageOps.fit(im.convert("L"), (SIZE, SIZE), Image.Resampling.BICUBIC),
                              dtype=np.float32) / 255.0
    raw = tifffile.imread(path)
    arr = raw.astype(np.float64) / 65535.0 if raw.dtype == np.uint16 else raw.astype(np.float64)
    x = torch.from_numpy(arr.reshape(*raw.shape[:2], -1)).permute(2, 0, 1)[None]  # (1, C, H, W) float64
    h, w = x.shape[-2:]
    side = min(h, w)
    x = x[..., (h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    if side != SIZE:
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bicubic", align_corners=False, antialias=True)
    item = x[0].permute(1, 2, 0).numpy()
    return item[..., 0] if channels == 1 else item


def _capture(monkeypatch) -> list:
    """Record what run_dense feeds the backbone and the tokens it gets back."""
    calls = []
    real = dense.extract_features

    def spy(backbone, x, kind, batch_size, device):
        out = real(backbone, x, kind, batch_size, device)
        calls.append((backbone, x.clone(), out[0]))
        return out

    monkeypatch.setattr(dense, "extract_features", spy)
    return calls


def _reference_canvases(files, labels, n, seed, mean, std, channels, items_per_canvas=(1, 2)):
    """Canvases pasted by hand from the reference items (placements: the seeded draws of make_dense_set, which
    depend on the item count and sizes only), normalised with mean/std."""
    ref = np.stack([_reference_item(f, channels) for f in files])
    _, _, placed = make_dense_set(np.zeros(ref.shape, np.uint8), labels, n, 28, items_per_canvas, seed, None,
                                  return_items=True)
    canv = np.zeros((n, 28, 28, *ref.shape[3:]))
    for i, items in enumerate(placed):
        for j, t, l in items:
            canv[i, t : t + SIZE, l : l + SIZE] = ref[j]
    x = torch.from_numpy(canv)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    m = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    return ((x - m) / s).float(), ref


def test_dense_probe_reads_16bit_and_float_tiffs_at_full_precision(tmp_path, mixed, monkeypatch):
    ckpt, cfg = _checkpoint(tmp_path)
    mean, std = cfg["data"]["mean"], cfg["data"]["std"]
    calls = _capture(monkeypatch)
    res = run_dense(ckpt, data={"name": "image_folder", "root": str(mixed)}, n_train=6, n_test=4,
                    items_per_canvas=(1, 2), epochs=1, batch_size=8, device="cpu", item_pool=None, seed=3,
                    log=lambda s: None)
    assert res["classes"] == ["background", "a", "b"] and res["train_items"] == res["test_items"] == 8
    assert 0.0 <= res["miou"] <= 100.0
    assert len(calls) == 2
    for (backbone, x, tokens), split, n, seed in zip(calls, ("train", "test"), (6, 4), (3, 4)):
        files = sorted((mixed / split).rglob("*.*"))  # class order, then file order: the data module's order
        labels = np.array([0 if f.parent.name == "a" else 1 for f in files])
        ref_x, ref_items = _reference_canvases(files, labels, n, seed, mean, std, 1)
        torch.testing.assert_close(x, ref_x, rtol=0, atol=1e-4)  # float32 vs float64; an 8-bit step is 1e-2
        with torch.no_grad():
            ref_tokens = backbone(ref_x).patches
        torch.testing.assert_close(tokens, ref_tokens, rtol=1e-4, atol=1e-5)
    # every item, pasted or not, is the full-precision reference
    items, _ = dense.folder_items({"name": "image_folder", "root": str(mixed), "channels": 1}, SIZE, None,
                                  log=lambda s: None)
    for split in ("train", "test"):
        files = sorted((mixed / split).rglob("*.*"))
        got = items[split][0]
        assert got.dtype == np.float32 and got.shape == (8, SIZE, SIZE)
        np.testing.assert_allclose(got, np.stack([_reference_item(f, 1) for f in files]), rtol=0, atol=2e-5)
        for k, f in enumerate(files):
            if f.name == "q_exact.tif":  # stored / 65535: values 1..999, which 8 bits would round to 0..4 / 255
                np.testing.assert_allclose(got[k], tifffile.imread(f) / 65535.0, rtol=1e-6, atol=0)
                off_grid = np.abs(got[k] * 255 - np.rint(got[k] * 255)) > 1e-3
                assert got[k].max() < 1001 / 65535 and off_grid.mean() > 0.9
            if f.name == "s_float.tif":  # float values outside [0, 1] are kept, not clipped
                assert got[k].min() < -1 and got[k].max() > 2


def test_dense_items_of_8bit_only_folders_stay_8bit(tmp_path):
    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            _png(tmp_path / c / f"{i}.png", rng)
    items, names = dense.folder_items({"name": "image_folder", "root": str(tmp_path), "channels": 1}, SIZE, None,
                                      log=lambda s: None)
    assert names == ["a", "b"] and items["train"][0].dtype == np.uint8
    f = sorted(tmp_path.rglob("*.png"))
    with Image.open(f[0]) as im:
        ref = np.asarray(ImageOps.fit(im, (SIZE, SIZE), Image.Resampling.BICUBIC))
    all_items = np.concatenate([items["train"][0], items["test"][0]])
    assert any(np.array_equal(a, ref) for a in all_items)


def test_dense_probe_on_a_multiband_folder(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    root = tmp_path / "bands"
    for split in ("train", "test"):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(2):
                data = rng.integers(0, 65536, (16 + i, 17, 4), dtype=np.uint16)
                tifffile.imwrite(d / f"{i}.tif", data, photometric="minisblack", planarconfig="contig")
    mean, std = [0.5, 0.4, 0.3, 0.2], [0.25, 0.2, 0.3, 0.1]
    ckpt, _ = _checkpoint(tmp_path, "data.channels=4", f"data.mean={mean}", f"data.std={std}")
    calls = _capture(monkeypatch)
    res = run_dense(ckpt, data={"name": "image_folder", "root": str(root)}, n_train=5, n_test=3,
                    items_per_canvas=(1, 2), epochs=1, batch_size=8, device="cpu", item_pool=None, seed=0,
                    log=lambda s: None)
    assert res["classes"] == ["background", "a", "b"] and res["train_items"] == res["test_items"] == 4
    for (_, x, tokens), split, n, seed in zip(calls, ("train", "test"), (5, 3), (0, 1)):
        files = sorted((root / split).rglob("*.tif"))
        labels = np.array([0 if f.parent.name == "a" else 1 for f in files])
        ref_x, _ = _reference_canvases(files, labels, n, seed, mean, std, 4)
        assert x.shape == (n, 4, 28, 28) and tokens.shape[:2] == (n, 49)
        torch.testing.assert_close(x, ref_x, rtol=0, atol=1e-5)


def test_dense_probe_names_a_float_file_it_cannot_paste(tmp_path, mixed):
    bad = mixed / "train" / "b" / "t_nan.tif"
    data = np.ones((16, 16), np.float32)
    data[3, 4] = np.nan
    tifffile.imwrite(bad, data)
    ckpt, _ = _checkpoint(tmp_path)
    with pytest.raises(DataError) as err:
        run_dense(ckpt, data={"name": "image_folder", "root": str(mixed)}, n_train=2, n_test=2, epochs=1,
                  device="cpu", item_pool=None, log=lambda s: None)
    msg = str(err.value)
    assert str(bad) in msg and "NaN" in msg and len(msg.splitlines()) == 1


# ------------------------------------------------------------------------------------------- rand_augment


def _finetune_cfg(root: Path, rand_augment: str | None) -> dict:
    return load_config(overrides=["method=finetune", "model.depth=1", "model.img_size=28",
                                  "data.name=image_folder", f"data.root={root}", "data.channels=1",
                                  "data.mean=[0.3]", "data.std=[0.3]", "data.num_workers=0",
                                  f"augment.rand_augment={rand_augment or 'null'}"])


def test_rand_augment_applies_to_8bit_images_and_leaves_float_ones_to_crop_and_flip(mixed):
    spec = "rand-m9-mstd0.5-inc1"
    base = build_dataset({"name": "image_folder", "root": str(mixed), "channels": 1}, "train")
    names = [p.name for p, _ in base.samples]
    with_ra = build_pipeline("single", _finetune_cfg(mixed, spec), base)
    plain = build_pipeline("single", _finetune_cfg(mixed, None), base)
    changed = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(3):
            with_ra.set_epoch(epoch)
            plain.set_epoch(epoch)
            for i, name in enumerate(names):
                (v1, b1, f1), y1, _ = with_ra.dataset[i]
                (v2, b2, f2), y2, _ = plain.dataset[i]
                # the crop and flip draws are the same with and without RandAugment
                assert y1 == y2 and torch.equal(b1, b2) and torch.equal(f1, f2)
                if name.endswith(".tif"):  # float: crop + flip only, at full precision
                    torch.testing.assert_close(v1, v2, rtol=0, atol=0)
                else:
                    changed.append(not torch.equal(v1, v2))
    skipped = [w for w in caught if issubclass(w.category, RandAugmentSkipWarning)]
    assert len(skipped) == 1 and spec in str(skipped[0].message)  # said once, not per image
    assert len(changed) == 6 and sum(changed) >= 3  # the 8-bit images go through RandAugment


def test_rand_augment_float_view_keeps_full_precision():
    t = SingleViewTransform(16, (1.0, 1.0), 0.0, [0.0], [1.0], 1, rand_augment="rand-m9-mstd0.5-inc1")
    x = torch.rand(1, 16, 16) / 100  # 16-bit-like values: all below 3 / 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandAugmentSkipWarning)
        view, box, flip = t(x)
    torch.testing.assert_close(view, x, rtol=0, atol=1e-7)  # a full-image crop at full size is the image itself
    assert box.tolist() == [0.0, 0.0, 1.0, 1.0] and not bool(flip)
