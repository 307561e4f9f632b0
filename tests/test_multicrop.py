"""build_dataset, multi-crop views, eval transform, reproducible per-sample augmentation and crop collation."""
from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from mst.data import (
    CLASSES,
    DEFAULT_ROOT,
    ArrayDataset,
    AugmentedDataset,
    DataError,
    EvalTransform,
    MultiCropTransform,
    blur_kernel_size,
    build_dataset,
    collate_crops,
    sample_seed,
)

from tests.conftest import MEAN1, MEAN3, STD1, STD3, aug  # noqa: E402


def no_aug(**kw) -> dict:
    """Only the random resized crop stays: colour, blur, flip, solarise all off."""
    off = dict(flip_p=0.0, color_jitter_p=0.0, grayscale_p=0.0, blur_p=[0.0, 0.0, 0.0], solarize_p=0.0)
    return aug(**{**off, **kw})


def textured(size=(28, 28), mode="L", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def test_shapes_fashion_setup():
    t = MultiCropTransform(aug(global_size=28, local_size=12, n_local=6), MEAN1, STD1, channels=1)
    views = t(textured())
    assert [tuple(v.shape) for v in views] == [(1, 28, 28)] * 2 + [(1, 12, 12)] * 6
    assert all(v.dtype == torch.float32 and type(v) is torch.Tensor for v in views)


def test_shapes_rgb_setup():
    t = MultiCropTransform(aug(global_size=64, local_size=32, n_local=2), MEAN3, STD3, channels=3)
    views = t(textured((96, 80), "RGB"))
    assert [tuple(v.shape) for v in views] == [(3, 64, 64)] * 2 + [(3, 32, 32)] * 2


def test_mode_mismatch_is_converted():
    t = MultiCropTransform(aug(n_local=1), MEAN1, STD1, channels=1)
    assert [v.shape[0] for v in t(textured(mode="RGB"))] == [1, 1, 1]
    t3 = MultiCropTransform(aug(n_local=1), MEAN3, STD3, channels=3)
    assert [v.shape[0] for v in t3(textured())] == [3, 3, 3]


def test_values_are_normalised():
    t = MultiCropTransform(no_aug(n_local=2), MEAN3, STD3, channels=3)
    views = t(Image.new("RGB", (40, 40), (100, 150, 200)))
    expected = (torch.tensor([100, 150, 200]) / 255 - torch.tensor(MEAN3)) / torch.tensor(STD3)
    for v in views:  # a constant image stays constant under crop + bicubic resize
        assert torch.allclose(v, expected.view(3, 1, 1).expand_as(v), atol=1e-5)
    fm = MultiCropTransform(aug(), MEAN1, STD1, channels=1)(Image.new("L", (28, 28), 0))
    assert torch.allclose(fm[0], torch.full_like(fm[0], -MEAN1[0] / STD1[0]), atol=1e-5)  # black -> -0.81


def test_solarize_on_global2_only():
    t = MultiCropTransform(no_aug(n_local=1, solarize_p=1.0), MEAN1, STD1, channels=1)
    g1, g2, loc = t(Image.new("L", (28, 28), 200))
    norm = lambda x: (x / 255 - MEAN1[0]) / STD1[0]  # noqa: E731
    assert torch.allclose(g1, torch.full_like(g1, norm(200)), atol=1e-5)
    assert torch.allclose(g2, torch.full_like(g2, norm(55)), atol=1e-5)  # 255 - 200
    assert torch.allclose(loc, torch.full_like(loc, norm(200)), atol=1e-5)


def _ops(compose: T.Compose) -> list:
    out = []
    for op in compose.transforms:
        out.extend([(op.p, inner) for inner in op.transforms] if isinstance(op, T.RandomApply) else [(None, op)])
    return out


def test_blur_probabilities_and_gray_jitter():
    t = MultiCropTransform(aug(blur_p=[1.0, 0.1, 0.5], global_size=224, local_size=96), MEAN1, STD1, channels=1)
    for compose, p, k in ((t.global1, 1.0, 23), (t.global2, 0.1, 23), (t.local, 0.5, 11)):
        blurs = [(pp, op) for pp, op in _ops(compose) if isinstance(op, T.GaussianBlur)]
        assert len(blurs) == 1 and blurs[0][0] == p and list(blurs[0][1].kernel_size) == [k, k]
        assert not any(isinstance(op, T.RandomGrayscale) for _, op in _ops(compose))
        jitter = [op for _, op in _ops(compose) if isinstance(op, T.ColorJitter)][0]
        assert jitter.saturation is None and jitter.hue is None and jitter.brightness is not None
    assert sum(isinstance(op, T.RandomSolarize) for _, op in _ops(t.global2)) == 1
    assert not any(isinstance(op, T.RandomSolarize) for _, op in _ops(t.global1) + _ops(t.local))
    t3 = MultiCropTransform(aug(), MEAN3, STD3, channels=3)
    jitter = [op for _, op in _ops(t3.global1) if isinstance(op, T.ColorJitter)][0]
    assert jitter.saturation is not None and jitter.hue is not None
    assert any(isinstance(op, T.RandomGrayscale) for _, op in _ops(t3.local))


def test_blur_kernel_size():
    assert [blur_kernel_size(s) for s in (12, 28, 32, 64, 96, 224)] == [3, 3, 3, 7, 11, 23]


def test_calls_differ():
    t = MultiCropTransform(aug(), MEAN1, STD1, channels=1)
    img = textured()
    torch.manual_seed(0)
    a, b = t(img), t(img)
    assert not torch.equal(a[0], b[0]) and not torch.equal(a[2], b[2])
    assert not torch.equal(a[2], a[3])  # locals differ from one another


def test_crop_larger_than_image():
    t = MultiCropTransform(aug(global_size=28, local_size=12, n_local=2), MEAN3, STD3, channels=3)
    views = t(textured((16, 10), "RGB"))
    assert [tuple(v.shape) for v in views] == [(3, 28, 28)] * 2 + [(3, 12, 12)] * 2


def test_eval_transform():
    e = EvalTransform(28, MEAN1, STD1, channels=1)
    img = textured((40, 60))
    out = e(img)
    assert out.shape == (1, 28, 28) and torch.equal(out, e(img))
    const = e(Image.new("RGB", (50, 30), (90, 90, 90)))
    assert torch.allclose(const, torch.full((1, 28, 28), (90 / 255 - MEAN1[0]) / STD1[0]), atol=1e-5)
    with pytest.raises(ValueError, match="3 values"):
        EvalTransform(28, MEAN1, STD1, channels=3)


@pytest.fixture()
def same_image_dataset():
    """Every sample is the same image, so only (seed, epoch, index) can make crops differ."""
    images = np.repeat(np.asarray(textured())[None], 6, axis=0)
    base = ArrayDataset(images, np.arange(6) % 3)
    return AugmentedDataset(base, MultiCropTransform(aug(n_local=2), MEAN1, STD1, channels=1), seed=7)


def _eq(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_augmented_dataset_reproducible(same_image_dataset):
    ds = same_image_dataset
    ds.set_epoch(3)
    first, label = ds[4]
    assert label == 1 and len(first) == 4
    for i in range(4):
        ds[i]  # other samples in between (another worker order) do not matter
    assert _eq(ds[4][0], first)
    other = AugmentedDataset(ds.base, MultiCropTransform(aug(n_local=2), MEAN1, STD1, channels=1), seed=7)
    other.set_epoch(3)
    assert _eq(other[4][0], first)  # a fresh process / worker with the same seed agrees
    assert not _eq(ds[5][0], first)  # another index
    ds.set_epoch(4)
    assert not _eq(ds[4][0], first)  # another epoch
    other.seed, other.epoch = 8, 3
    assert not _eq(other[4][0], first)  # another seed
    assert len({sample_seed(0, e, i) for e in range(20) for i in range(50)}) == 1000


def test_augmented_dataset_leaves_caller_rng(same_image_dataset):
    torch.manual_seed(123)
    random.seed(5)
    cpu_state, py_state = torch.get_rng_state(), random.getstate()
    same_image_dataset[0]
    same_image_dataset[1]
    assert torch.equal(torch.get_rng_state(), cpu_state) and random.getstate() == py_state
    expected = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), expected)


def test_collate_crops(same_image_dataset):
    batch = [same_image_dataset[i] for i in range(3)]
    views, labels = collate_crops(batch)
    assert [tuple(v.shape) for v in views] == [(3, 1, 28, 28)] * 2 + [(3, 1, 12, 12)] * 2
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 1, 2]
    assert torch.equal(views[2][1], batch[1][0][2])
    loader = torch.utils.data.DataLoader(same_image_dataset, batch_size=4, collate_fn=collate_crops, num_workers=0)
    views, labels = next(iter(loader))
    assert len(views) == 4 and views[0].shape == (4, 1, 28, 28) and labels.tolist() == [0, 1, 2, 0]
    with pytest.raises(ValueError, match="different numbers of crops"):
        collate_crops([batch[0], (batch[1][0][:2], 1)])


def save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def gray(value: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    return Image.new("L", size, value)


def m(path: Path) -> str:
    return re.escape(str(path))


needs_fmnist = pytest.mark.skipif(not Path(DEFAULT_ROOT, "train-images-idx3-ubyte.gz").is_file(),
                                  reason=f"Fashion-MNIST not installed at {DEFAULT_ROOT}")


# ----------------------------------------------------------------------------------------- build_dataset


@needs_fmnist
def test_build_fashion_mnist_subset():
    cfg = {"name": "fashion_mnist", "root": None, "split": "test", "subset": 100, "channels": 1}
    a, b = build_dataset(cfg), build_dataset(cfg)
    assert len(a) == 100 and a.indices == b.indices and a.indices == sorted(a.indices)
    assert len(set(a.indices)) == 100 and max(a.indices) < 10000
    full = build_dataset({**cfg, "subset": None})
    assert len(full) == 10000
    assert a.targets.tolist() == [int(full.labels[i]) for i in a.indices]
    assert np.array_equal(np.asarray(a[7][0]), full.images[a.indices[7]])
    assert a.classes == CLASSES
    with pytest.raises(DataError, match=r"data.subset=1000000 is larger than the 10000 images of the test split"):
        build_dataset({**cfg, "subset": 10**6})  # never a silently smaller run


def test_build_folder_datasets(tmp_path):
    save(gray(10), tmp_path / "train" / "cat" / "a.png")
    save(gray(20), tmp_path / "train" / "dog" / "b.png")
    save(gray(30, (8, 8)), tmp_path / "val" / "dog" / "c.png")
    cfg = {"name": "image_folder", "root": str(tmp_path), "split": "train", "channels": 3, "bad_files": "error"}
    ds = build_dataset(cfg)
    assert ds.classes == ["cat", "dog"] and len(ds) == 2 and ds[1][0].mode == "RGB"
    val = build_dataset(cfg, split="val")
    assert val.classes == ["dog"] and len(val) == 1
    with pytest.raises(DataError, match="smaller than the global crop 16 px"):
        build_dataset({**cfg, "small_images": "error"}, split="val", min_size=16)
    test = build_dataset(cfg, split="test")  # no test/: val/ stands in (ImageNet layout)
    assert test.classes == ["dog"] and len(test) == 1
    with pytest.raises(DataError, match=m(tmp_path / "val" / "dog") + " has no 'test' or 'val' subfolder"):
        build_dataset({**cfg, "name": "folder", "root": str(tmp_path / "val" / "dog")}, split="test")
    flat = build_dataset({**cfg, "name": "folder", "root": str(tmp_path / "val" / "dog")})
    assert len(flat) == 1 and flat[0][1] == -1  # no train/ subfolder: root itself is the train split
    with pytest.raises(DataError, match="data.root must be set"):
        build_dataset({**cfg, "root": None})
    with pytest.raises(DataError, match="not one of fashion_mnist, folder, image_folder"):
        build_dataset({**cfg, "name": "cifar"})
