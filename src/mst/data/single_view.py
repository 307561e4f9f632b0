"""One augmented view per image, for the MIM methods and fine-tuning: RandomResizedCrop + horizontal flip (MAE's
and SimMIM's pretraining augmentation), or (``augment.crop: pad``) a random crop of the image padded by
``augment.pad`` pixels + flip (the light shift that suits small, centred images when fine-tuning); nothing
photometric.

Both backends also report *where* the view came from: the crop box as fractions (x0, y0, x1, y1) of the source
image and whether it was flipped, so per-image data that lives on the source image (AMT's attention maps) can
follow the augmentation exactly.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from .image_ops import RATIO, crop_resize, eight_bit, normalize, prepare_images, sample_crop_boxes
from .multicrop import _as_mode, _check_stats, _to_tensor


class RandAugmentSkipWarning(UserWarning):
    """``augment.rand_augment`` met float images (16-bit / float TIFF, DICOM, multiband), which it leaves alone."""


class SingleViewTransform:
    """PIL image -> (normalised (C, S, S) view, box (4,) float fractions, flipped bool tensor). Randomness from
    torch's global CPU generator (reseeded per sample by :class:`~mst.data.dataset.AugmentedDataset`)."""

    def __init__(self, size: int, scale: Sequence[float], flip_p: float, mean: Sequence[float],
                 std: Sequence[float], channels: int, ratio: Sequence[float] = RATIO,
                 rand_augment: str | None = None, crop: str = "rrc", pad: int = 0) -> None:
        """``rand_augment``: a timm RandAugment spec (e.g. "rand-m9-mstd0.5-inc1", MAE's fine-tuning), applied to
        the crop. It may rotate, shear or translate the crop, which the box then no longer describes: it is meant
        for fine-tuning, where nothing per image follows the view (AMT's maps do; the config refuses it there).

        RandAugment's ops (posterize, solarize at 128, equalize, colour, ...) are defined on 8-bit images, so it
        applies per sample to the 8-bit grey / RGB files (PIL images) only; float images (16-bit / float TIFF,
        DICOM, multiband: (C, H, W) tensors) get the crop and flip alone, at full precision, as the multi-crop
        gives them the geometric ops only. A run where that happens says so once (a warning)."""
        self.mean, self.std = _check_stats(mean, std, channels)
        self.size, self.channels = int(size), int(channels)
        self.scale, self.ratio, self.flip_p = tuple(float(s) for s in scale), tuple(ratio), float(flip_p)
        if crop not in ("rrc", "pad"):
            raise ValueError(f"augment.crop={crop!r} is not one of rrc, pad")
        self.crop, self.pad = crop, int(pad)
        self.to_tensor = T.Compose(_to_tensor(self.mean, self.std))
        self.rand_augment, self.rand_augment_spec, self._warned_float = None, rand_augment, False
        if rand_augment:
            from timm.data.auto_augment import rand_augment_transform

            fill = tuple(round(255 * m) for m in self.mean)
            self.rand_augment = rand_augment_transform(rand_augment, {"img_mean": fill if channels == 3 else fill[0]})

    def __call__(self, img) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        img = _as_mode(img, self.channels)
        h, w = TF.get_size(img)
        if self.crop == "pad":
            view, (top, left, ch, cw) = self._pad_crop(img, h, w)
        else:
            top, left, ch, cw = RandomResizedCrop.get_params(img, list(self.scale), list(self.ratio))
            view = TF.resized_crop(img, top, left, ch, cw, [self.size, self.size],
                                   interpolation=InterpolationMode.BICUBIC, antialias=True)
        flip = bool(torch.rand(1) < self.flip_p)
        if flip:
            view = TF.horizontal_flip(view)
        if self.rand_augment is not None:
            if not torch.is_tensor(view):
                view = self.rand_augment(view)
            elif not self._warned_float:
                self._warned_float = True
                warnings.warn(f"augment.rand_augment={self.rand_augment_spec!r} applies to 8-bit grey / RGB images "
                              "only; float images (16-bit / float TIFF, DICOM, multiband) get the crop and flip alone, "
                              "at full precision", RandAugmentSkipWarning, stacklevel=2)
        box = torch.tensor([left / w, top / h, (left + cw) / w, (top + ch) / h], dtype=torch.float32)
        return self.to_tensor(view).as_subclass(torch.Tensor), box, torch.tensor(flip)

    def _pad_crop(self, img, h: int, w: int):
        """Shorter side -> size (when it is not), zero padding of ``pad`` px, a random size x size crop: the view and
        its box (top, left, height, width) in the source image's pixels."""
        k = 1.0
        if min(h, w) != self.size:
            k = self.size / min(h, w)
            img = TF.resize(img, [self.size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        hh, ww = TF.get_size(img)
        p = self.pad
        top = int(torch.randint(0, hh + 2 * p - self.size + 1, (1,)))
        left = int(torch.randint(0, ww + 2 * p - self.size + 1, (1,)))
        view = TF.crop(TF.pad(img, [p], fill=0), top, left, self.size, self.size)
        return view, ((top - p) / k, (left - p) / k, self.size / k, self.size / k)

    def __repr__(self) -> str:
        return f"SingleViewTransform(size={self.size}, crop={self.crop}, scale={self.scale}, flip_p={self.flip_p})"


class GPUSingleView:
    """Batched :class:`SingleViewTransform` on the training device: images (B, C, H, W) uint8 / float or a list of
    (C, H_i, W_i) -> (views (B, C, S, S) normalised, boxes (B, 4) fractions, flips (B,) bool). Crop boxes follow
    torchvision's sampling (:func:`~mst.data.image_ops.sample_crop_boxes`); resampling is bilinear with area
    averaging, as for :class:`~mst.data.tensor_multicrop.GPUMultiCrop`."""

    def __init__(self, size: int, scale: Sequence[float], flip_p: float, mean: Sequence[float],
                 std: Sequence[float], channels: int, crop: str = "rrc", pad: int = 0) -> None:
        self.mean, self.std = _check_stats(mean, std, channels)
        self.size, self.channels = int(size), int(channels)
        self.scale, self.flip_p = tuple(float(s) for s in scale), float(flip_p)
        if crop not in ("rrc", "pad"):
            raise ValueError(f"augment.crop={crop!r} is not one of rrc, pad")
        self.crop, self.pad = crop, int(pad)

    @torch.no_grad()
    def __call__(self, images, generator: torch.Generator | None = None):
        unit = eight_bit(images)
        x, hs, ws = prepare_images(images, self.channels)
        if self.crop == "pad":
            views, boxes = self._pad_crop(x, hs, ws, generator)
        else:
            boxes = sample_crop_boxes(hs, ws, self.scale, RATIO, generator)
            views = crop_resize(x, boxes, self.size, clamp=unit)
        flips = torch.rand(len(views), generator=generator, device=x.device) < self.flip_p
        views = torch.where(flips.view(-1, 1, 1, 1), views.flip(-1), views)
        frac = boxes / torch.stack([ws, hs, ws, hs], dim=1).to(boxes.dtype)
        return normalize(views, self.mean, self.std), frac, flips

    def _pad_crop(self, x, hs, ws, generator):
        """Per image: shorter side -> size (when it is not), zero padding of ``pad`` px, a random size x size crop.
        Returns the views and their boxes (x0, y0, x1, y1) in source pixels. Images of any sizes (a folder's)."""
        p, s = self.pad, self.size
        dev = generator.device if generator is not None else x.device
        draws = torch.rand(len(x), 2, generator=generator, device=dev).to(x.device)
        views, boxes = [], []
        for i in range(len(x)):
            h, w = int(hs[i]), int(ws[i])
            img, k = x[i:i + 1, :, :h, :w], 1.0
            if min(h, w) != s:
                k = s / min(h, w)
                img = F.interpolate(img, size=(max(s, round(h * k)), max(s, round(w * k))), mode="bilinear",
                                    align_corners=False, antialias=True)
            hh, ww = img.shape[-2:]
            top = min(int(draws[i, 0] * (hh + 2 * p - s + 1)), hh + 2 * p - s)
            left = min(int(draws[i, 1] * (ww + 2 * p - s + 1)), ww + 2 * p - s)
            views.append(F.pad(img, (p, p, p, p))[..., top:top + s, left:left + s])
            x0, y0 = (left - p) / k, (top - p) / k
            boxes.append([x0, y0, x0 + s / k, y0 + s / k])
        return torch.cat(views), torch.tensor(boxes, dtype=torch.float32, device=x.device)

    def __repr__(self) -> str:
        return f"GPUSingleView(size={self.size}, crop={self.crop}, scale={self.scale}, flip_p={self.flip_p})"
