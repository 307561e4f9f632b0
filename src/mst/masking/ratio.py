"""Masking a fixed share of the image, with exact counts per image (so token subsets batch):

* ``patches`` (MAE): per image, argsort of uniform noise; the first ``int(N * (1 - ratio))`` tokens stay visible,
  the rest are masked (MAE leaves them out of its encoder).
* ``blocks`` (SimMIM): the image is cut into mask units of ``mask.unit`` pixels (a multiple of the patch
  size); ``ceil(units * ratio)`` units are chosen uniformly per image and expanded to the token grid. Every token
  enters the encoder (no ``keep``): masked ones become [MASK].
"""
from __future__ import annotations

import math

import torch

from mst.masking.base import MASKS, MaskResult, MaskStrategy, check_ratio, gen_device


def random_ranks(batch: int, n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """(B, n) a uniformly random permutation per image (argsort of uniform noise, as MAE)."""
    noise = torch.rand(batch, n, generator=generator, device=gen_device(generator, device))
    return torch.argsort(noise, dim=1).to(device)


class PatchRatioMask(MaskStrategy):
    def __init__(self, ratio: float) -> None:
        self.ratio = check_ratio(ratio)

    @classmethod
    def from_config(cls, section, patch_size):
        return cls(section["ratio"])

    def visible_count(self, n: int) -> int:
        return int(n * (1 - self.ratio))

    def __call__(self, batch, grid, importance, generator):
        n = grid[0] * grid[1]
        device = importance.device if importance is not None else "cpu"
        order = random_ranks(batch, n, generator, device)
        visible = torch.zeros(batch, n, dtype=torch.bool, device=device)
        visible.scatter_(1, order[:, : self.visible_count(n)], True)
        return MaskResult(mask=~visible)


class BlockMask(MaskStrategy):
    def __init__(self, ratio: float, unit: int) -> None:
        self.ratio, self.unit = check_ratio(ratio), int(unit)  # unit: mask-unit side in tokens

    @classmethod
    def from_config(cls, section, patch_size):
        return cls(section["ratio"], mask_unit_tokens(section, patch_size))

    def __call__(self, batch, grid, importance, generator):
        h, w = grid
        if h % self.unit or w % self.unit:
            raise ValueError(f"the {h}x{w} token grid is not divisible by the mask unit of {self.unit} tokens")
        uh, uw = h // self.unit, w // self.unit
        units = uh * uw
        count = math.ceil(units * self.ratio)
        device = importance.device if importance is not None else "cpu"
        order = random_ranks(batch, units, generator, device)
        chosen = torch.zeros(batch, units, dtype=torch.bool, device=device)
        chosen.scatter_(1, order[:, :count], True)
        grid_mask = chosen.reshape(batch, uh, 1, uw, 1).expand(batch, uh, self.unit, uw, self.unit)
        return MaskResult(mask=grid_mask.reshape(batch, h * w))


def mask_unit_tokens(section: dict, patch_size: int) -> int:
    """``mask.unit`` (pixels; null = the patch size) as a number of tokens per unit side."""
    size = section["unit"] if section["unit"] is not None else patch_size
    if size % patch_size:
        raise ValueError(f"mask.unit={size} is not a multiple of model.patch_size={patch_size}")
    return size // patch_size


MASKS.register("patches", PatchRatioMask)
MASKS.register("blocks", BlockMask)
