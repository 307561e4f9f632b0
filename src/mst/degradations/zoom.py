"""Spatial misalignment: zoomed-in and zoomed-out views (Beyond Masking's best-performing family).

* ``zoom_in``, the reference's geometry: the pipeline crops a view ``zoom_in`` (9/7) times the input size (288 px
  for 224), the encoder sees its native-resolution centre (224 px, no resampling), and the decoder's output on the
  input's grid stands for the whole wider view. The loss, as the reference's ``forward_loss``: ``1 - ring_weight``
  (0.8) x the per-token MSE of the prediction (area-resized to the view, its centre cut out) against the input's
  (normalised) patches, on the hidden tokens (all of them when nothing is hidden), + ``ring_weight`` (0.2) x the
  *sum* of the MSEs of the four border strips (top, bottom, left, right) of the prediction against the whole view
  (area-resized to the input size, normalised per patch, area-resized back).
* ``zoom_out``: the view shrunk by ``zoom_out`` (5/7: 160 of 224 px) and placed at a random offset (per image) in
  a canvas of the view's size, the border filled with mirrored copies of the image's edges; the prediction (in the
  clean frame) and the target go through the same shrink and placement, and are compared in the canvas.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mst.degradations.base import DEGRADATIONS, Degradation, Degraded, uniform
from mst.settings import make_spec


_AREA: dict[tuple, torch.Tensor] = {}


def area_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """``F.interpolate(x, (size, size), mode="area")`` of square images as two small matrix products: area
    resizing averages over a rectangle, so it is one (size x n) averaging matrix per axis (built once per shape).
    Same values (to float rounding), about 4x faster than adaptive average pooling on CPU for the 28 <-> 36 px
    resizes of every zoom-in step, forward and backward (benchmarks/step_time.py: MAE + zoom-in against MAE).

    >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
    >>> area_resize(x, 2)  # each output pixel: the mean of a 2 x 2 block
    tensor([[[[ 2.5000,  4.5000],
              [10.5000, 12.5000]]]])
    """
    n = x.shape[-1]
    x = x.float()
    key = (n, size, x.device)
    if key not in _AREA:
        rows, cols = torch.arange(size), torch.arange(n)
        start, end = (rows * n) // size, -((-(rows + 1) * n) // size)  # adaptive pooling's window [start, end)
        a = ((cols >= start[:, None]) & (cols < end[:, None])).double() / (end - start)[:, None]
        _AREA[key] = a.to(x.device, torch.float32)
    a = _AREA[key]
    if torch.is_autocast_enabled(x.device.type):  # averaging in fp32 under AMP too, as adaptive pooling does
        with torch.autocast(x.device.type, enabled=False):
            return a @ x @ a.T
    return a @ x @ a.T


_STRIPS: dict[tuple, torch.Tensor] = {}


def strip_weights(big: int, b: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(big, big) fp32 weights whose product with a squared error, summed, is the sum of the four border strips'
    means per image and channel (top and bottom: b x big pixels each; left and right: (big - 2b) x b each)."""
    key = (big, b, torch.device(device))
    if key not in _STRIPS:
        w = torch.zeros(big, big, dtype=torch.float64)
        w[:b, :] = w[big - b:, :] = 1.0 / (b * big)
        w[b:big - b, :b] = w[b:big - b, big - b:] = 1.0 / ((big - 2 * b) * b)
        _STRIPS[key] = w.to(device, torch.float32)
    return _STRIPS[key]


class ZoomIn(Degradation):
    settings = {
        "zoom_in": make_spec(9 / 7, "zoom_in: the view is this much wider than the input (centre 224 of 288 px)"),
        "ring_weight": make_spec(0.2, "zoom_in: share of the loss on the border ring the input does not show"),
    }

    def __init__(self, zoom: float = 9 / 7, ring_weight: float = 0.2) -> None:
        if not zoom > 1:  # (nan too)
            raise ValueError(f"degrade.zoom_in={zoom} must be > 1 (the view is this much wider than the input)")
        if not 0 <= ring_weight <= 1:
            raise ValueError(f"degrade.ring_weight={ring_weight} must lie in [0, 1] (the edge term's share)")
        self.zoom, self.ring_weight = float(zoom), float(ring_weight)

    @classmethod
    def from_config(cls, section):
        return cls(section["zoom_in"], section["ring_weight"])

    def border(self, size: int) -> int:
        """Pixels of the view beyond the input on each side: 32 for 224 at 9/7, 4 for 28."""
        return int(round(size * (self.zoom - 1) / 2))

    def view_size(self, size: int) -> int:
        return size + 2 * self.border(size)

    def check(self, channels, size, patch):
        if self.border(size) < 1:
            raise ValueError(f"degrade.zoom_in={self.zoom} adds no border to a {size} px input")

    def __call__(self, images, generator):
        big = images.shape[-1]
        size = next((s for s in range(int(big / self.zoom) - 2, big) if self.view_size(s) == big), None)
        if size is None:
            raise ValueError(f"a {big} px view is not a zoom-in view (degrade.zoom_in={self.zoom}): the pipeline "
                             "crops view_size(model.img_size)")
        b = (big - size) // 2
        centre = images[..., b : b + size, b : b + size].contiguous()  # the encoder reads it: one dense copy
        weight = self.ring_weight
        ring = strip_weights(big, b, images.device)

        def loss(pred: torch.Tensor, mask: torch.Tensor, patch: int, norm_pix: bool) -> torch.Tensor:
            from mst.losses import normalize_patches, patch_mse
            from mst.models.tokens import patchify, unpatchify

            wide = area_resize(pred, big)  # the prediction stands for the whole view
            hidden = mask if bool(mask.any()) else torch.ones_like(mask)
            main = patch_mse(patchify(wide[..., b : b + size, b : b + size], patch), patchify(centre.float(), patch),
                             hidden, norm_pix)
            with torch.no_grad():  # the edge target: the whole view at the input's size, normalised, sized back
                whole = area_resize(images.float(), size)
                if norm_pix:
                    grid = (size // patch, size // patch)
                    whole = unpatchify(normalize_patches(patchify(whole, patch)), patch, grid, whole.shape[1])
                whole = area_resize(whole, big)
            # the sum of the four strip MSEs (top, bottom, left, right) in one weighted sum
            edge = ((wide - whole) ** 2 * ring).sum() / (wide.shape[0] * wide.shape[1])
            return (1 - weight) * main + weight * edge

        return Degraded(input=centre, target=images, loss=loss)


class ZoomOut(Degradation):
    settings = {"zoom_out": make_spec(1.4, "zoom_out: canvas / image side (7/5: 160 px in a 224 px mirror-padded canvas)")}

    def __init__(self, zoom: float = 7 / 5) -> None:
        if not zoom > 1:
            raise ValueError(f"degrade.zoom_out={zoom} must be > 1 (the view shrinks by this factor)")
        self.zoom = float(zoom)

    @classmethod
    def from_config(cls, section):
        return cls(section["zoom_out"])

    def check(self, channels, size, patch):
        small = round(size / self.zoom)
        if size - small < 1:
            raise ValueError(f"degrade.zoom_out={self.zoom} leaves no border at {size} px")

    def __call__(self, images, generator):
        b, _, h, w = images.shape
        small = round(h / self.zoom)
        offsets = (uniform(2 * b, 0, h - small + 1, generator, images.device).floor().long()).reshape(2, b)

        def place(img: torch.Tensor) -> torch.Tensor:
            shrunk = F.interpolate(img, size=(small, small), mode="bilinear", align_corners=False, antialias=True)
            out = []
            for i in range(len(img)):  # F.pad takes one padding for the batch: pad each image (a few per step)
                top, left = int(offsets[0, i]), int(offsets[1, i])
                out.append(_mirror_pad(shrunk[i:i + 1], top, h - small - top, left, w - small - left))
            return torch.cat(out)

        return Degraded(input=place(images), target=images, to_input_frame=place)


def _mirror_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Symmetric padding (the edge pixel repeated, then the image mirrored), as many times as needed."""
    while top or bottom or left or right:
        h, w = x.shape[-2:]
        t, b_, l, r = min(top, h), min(bottom, h), min(left, w), min(right, w)
        x = torch.cat([x[..., :t, :].flip(-2), x, x[..., h - b_:, :].flip(-2)], dim=-2)
        x = torch.cat([x[..., :l].flip(-1), x, x[..., w - r:].flip(-1)], dim=-1)
        top, bottom, left, right = top - t, bottom - b_, left - l, right - r
    return x


DEGRADATIONS.register("zoom_in", ZoomIn)
DEGRADATIONS.register("zoom_out", ZoomOut)
