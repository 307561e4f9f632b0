"""Batched multi-crop augmentation on tensors (on the training device): the GPU alternative to
:class:`mst.data.multicrop.MultiCropTransform`.

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

    aug = GPUMultiCrop(cfg["augment"], cfg["data"]["mean"], cfg["data"]["std"], cfg["data"]["channels"])
    loader = DataLoader(RawImageDataset(base, channels), batch_size=B, collate_fn=collate_raw, ...)
    gen = torch.Generator(device).manual_seed(seed)
    for images, labels in loader:               # uint8 (B, C, H, W), or a list of (C, H_i, W_i)
        views = aug(images.to(device, non_blocking=True), generator=gen)   # [g1, g2, l1..ln], (B, C, S, S)
        loss = mst_step(views, student, teacher, ...)  # the Trainer does this itself with augment.backend=tensor
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from .multicrop import _check_stats, blur_kernel_size

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL / torchvision
SOLARIZE_THRESHOLD = 128 / 255  # PIL's threshold 128 on the uint8 scale
RATIO = (3.0 / 4.0, 4.0 / 3.0)
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)


# -- random parameters ------------------------------------------------------------------------------------------
def _uniform(shape, low, high, generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


def sample_crop_boxes(
    heights: torch.Tensor,
    widths: torch.Tensor,
    scale: Sequence[float],
    ratio: Sequence[float] = RATIO,
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> torch.Tensor:
    """Per-sample RandomResizedCrop boxes (x0, y0, x1, y1) in pixels, float (B, 4), for images of size
    ``heights`` x ``widths`` (B,). torchvision's scheme: area fraction ~ U(scale), aspect ratio log-uniform in
    ``ratio``, integer sizes, the first of ``attempts`` draws that fits; else a centre crop with the ratio clamped."""
    device = heights.device
    h_img, w_img = heights.to(torch.float64), widths.to(torch.float64)
    b = h_img.shape[0]
    area = (h_img * w_img)[:, None]
    target = area * _uniform((b, attempts), scale[0], scale[1], generator, device).double()
    log_r = _uniform((b, attempts), math.log(ratio[0]), math.log(ratio[1]), generator, device).double()
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (h > 0) & (w <= w_img[:, None]) & (h <= h_img[:, None])
    first = ok.float().argmax(dim=1, keepdim=True)  # first fitting attempt (0 if none)
    found = ok.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    u_i, u_j = torch.rand((2, b), generator=generator, device=device).double()
    i = torch.floor(u_i * (h_img - h + 1))
    j = torch.floor(u_j * (w_img - w + 1))
    # fallback: the whole image, its aspect ratio clamped into `ratio`, centred
    in_ratio = w_img / h_img
    fw = torch.where(in_ratio < ratio[0], w_img, torch.where(in_ratio > ratio[1], torch.round(h_img * ratio[1]), w_img))
    fh = torch.where(in_ratio < ratio[0], torch.round(w_img / ratio[0]), h_img)
    fi, fj = torch.floor((h_img - fh) / 2), torch.floor((w_img - fw) / 2)
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    i, j = torch.where(found, i, fi), torch.where(found, j, fj)
    return torch.stack([j, i, j + w, i + h], dim=1).float()


def _random_order(b: int, n_ops: int, generator, device) -> torch.Tensor:
    """(B, n_ops): a uniformly random permutation of the op indices per sample."""
    return torch.rand((b, n_ops), generator=generator, device=device).argsort(dim=1)


# -- per-sample photometric ops on float images in [0, 1] -------------------------------------------------------
def _col(f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, ...) broadcastable against x; floats take x's dtype, bools stay bool."""
    f = f if f.dtype == torch.bool else f.to(x.dtype)
    return f.view(-1, *([1] * (x.ndim - 1)))


def to_gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma; single-channel images pass through."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = _col(f, x)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * _col(f, x)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    mean = to_gray(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, f)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, to_gray(x), f)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    nonzero = delta > 0
    safe = torch.where(nonzero, delta, torch.ones_like(delta))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(nonzero, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    return torch.stack([h, s, maxc], dim=1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    h6 = h * 6.0
    sector = torch.floor(h6)
    frac = h6 - sector
    sector = sector.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * frac), v * (1 - s * (1 - frac))
    # (r, g, b) per sector 0..5: (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q)
    cand = torch.stack([v, q, p, p, t, v, t, v, v, q, p, p, p, p, t, v, v, q], dim=1)  # (B, 18, H, W)
    cand = cand.view(x.shape[0], 3, 6, *x.shape[2:])
    idx = sector.unsqueeze(1).unsqueeze(2).expand(-1, 3, 1, -1, -1)
    return cand.gather(2, idx).squeeze(2)


def adjust_hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Shift the hue by ``f`` (in turns, |f| <= 0.5) per sample; RGB only."""
    hsv = _rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + _col(f, hsv[:, 0]), 1.0)
    return _hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], dim=1)).clamp_(0, 1)


_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(B,) sigmas -> (B, kernel_size) normalised 1-D Gaussian kernels."""
    half = (kernel_size - 1) / 2
    xs = torch.linspace(-half, half, kernel_size, device=sigma.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (xs[None] / sigma.float()[:, None]) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Per-sample separable Gaussian blur with reflect padding: x (B, C, H, W), sigma (B,)."""
    b, c, h, w = x.shape
    k = gaussian_kernels(sigma, kernel_size).to(x.dtype).repeat_interleave(c, dim=0)  # (B*C, k)
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, 1, kernel_size), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, kernel_size, 1), groups=b * c)
    return y.view(b, c, h, w)


def _apply_where(x: torch.Tensor, sel: torch.Tensor, fn, *params: torch.Tensor) -> torch.Tensor:
    """x with ``fn`` applied to the selected samples only (sel: (B,) bool); the others untouched."""
    idx = sel.nonzero().squeeze(1)
    if idx.numel() == 0:
        return x
    if idx.numel() == x.shape[0]:
        return fn(x, *params)
    x = x.clone()
    x[idx] = fn(x[idx], *(p[idx] for p in params))
    return x


# -- input ------------------------------------------------------------------------------------------------------
def float_images(x: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (0..255) or float (0..1) (B, C, H, W) -> float in [0, 1] with ``channels`` channels."""
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    cin = x.shape[1]
    if cin == channels:
        return x
    if cin == 1 and channels == 3:
        return x.repeat(1, 3, 1, 1)
    if cin == 3 and channels == 1:
        return to_gray(x)
    raise ValueError(f"images have {cin} channels; expected 1 or 3 (data.channels={channels})")


def prepare_images(images, channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A (B, C, H, W) batch or a list of (C, H_i, W_i) images -> float (B, C, Hmax, Wmax) in [0, 1] (zero-padded
    at the bottom / right), heights (B,), widths (B,)."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"batched augmentation needs (B, C, H, W) images, got shape {tuple(images.shape)}")
        x = float_images(images, channels)
        b, _, h, w = x.shape
        return x, torch.full((b,), h, device=x.device), torch.full((b,), w, device=x.device)
    images = list(images)
    if not images:
        raise ValueError("batched augmentation got an empty list of images")
    hmax = max(int(im.shape[-2]) for im in images)
    wmax = max(int(im.shape[-1]) for im in images)
    first = float_images(images[0][None], channels)
    x = first.new_zeros((len(images), first.shape[1], hmax, wmax))
    for k, im in enumerate(images):
        x[k, :, : im.shape[-2], : im.shape[-1]] = float_images(im[None], channels)[0]
    hs = torch.tensor([int(im.shape[-2]) for im in images], device=x.device)
    ws = torch.tensor([int(im.shape[-1]) for im in images], device=x.device)
    return x, hs, ws


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: int, batch_index: torch.Tensor | None = None,
                clamp: torch.Tensor | bool = True) -> torch.Tensor:
    """Crop boxes (n, 4) pixel (x0, y0, x1, y1) of images x (B, C, H, W) -> (n, C, size, size), bilinear with area
    averaging (an antialiased downscale); ``batch_index`` (n,) says which image each box is on (default: box i on
    image i). ``clamp``: bring the crops of 8-bit images back into [0, 1] (a (B,) mask says which images are;
    float data in their own range, e.g. DICOM units, are never clipped)."""
    if batch_index is None:
        batch_index = torch.arange(len(boxes), device=x.device)
    rois = torch.cat([batch_index.to(boxes.dtype)[:, None], boxes], dim=1)
    out = roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    if isinstance(clamp, bool):
        return out.clamp_(0, 1) if clamp else out
    rows = clamp.to(out.device)[batch_index]
    return torch.where(rows.view(-1, 1, 1, 1), out.clamp(0, 1), out)


def eight_bit(images) -> torch.Tensor:
    """(B,) bool: which images of a batch (a tensor or a list) are 8-bit (uint8): those get the photometric ops and
    are clipped to [0, 1]; float images (multiband, 16-bit, DICOM) keep their values."""
    items = [images] if isinstance(images, torch.Tensor) else list(images)
    flags = [im.dtype == torch.uint8 for im in items]
    if isinstance(images, torch.Tensor):
        return torch.full((images.shape[0],), flags[0], dtype=torch.bool)
    return torch.tensor(flags, dtype=torch.bool)


def normalize(v: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(list(mean), device=v.device, dtype=v.dtype).view(1, -1, 1, 1)
    s = torch.tensor(list(std), device=v.device, dtype=v.dtype).view(1, -1, 1, 1)
    return (v - m) / s


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


__all__ = [
    "GPUMultiCrop", "RawImageDataset", "adjust_brightness", "adjust_contrast", "adjust_hue", "adjust_saturation",
    "collate_raw", "crop_resize", "eight_bit", "float_images", "gaussian_blur", "gaussian_kernels", "normalize", "pil_to_uint8",
    "prepare_images", "sample_crop_boxes", "to_gray",
]
