"""Fisheye distortion (Beyond Masking's "distorted", the reference's ``get_of_fisheye``): per image, every sampling
position g (in [-1, 1]^2) moves towards a random centre c ~ U(-1, 1)^2 by m ||c - g|| (c - g), m ~ U(strength):
the offset is scaled by the Euclidean distance to the centre, so the distortion is radial. The input samples the
clean view there (bilinear, zeros outside, align_corners as the reference), the target is the clean view. The
centre stays fixed, and since m ||c - g|| <= 2 sqrt(2) m < 1 for m < 0.35 every position moves towards c without
passing it, so the grid stays inside the image."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mst.degradations.base import DEGRADATIONS, Degradation, Degraded, uniform
from mst.settings import make_spec


def fisheye_grid(centres: torch.Tensor, strength: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, 2) centres (x, y) and (B,) strengths -> (B, H, W, 2) sampling grid for ``grid_sample``."""
    ys = torch.linspace(-1, 1, h, device=centres.device)
    xs = torch.linspace(-1, 1, w, device=centres.device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None]  # (1, H, W, 2) as (x, y)
    c = centres[:, None, None, :]
    d = c - grid
    return grid + strength[:, None, None, None] * d.norm(dim=-1, keepdim=True) * d


class Distort(Degradation):
    settings = {"distort": make_spec([0.15, 0.25], "distort: fisheye strength range [low, high]")}

    def __init__(self, strength: tuple[float, float] = (0.15, 0.25)) -> None:
        if len(strength) != 2:
            raise ValueError(f"degrade.distort={list(strength)} must be [low, high]")
        lo, hi = (float(v) for v in strength)
        if not 0 <= lo <= hi < 0.35:
            raise ValueError(f"degrade.distort={list(strength)} must be [low, high] with 0 <= low <= high < 0.35 "
                             "(a position never passes the centre)")
        self.strength = (lo, hi)

    @classmethod
    def from_config(cls, section):
        return cls(tuple(section["distort"]))

    def __call__(self, images, generator):
        b, _, h, w = images.shape
        centres = uniform(2 * b, -1.0, 1.0, generator, images.device).reshape(b, 2)
        strength = uniform(b, *self.strength, generator, images.device)
        grid = fisheye_grid(centres, strength, h, w).to(images.dtype)
        distorted = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return Degraded(input=distorted, target=images)


DEGRADATIONS.register("distort", Distort)
