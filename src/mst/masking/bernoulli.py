"""BERT-style masking (MST eq. 3): each token independently masked with probability p; and no masking at all."""
from __future__ import annotations

import torch

from mst.masking.base import MASKS, MaskResult, MaskStrategy, gen_device


class NoMask(MaskStrategy):
    """Plain DINO: the student sees every token."""

    def __call__(self, batch, grid, importance, generator):
        return None


def bernoulli(shape: tuple[int, int], p: float, generator: torch.Generator | None, device) -> torch.Tensor:
    """(B, N) bool, each entry True with probability ``p`` (drawn on the generator's device, returned on ``device``)."""
    return (torch.rand(shape, generator=generator, device=gen_device(generator, device)) < p).to(device)


class RandomMask(MaskStrategy):
    """Each token masked with probability ``p``, independently (so the count varies from image to image)."""

    def __init__(self, p: float = 0.15) -> None:
        self.p = float(p)

    @classmethod
    def from_config(cls, section, patch_size):
        return cls(section["p"])

    def __call__(self, batch, grid, importance, generator):
        device = importance.device if importance is not None else "cpu"
        return MaskResult(mask=bernoulli((batch, grid[0] * grid[1]), self.p, generator, device))


MASKS.register("none", NoMask)
MASKS.register("random", RandomMask)
