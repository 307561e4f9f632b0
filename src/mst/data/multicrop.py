"""DINO-style multi-crop augmentation: two global views and ``n_local`` small local views per image.

The views are built with torchvision.transforms.v2 on PIL images (cheap for the small crops used here) and
only turned into normalised float tensors at the end. All randomness comes from torch's global CPU generator,
so :class:`mst.data.dataset.AugmentedDataset` can make each sample's crops reproducible by reseeding it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from .folders import to_channels


def blur_kernel_size(crop_size: int) -> int:
    """Odd Gaussian kernel of ~10 % of the crop side, at least 3 (23 for 224 px, 3 for 12-28 px crops)."""
    return max(3, int(round(0.1 * crop_size)) | 1)


def _check_stats(mean: Sequence[float], std: Sequence[float], channels: int) -> tuple[list[float], list[float]]:
    if int(channels) < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std need {channels} values (one per channel), got {list(mean)} / {list(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std values must be > 0, got {list(std)}")
    return [float(m) for m in mean], [float(s) for s in std]


def _to_tensor(mean: list[float], std: list[float]) -> list:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)]


def _as_mode(img, channels: int):
    """A PIL image in the mode of ``channels`` (1: 'L', 3: 'RGB'); a (C, H, W) tensor (multiband) as it is, once its
    band count is checked."""
    if isinstance(img, torch.Tensor):
        if img.shape[0] != channels:
            raise ValueError(f"a {img.shape[0]}-band image reached a {channels}-channel transform")
        return img
    want = "RGB" if channels == 3 else "L"
    return img if img.mode == want else to_channels(img, channels)


class MultiCropTransform:
    """PIL image -> [global1, global2, local_1..local_N], each a normalised float (C, H, W) tensor.

    Global 1 is always blurred with ``blur_p[0]`` (1.0 by default), global 2 with ``blur_p[1]`` plus
    solarisation, locals with ``blur_p[2]``. For ``channels == 1`` colour jitter keeps only brightness and
    contrast (saturation and hue are undefined for a gray image) and RandomGrayscale is left out. Float tensor
    images (multiband TIFF, DICOM in modality units) get the geometric and blur ops only: colour jitter, greyscale
    and solarisation assume 8-bit RGB or grey.
    """

    def __init__(self, aug_cfg: dict, mean: Sequence[float], std: Sequence[float], channels: int) -> None:
        self.mean, self.std = _check_stats(mean, std, channels)
        self.channels = channels
        a = aug_cfg
        blur_p = list(a["blur_p"])
        if len(blur_p) != 3:
            raise ValueError(f"augment.blur_p needs 3 probabilities (global 1, global 2, locals), got {blur_p}")
        self.n_local = int(a["n_local"])
        self.global1 = self._view(a, a["global_size"], a["global_scale"], blur_p[0], 0.0)
        self.global2 = self._view(a, a["global_size"], a["global_scale"], blur_p[1], float(a["solarize_p"]))
        self.local = self._view(a, a["local_size"], a["local_scale"], blur_p[2], 0.0)
        self.float_views = [self._view(a, a[f"{k}_size"], a[f"{k}_scale"], b, 0.0, photometric=False)
                            for k, b in (("global", blur_p[0]), ("global", blur_p[1]), ("local", blur_p[2]))]

    def _view(self, a: dict, size: int, scale: Sequence[float], blur_p: float, solarize_p: float,
              photometric: bool = True) -> T.Compose:
        size = int(size)
        ops: list = [
            T.RandomResizedCrop(size, scale=tuple(scale), interpolation=InterpolationMode.BICUBIC, antialias=True),
            T.RandomHorizontalFlip(p=float(a["flip_p"])),
        ]
        photometric = photometric and self.channels in (1, 3)
        b, c, s, h = a["color_jitter"]
        jitter = T.ColorJitter(b, c) if self.channels == 1 else T.ColorJitter(b, c, s, h)
        if a["color_jitter_p"] > 0 and photometric:
            ops.append(T.RandomApply([jitter], p=float(a["color_jitter_p"])))
        if self.channels == 3 and a["grayscale_p"] > 0:
            ops.append(T.RandomGrayscale(p=float(a["grayscale_p"])))
        if blur_p > 0:
            blur = T.GaussianBlur(blur_kernel_size(size), sigma=tuple(a["blur_sigma"]))
            ops.append(T.RandomApply([blur], p=float(blur_p)))
        if solarize_p > 0 and photometric:
            ops.append(T.RandomSolarize(threshold=128, p=solarize_p))  # PIL uint8 scale
        return T.Compose(ops + _to_tensor(self.mean, self.std))

    def __call__(self, img) -> list[torch.Tensor]:
        img = _as_mode(img, self.channels)
        g1, g2, local = (self.global1, self.global2, self.local) if not torch.is_tensor(img) else self.float_views
        views = [g1(img), g2(img)] + [local(img) for _ in range(self.n_local)]
        return [v.as_subclass(torch.Tensor) for v in views]

    def __repr__(self) -> str:
        return f"MultiCropTransform(n_local={self.n_local}, channels={self.channels},\n global1={self.global1},\n" \
               f" global2={self.global2},\n local={self.local})"


def eval_resize(size: int, crop: float = 1.0) -> int:
    """The shorter side an evaluation image is resized to before the centre ``size`` crop: size / crop, rounded
    (224 at crop 0.875 -> 256, DINO's and MAE's evaluation; crop 1: the whole image)."""
    return int(round(int(size) / float(crop)))


class EvalTransform:
    """Deterministic view for feature extraction: resize the shorter side to ``size / crop`` (``augment.eval_crop``:
    0.875 -> 256 for 224, as DINO and MAE evaluate ImageNet), centre crop ``size``, normalise."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], channels: int,
                 crop: float = 1.0) -> None:
        self.mean, self.std = _check_stats(mean, std, channels)
        self.channels, self.size, self.crop = channels, int(size), float(crop)
        if not 0 < self.crop <= 1:
            raise ValueError(f"augment.eval_crop={crop} must lie in (0, 1]")
        self.transform = T.Compose([
            T.Resize(eval_resize(self.size, self.crop), interpolation=InterpolationMode.BICUBIC, antialias=True),
            T.CenterCrop(self.size),
            *_to_tensor(self.mean, self.std),
        ])

    def __call__(self, img) -> torch.Tensor:
        return self.transform(_as_mode(img, self.channels)).as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size}, resize={eval_resize(self.size, self.crop)}, channels={self.channels})"
