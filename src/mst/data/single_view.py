"""One augmented view per image, for the MIM methods and fine-tuning: RandomResizedCrop + horizontal flip (MAE's
and SimMIM's pretraining augmentation), nothing photometric.

Both backends also report *where* the view came from: the crop box as fractions (x0, y0, x1, y1) of the source
image and whether it was flipped, so per-image data that lives on the source image (AMT's attention maps) can
follow the augmentation exactly.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from .gpu_augment import RATIO, crop_resize, normalize, prepare_images, sample_crop_boxes
from .multicrop import _as_mode, _check_stats, _to_tensor


class SingleViewTransform:
    """PIL image -> (normalised (C, S, S) view, box (4,) float fractions, flipped bool tensor). Randomness from
    torch's global CPU generator (reseeded per sample by :class:`~mst.data.dataset.AugmentedDataset`)."""

    def __init__(self, size: int, scale: Sequence[float], flip_p: float, mean: Sequence[float],
                 std: Sequence[float], channels: int, ratio: Sequence[float] = RATIO,
                 rand_augment: str | None = None) -> None:
        """``rand_augment``: a timm RandAugment spec (e.g. "rand-m9-mstd0.5-inc1", MAE's fine-tuning), applied to
        the crop. It may rotate, shear or translate the crop, which the box then no longer describes: it is meant
        for fine-tuning, where nothing per image follows the view (AMT's maps do; the config refuses it there)."""
        self.mean, self.std = _check_stats(mean, std, channels)
        self.size, self.channels = int(size), int(channels)
        self.scale, self.ratio, self.flip_p = tuple(float(s) for s in scale), tuple(ratio), float(flip_p)
        self.to_tensor = T.Compose(_to_tensor(self.mean, self.std))
        self.rand_augment = None
        if rand_augment:
            from timm.data.auto_augment import rand_augment_transform

            fill = tuple(round(255 * m) for m in self.mean)
            self.rand_augment = rand_augment_transform(rand_augment, {"img_mean": fill if channels == 3 else fill[0]})

    def __call__(self, img) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        img = _as_mode(img, self.channels)
        h, w = TF.get_size(img)
        top, left, ch, cw = RandomResizedCrop.get_params(img, list(self.scale), list(self.ratio))
        view = TF.resized_crop(img, top, left, ch, cw, [self.size, self.size],
                               interpolation=InterpolationMode.BICUBIC, antialias=True)
        flip = bool(torch.rand(1) < self.flip_p)
        if flip:
            view = TF.horizontal_flip(view)
        if self.rand_augment is not None:
            view = self.rand_augment(view)
        box = torch.tensor([left / w, top / h, (left + cw) / w, (top + ch) / h], dtype=torch.float32)
        return self.to_tensor(view).as_subclass(torch.Tensor), box, torch.tensor(flip)

    def __repr__(self) -> str:
        return f"SingleViewTransform(size={self.size}, scale={self.scale}, flip_p={self.flip_p})"


class GPUSingleView:
    """Batched :class:`SingleViewTransform` on the training device: images (B, C, H, W) uint8 / float or a list of
    (C, H_i, W_i) -> (views (B, C, S, S) normalised, boxes (B, 4) fractions, flips (B,) bool). Crop boxes follow
    torchvision's sampling (:func:`~mst.data.gpu_augment.sample_crop_boxes`); resampling is bilinear with area
    averaging, as for :class:`~mst.data.gpu_augment.GPUMultiCrop`."""

    def __init__(self, size: int, scale: Sequence[float], flip_p: float, mean: Sequence[float],
                 std: Sequence[float], channels: int) -> None:
        self.mean, self.std = _check_stats(mean, std, channels)
        self.size, self.channels = int(size), int(channels)
        self.scale, self.flip_p = tuple(float(s) for s in scale), float(flip_p)

    @torch.no_grad()
    def __call__(self, images, generator: torch.Generator | None = None):
        x, hs, ws = prepare_images(images, self.channels)
        boxes = sample_crop_boxes(hs, ws, self.scale, RATIO, generator)
        views = crop_resize(x, boxes, self.size)
        flips = torch.rand(len(views), generator=generator, device=x.device) < self.flip_p
        views = torch.where(flips.view(-1, 1, 1, 1), views.flip(-1), views)
        frac = boxes / torch.stack([ws, hs, ws, hs], dim=1).to(boxes.dtype)
        return normalize(views, self.mean, self.std), frac, flips

    def __repr__(self) -> str:
        return f"GPUSingleView(size={self.size}, scale={self.scale}, flip_p={self.flip_p})"
