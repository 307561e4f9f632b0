"""Spatial misalignment: zoomed-in and zoomed-out views (Beyond Masking's best-performing family).

* ``zoom_in``: the encoder sees the centre of the view magnified by ``zoom_in`` (9/7: the reference feeds the
  centre 224 px of a 288 px crop); the decoder's output stands for the whole view. The loss: ``1 - ring_weight`` x
  the per-token term in the input's frame (the prediction's centre resized onto the input's grid; masked tokens
  when masking is on) + ``ring_weight`` (0.2) x MSE on the border ring the input does not show (all ring pixels).
  Ours magnifies the centre of the 28 px view instead of cropping a larger one, so the view size (and the
  evaluation size) stays the pipeline's: the geometry between input and target is the reference's.
* ``zoom_out``: the view shrunk by ``zoom_out`` (5/7: 160 of 224 px) and placed at a random offset (per image) in
  a canvas of the view's size, the border filled with mirrored copies of the image's edges; the prediction (in the
  clean frame) and the target go through the same shrink and placement, and are compared in the canvas.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mst.degradations.base import DEGRADATIONS, Degradation, Degraded, uniform


def resample(x: torch.Tensor, box: torch.Tensor, size: int) -> torch.Tensor:
    """Boxes (B, 4) in pixels of x (B, C, H, W), each resampled to size x size (area-averaging bilinear, values not
    clipped: x is a normalised image)."""
    from torchvision.ops import roi_align

    rois = torch.cat([torch.arange(len(x), device=x.device, dtype=x.dtype)[:, None], box.to(x.dtype)], dim=1)
    return roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def centre_box(n: int, size: int, zoom: float, device) -> torch.Tensor:
    """(n, 4) the central box of side size / zoom, in pixels."""
    side = size / zoom
    lo = (size - side) / 2
    return torch.tensor([lo, lo, lo + side, lo + side], device=device, dtype=torch.float32).expand(n, 4)


class ZoomIn(Degradation):
    def __init__(self, zoom: float = 9 / 7, ring_weight: float = 0.2) -> None:
        if zoom <= 1:
            raise ValueError(f"degrade.zoom_in={zoom} must be > 1 (the input is the magnified centre)")
        self.zoom, self.ring_weight = float(zoom), float(ring_weight)

    @classmethod
    def from_config(cls, section):
        return cls(section["zoom_in"], section["ring_weight"])

    def __call__(self, images, generator):
        b, _, h, w = images.shape
        box = centre_box(b, h, self.zoom, images.device)

        def to_input_frame(img: torch.Tensor) -> torch.Tensor:
            return resample(img, box[: len(img)], h)

        side = h / self.zoom
        lo = (h - side) / 2
        ys = torch.arange(h, device=images.device, dtype=torch.float32) + 0.5
        inside = (ys > lo) & (ys < lo + side)
        ring = ~(inside[:, None] & inside[None, :])  # pixels whose centre lies outside the input's field of view
        return Degraded(input=to_input_frame(images), target=images, to_input_frame=to_input_frame,
                        region=ring[None, None].float(), region_weight=self.ring_weight)


class ZoomOut(Degradation):
    def __init__(self, zoom: float = 7 / 5) -> None:
        if zoom <= 1:
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
