"""Batched image ops on tensors: crop-box sampling and crop + resize, photometric ops (brightness, contrast,
saturation, hue, grayscale), Gaussian blur, input preparation and normalisation, each with per-sample parameters.

They are plain tensor-in / tensor-out functions, device agnostic (CPU or GPU), kept apart from any one pipeline
because several share them: the tensor multi-crop (:class:`~mst.data.tensor_multicrop.GPUMultiCrop`), the
single-view pipeline (:mod:`mst.data.single_view`), the degradations (:mod:`mst.degradations.blur`) and AMT's map
cropping (:mod:`mst.methods.importance`, :mod:`mst.methods.mim_common`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL / torchvision
RATIO = (3.0 / 4.0, 4.0 / 3.0)


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


__all__ = [
    "GRAY_WEIGHTS", "RATIO", "adjust_brightness", "adjust_contrast", "adjust_hue", "adjust_saturation", "crop_resize",
    "eight_bit", "float_images", "gaussian_blur", "gaussian_kernels", "normalize", "prepare_images",
    "sample_crop_boxes", "to_gray",
]
