"""Batched tensor multi-crop (mst.data.tensor_multicrop) and its image ops (mst.data.image_ops): shapes, per-sample
randomness, probabilities, ranges, determinism, agreement of each op with torchvision's single-image functional ops,
and the old import path (mst.data.gpu_augment)."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from mst.data import ArrayDataset, blur_kernel_size
from mst.data.image_ops import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    sample_crop_boxes,
    to_gray,
)
from mst.data.tensor_multicrop import GPUMultiCrop, RawImageDataset, collate_raw

from tests.conftest import MEAN1, MEAN3, STD1, STD3, aug  # noqa: E402


def no_aug(**kw) -> dict:
    """Every random op off and crops covering the whole image: the transform is resize + normalise."""
    off = dict(global_scale=[1.0, 1.0], local_scale=[1.0, 1.0], flip_p=0.0, color_jitter_p=0.0, grayscale_p=0.0,
               blur_p=[0.0, 0.0, 0.0], solarize_p=0.0)
    return aug(**{**off, **kw})


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 8, c: int = 1, h: int = 28, w: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, h, w), generator=gen(seed), dtype=torch.uint8)


def unnormalise(v: torch.Tensor, mean, std) -> torch.Tensor:
    return v * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_dtype_and_range(channels):
    mean, std = (MEAN1, STD1) if channels == 1 else (MEAN3, STD3)
    t = GPUMultiCrop(aug(n_local=3), mean, std, channels)
    views = t(images(5, channels), generator=gen())
    assert len(views) == 2 + 3
    assert [tuple(v.shape) for v in views] == [(5, channels, 28, 28)] * 2 + [(5, channels, 12, 12)] * 3
    for v in views:
        assert v.dtype == torch.float32 and torch.isfinite(v).all()
        x = unnormalise(v, mean, std)
        assert x.min() >= -1e-5 and x.max() <= 1 + 1e-5


def test_channel_conversion_and_list_input_of_mixed_sizes():
    t = GPUMultiCrop(aug(global_size=32, local_size=16, n_local=2), MEAN3, STD3, 3)
    ims = [torch.randint(0, 256, (1, 40 + 5 * k, 60 - 3 * k), dtype=torch.uint8) for k in range(4)]
    views = t(ims, generator=gen())
    assert [tuple(v.shape) for v in views] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 2
    gray = GPUMultiCrop(aug(n_local=1), MEAN1, STD1, 1)(images(3, 3), generator=gen())
    assert gray[0].shape == (3, 1, 28, 28)


def test_identity_when_everything_is_off():
    t = GPUMultiCrop(no_aug(n_local=1, local_size=28), MEAN1, STD1, 1)
    x = images(4)
    for v in t(x, generator=gen()):
        assert torch.allclose(unnormalise(v, MEAN1, STD1), x.float() / 255, atol=1e-5)


def test_deterministic_with_seeded_generator_and_random_per_sample():
    t = GPUMultiCrop(aug(n_local=2), MEAN1, STD1, 1)
    same = images(1).expand(6, -1, -1, -1).contiguous()  # six copies of one image
    a = t(same, generator=gen(1))
    b = t(same, generator=gen(1))
    c = t(same, generator=gen(2))
    for va, vb, vc in zip(a, b, c):
        assert torch.equal(va, vb)
        assert not torch.equal(va, vc)
        # identical inputs, different crops/jitter per sample
        assert all(not torch.equal(va[0], va[k]) for k in range(1, 6))
    # the two local views of one sample differ too
    assert not torch.equal(a[2], a[3])


def test_crop_boxes_follow_scale_and_ratio():
    n = 4000
    h = torch.full((n,), 200)
    w = torch.full((n,), 300)
    boxes = sample_crop_boxes(h, w, (0.08, 1.0), generator=gen())
    x0, y0, x1, y1 = boxes.unbind(1)
    bw, bh = x1 - x0, y1 - y0
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 300).all() and (y1 <= 200).all()
    assert (bw >= 1).all() and (bh >= 1).all()
    assert torch.equal(boxes, boxes.round())  # integer pixel boxes like torchvision
    frac = bw * bh / (200 * 300)
    ratio = bw / bh
    # rounding to integers moves the area / ratio slightly outside the nominal range
    assert frac.min() > 0.07 and frac.max() <= 1.0
    assert ratio.min() > 0.74 and ratio.max() < 1.35
    # same distribution as torchvision's RandomResizedCrop.get_params (first fitting of 10 draws)
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    img = torch.zeros(1, 200, 300)
    ref = torch.tensor([RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(1000)],
                       dtype=torch.float64)  # (i, j, h, w)
    ref_frac = ref[:, 2] * ref[:, 3] / (200 * 300)
    assert abs(frac.mean().item() - ref_frac.mean().item()) < 0.035
    assert abs(frac.std().item() - ref_frac.std().item()) < 0.03
    assert abs(ratio.log().mean().item() - (ref[:, 3] / ref[:, 2]).log().mean().item()) < 0.03
    # positions uniform over the valid range: the box centre's mean x is the image centre
    assert abs(((x0 + x1) / 2).mean().item() - 150) < 3


def test_crop_box_fallback_is_centred_with_clamped_ratio():
    # a 10 x 100 strip: no box of ratio <= 4/3 and area >= 0.5 fits, so the centred fallback (ratio 4/3) is used
    boxes = sample_crop_boxes(torch.tensor([10]), torch.tensor([100]), (0.5, 1.0), generator=gen())
    x0, y0, x1, y1 = boxes[0].tolist()
    assert (y0, y1) == (0, 10) and x1 - x0 == 13 and x0 == math.floor((100 - 13) / 2)


def test_flip_probability():
    # whole-image crops and an image that is not mirror-symmetric: a flipped view is detectable
    t = GPUMultiCrop(no_aug(n_local=0, flip_p=0.5), MEAN1, STD1, 1)
    x = torch.arange(28, dtype=torch.uint8).mul(9).view(1, 1, 1, 28).expand(2000, 1, 28, 28).contiguous()
    v = unnormalise(t(x, generator=gen())[0], MEAN1, STD1)
    flipped = v[:, 0, 0, 0] > v[:, 0, 0, -1]
    assert abs(flipped.float().mean().item() - 0.5) < 0.04


@pytest.mark.parametrize("kind,p", [("jitter", 0.8), ("solarize", 0.2)])
def test_photometric_probabilities(kind, p):
    kw = {"color_jitter_p": p} if kind == "jitter" else {"solarize_p": p}
    t = GPUMultiCrop(no_aug(n_local=0, **kw), MEAN1, STD1, 1)
    x = images(3000, seed=3)
    v1, v2 = t(x, generator=gen())
    changed1 = (unnormalise(v1, MEAN1, STD1) - x.float() / 255).abs().amax(dim=(1, 2, 3)) > 1e-4
    changed2 = (unnormalise(v2, MEAN1, STD1) - x.float() / 255).abs().amax(dim=(1, 2, 3)) > 1e-4
    if kind == "jitter":  # both global views
        assert abs(changed1.float().mean().item() - p) < 0.04
        assert abs(changed2.float().mean().item() - p) < 0.04
    else:  # global 2 only
        assert not changed1.any()
        assert abs(changed2.float().mean().item() - p) < 0.04


def test_blur_probabilities_per_view():
    # sigma >= 1 so that every blurred view visibly changes (sigma 0.1 is nearly the identity)
    t = GPUMultiCrop(no_aug(n_local=2, local_size=28, blur_p=[1.0, 0.1, 0.5], blur_sigma=[1.0, 2.0]), MEAN1, STD1, 1)
    x = images(3000, seed=4)
    views = t(x, generator=gen())
    rates = [((unnormalise(v, MEAN1, STD1) - x.float() / 255).abs().amax(dim=(1, 2, 3)) > 1e-4).float().mean().item()
             for v in views]
    assert rates[0] == 1.0
    assert abs(rates[1] - 0.1) < 0.03
    assert abs(rates[2] - 0.5) < 0.04 and abs(rates[3] - 0.5) < 0.04


def test_grayscale_probability_rgb():
    t = GPUMultiCrop(no_aug(n_local=0, grayscale_p=0.2, global_size=16), MEAN3, STD3, 3)
    x = images(3000, c=3, h=16, w=16, seed=5)
    v = unnormalise(t(x, generator=gen())[0], MEAN3, STD3)
    gray = (v[:, 0] - v[:, 1]).abs().amax(dim=(1, 2)) < 1e-5
    assert abs(gray.float().mean().item() - 0.2) < 0.03
    assert torch.allclose(v[gray][:, 0], to_gray(x[gray].float() / 255)[:, 0], atol=1e-5)


def test_jitter_factors_cover_configured_range():
    # brightness only (contrast 0): the ratio output / input is the per-sample factor, in [0.6, 1.4]
    t = GPUMultiCrop(no_aug(n_local=0, color_jitter=[0.4, 0.0, 0.0, 0.0], color_jitter_p=1.0), [0.0], [1.0], 1)
    x = torch.full((2000, 1, 8, 8), 100, dtype=torch.uint8)
    v = t(x, generator=gen())[0]
    f = v[:, 0, 0, 0] / (100 / 255)
    assert f.min() >= 0.6 - 1e-5 and f.max() <= 1.4 + 1e-5
    assert f.min() < 0.65 and f.max() > 1.35 and abs(f.mean().item() - 1.0) < 0.02
    assert torch.allclose(v, v[:, :, :1, :1].expand_as(v))  # one factor per sample


def test_ops_match_torchvision_per_sample():
    torch.manual_seed(0)
    x = torch.rand(5, 3, 17, 23)
    f = torch.rand(5) + 0.4
    for mine, ref in [(adjust_brightness, TF.adjust_brightness), (adjust_contrast, TF.adjust_contrast),
                      (adjust_saturation, TF.adjust_saturation)]:
        out = mine(x.clone(), f)
        for i in range(5):
            assert torch.allclose(out[i], ref(x[i], float(f[i])), atol=1e-5)
    hue = torch.rand(5) - 0.5
    out = adjust_hue(x, hue)
    for i in range(5):
        assert torch.allclose(out[i], TF.adjust_hue(x[i], float(hue[i])), atol=1e-5)
    gray = torch.rand(5, 1, 17, 23)
    out = adjust_contrast(gray, f)
    for i in range(5):
        assert torch.allclose(out[i], TF.adjust_contrast(gray[i], float(f[i])), atol=1e-5)


@pytest.mark.parametrize("size", [12, 28, 96])
def test_blur_matches_torchvision(size):
    torch.manual_seed(0)
    k = blur_kernel_size(size)
    x = torch.rand(4, 3, size, size)
    sigma = torch.rand(4) * 1.9 + 0.1
    out = gaussian_blur(x, sigma, k)
    for i in range(4):
        ref = TF.gaussian_blur(x[i], [k, k], [float(sigma[i])] * 2)
        assert torch.allclose(out[i], ref, atol=1e-5)


def test_raw_dataset_and_collate():
    import numpy as np

    base = ArrayDataset(np.arange(4 * 28 * 28, dtype=np.uint8).reshape(4, 28, 28) % 251, np.arange(4))
    ds = RawImageDataset(base, channels=1)
    im, label = ds[2]
    assert im.dtype == torch.uint8 and im.shape == (1, 28, 28) and label == 2
    batch, labels = collate_raw([ds[i] for i in range(4)])
    assert batch.shape == (4, 1, 28, 28) and labels.tolist() == [0, 1, 2, 3]
    mixed, _ = collate_raw([(torch.zeros(1, 5, 5, dtype=torch.uint8), 0), (torch.zeros(1, 6, 5, dtype=torch.uint8), 1)])
    assert isinstance(mixed, list) and len(mixed) == 2


def test_old_import_path_gives_the_same_objects():
    import mst.data.gpu_augment as old
    from mst.data import image_ops, tensor_multicrop

    assert old.GPUMultiCrop is tensor_multicrop.GPUMultiCrop
    assert old.collate_raw is tensor_multicrop.collate_raw
    assert old.sample_crop_boxes is image_ops.sample_crop_boxes
    assert old.RATIO is image_ops.RATIO
    assert all(hasattr(old, name) for name in old.__all__)
