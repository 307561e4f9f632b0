"""Batched multi-crop augmentation on tensors, on the training device (GPU, or CPU): the tensor alternative to
:class:`mst.data.multicrop.MultiCropTransform`, built on the ops of :mod:`mst.data.image_ops`.

A PIL pipeline delivers ~100-200 images/s per CPU worker at 224 px with 2 x 224 + 10 x 96 crops, while one H100
trains ViT-S/16 multi-crop steps at ~1000 images/s, so the CPU pipeline needs ~10 busy cores per GPU. Here the
DataLoader only decodes images into uint8 tensors; all crops and photometric ops then run batched on the device.
Every random parameter is drawn *per sample* (and per view) from one ``torch.Generator``, with the probabilities
and ranges of the config's ``augment`` section, in MultiCropTransform's order:

    random resized crop (torchvision's sampling: scale, log-uniform ratio 3/4..4/3, 10 tries then centre crop)
    -> horizontal flip (flip_p)
    -> colour jitter (color_jitter_p; brightness, contrast [+ saturation, hue for RGB] in a random order per
       sample, factors as torchvision's ColorJitter)
    -> grayscale (grayscale_p, RGB only)
    -> Gaussian blur (blur_p = global 1, global 2, locals; sigma ~ U(blur_sigma); kernel blur_kernel_size(size),
       reflect padding)
    -> solarize (solarize_p, global 2 only; x >= 128/255 -> 1 - x)
    -> normalise with mean / std.

Differences from the PIL path: resampling is bilinear with area averaging (``roi_align`` with adaptive sampling,
an antialiased downscale) instead of antialiased bicubic; intermediate values are float instead of uint8. The
randomness is per batch (one generator), so a sample's crops depend on its batch and the generator state, not on
(seed, epoch, index) as with :class:`~mst.data.dataset.AugmentedDataset`.

Usage::

    aug = GPUMultiCrop(view_settings(cfg), cfg["data"]["mean"], cfg["data"]["std"], cfg["data"]["channels"])
    loader = DataLoader(RawImageDataset(base, channels), batch_size=B, collate_fn=collate_raw, ...)
    gen = torch.Generator(device).manual_seed(seed)
    for images, labels in loader:               # uint8 (B, C, H, W), or a list of (C, H_i, W_i)
        views = aug(images.to(device, non_blocking=True), generator=gen)   # [g1, g2, l1..ln], (B, C, S, S)
        loss = mst_step(views, student, teacher, ...)  # the Trainer does this itself with augment.backend=tensor
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .image_ops import (
    RATIO,
    _apply_where,
    _col,
    _random_order,
    _uniform,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    crop_resize,
    eight_bit,
    gaussian_blur,
    normalize,
    prepare_images,
    sample_crop_boxes,
    to_gray,
)
from .multicrop import _check_stats, blur_kernel_size

SOLARIZE_THRESHOLD = 128 / 255  # PIL's threshold 128 on the uint8 scale
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)
_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


# -- the transform ----------------------------------------------------------------------------------------------
class GPUMultiCrop:
    """Batched multi-crop: images (B, C, H, W) uint8 (0..255) or float (0..1), or a list of (C, H_i, W_i)
    tensors of different sizes, on any device -> [global1, global2, local_1..local_n], each (B, C, S, S)
    normalised float32 on the same device. ``augment``, ``mean``, ``std``, ``channels`` as for
    :class:`~mst.data.multicrop.MultiCropTransform` (the config's ``augment`` section and data stats)."""

    def __init__(self, aug_cfg: dict, mean: Sequence[float], std: Sequence[float], channels: int) -> None:
        self.mean, self.std = _check_stats(mean, std, channels)
        self.channels = int(channels)
        a = aug_cfg
        blur_p = [float(p) for p in a["blur_p"]]
        if len(blur_p) != 3:
            raise ValueError(f"augment.blur_p needs 3 probabilities (global 1, global 2, locals), got {blur_p}")
        self.n_local = int(a["n_local"])
        self.global_size, self.local_size = int(a["global_size"]), int(a["local_size"])
        self.global_scale = tuple(float(s) for s in a["global_scale"])
        self.local_scale = tuple(float(s) for s in a["local_scale"])
        self.flip_p = float(a["flip_p"])
        b, c, s, h = (float(v) for v in a["color_jitter"])
        # (op index, low, high) of each jitter op in use; as torchvision: factor ranges [max(0, 1-v), 1+v], hue [-h, h]
        ops = [(_BRIGHTNESS, max(0.0, 1 - b), 1 + b, b), (_CONTRAST, max(0.0, 1 - c), 1 + c, c)]
        if self.channels == 3:
            ops += [(_SATURATION, max(0.0, 1 - s), 1 + s, s), (_HUE, -h, h, h)]
        self.jitter_ops = [(op, lo, hi) for op, lo, hi, v in ops if v > 0]
        self.jitter_p = float(a["color_jitter_p"])
        self.grayscale_p = float(a["grayscale_p"]) if self.channels == 3 else 0.0
        self.blur_p = blur_p
        self.blur_sigma = tuple(float(v) for v in a["blur_sigma"])
        self.solarize_p = float(a["solarize_p"])
        if self.channels not in (1, 3):  # multiband: geometric ops and blur only (as MultiCropTransform)
            self.jitter_ops, self.jitter_p, self.solarize_p = [], 0.0, 0.0

    def __repr__(self) -> str:
        return (f"GPUMultiCrop(global={self.global_size} x 2, local={self.local_size} x {self.n_local}, "
                f"channels={self.channels})")

    # -- one group of views --------------------------------------------------------------------------------------
    def _views(self, x, hs, ws, n_views, size, scale, blur_p, solarize_p, generator,
               photometric: torch.Tensor) -> list[torch.Tensor]:
        b = x.shape[0]
        n = n_views * b
        dev = x.device
        boxes = sample_crop_boxes(hs.repeat(n_views), ws.repeat(n_views), scale, RATIO, generator)
        v = crop_resize(x, boxes, size, torch.arange(b, device=dev).repeat(n_views), clamp=photometric)  # view-major
        ph = photometric.to(dev).repeat(n_views)  # per crop: was its image 8-bit

        flip = torch.rand(n, generator=generator, device=dev) < self.flip_p
        v = torch.where(_col(flip, v), v.flip(-1), v)

        if self.jitter_ops and self.jitter_p > 0:
            apply = (torch.rand(n, generator=generator, device=dev) < self.jitter_p) & ph
            factors = torch.stack([_uniform(n, lo, hi, generator, dev) for _, lo, hi in self.jitter_ops], 1)
            order = _random_order(n, len(self.jitter_ops), generator, dev)
            for pos in range(len(self.jitter_ops)):
                for k, (op, _, _) in enumerate(self.jitter_ops):
                    v = _apply_where(v, apply & (order[:, pos] == k), _OPS[op], factors[:, k])

        if self.grayscale_p > 0:
            gray = (torch.rand(n, generator=generator, device=dev) < self.grayscale_p) & ph
            v = torch.where(_col(gray, v), to_gray(v).expand_as(v), v)

        if blur_p > 0:
            blur = torch.rand(n, generator=generator, device=dev) < blur_p
            sigma = _uniform(n, self.blur_sigma[0], self.blur_sigma[1], generator, dev)
            v = _apply_where(v, blur, lambda t, s: gaussian_blur(t, s, blur_kernel_size(size)), sigma)

        if solarize_p > 0:
            sol = (torch.rand(n, generator=generator, device=dev) < solarize_p) & ph
            v = torch.where(_col(sol, v) & (v >= SOLARIZE_THRESHOLD), 1.0 - v, v)

        v = normalize(v, self.mean, self.std)
        return list(v.chunk(n_views)) if n_views > 1 else [v]

    @torch.no_grad()
    def __call__(self, images, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """``generator`` must live on the images' device (``torch.Generator(device)``); None: the global one."""
        # colour jitter, greyscale and solarisation assume 8-bit data; float images (multiband, DICOM in modality
        # units) get the geometric ops and blur only, as in MultiCropTransform (decided per image)
        ph = eight_bit(images)
        x, hs, ws = prepare_images(images, self.channels)
        p1, p2, pl = self.blur_p
        g, s = self.global_size, self.global_scale
        views = self._views(x, hs, ws, 1, g, s, p1, 0.0, generator, ph)
        views += self._views(x, hs, ws, 1, g, s, p2, self.solarize_p, generator, ph)
        if self.n_local > 0:
            views += self._views(x, hs, ws, self.n_local, self.local_size, self.local_scale, pl, 0.0, generator, ph)
        return views


# -- data loading for the tensor path ---------------------------------------------------------------------------
def pil_to_uint8(img, channels: int) -> torch.Tensor:
    """PIL image -> uint8 (C, H, W) tensor with ``channels`` channels; a multiband float (C, H, W) tensor passes
    through unchanged (the tensor ops take float images in their own range)."""
    from .multicrop import _as_mode

    if isinstance(img, torch.Tensor):
        return _as_mode(img, channels)

    arr = np.asarray(_as_mode(img, channels), dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class RawImageDataset(torch.utils.data.Dataset):
    """(PIL image, label) dataset -> (uint8 (C, H, W) tensor, label): the DataLoader side of GPUMultiCrop."""

    def __init__(self, base: torch.utils.data.Dataset, channels: int) -> None:
        self.base, self.channels = base, int(channels)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, label = self.base[i]
        return pil_to_uint8(img, self.channels), label

    def __getitems__(self, indices: list[int]) -> list:
        """A whole batch with one array index when the data are an in-memory array (Fashion-MNIST): no PIL round
        trip per image. Same values as ``__getitem__`` one by one."""
        base, idx = self.base, list(indices)
        while hasattr(base, "indices") and hasattr(base, "dataset"):  # a Subset: map to the dataset's positions
            idx = [int(base.indices[i]) for i in idx]
            base = base.dataset
        fast = base.uint8_batch(idx) if hasattr(base, "uint8_batch") and base.channels == self.channels else None
        if fast is None:
            return [self[i] for i in indices]
        images, labels = fast
        return list(zip(torch.from_numpy(images).unbind(0), (int(v) for v in labels)))


def collate_raw(batch):
    """[(uint8 or float (C, H, W), label)] -> ((B, C, H, W) if all sizes and dtypes match, else the list, labels
    (B,)): a batch mixing 8-bit and float images stays a list, so each keeps its own scale."""
    if not batch:
        raise ValueError("collate_raw got an empty batch")
    images = [im for im, _ in batch]
    labels = torch.tensor([int(l) for _, l in batch], dtype=torch.int64)
    if all(im.shape == images[0].shape and im.dtype == images[0].dtype for im in images):
        return torch.stack(images), labels
    return images, labels


__all__ = ["SOLARIZE_THRESHOLD", "GPUMultiCrop", "RawImageDataset", "collate_raw", "pil_to_uint8"]
