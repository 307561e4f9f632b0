"""AttMask-High (Kakogeorgiou et al., "What to Hide from Your Students", ECCV 2022): mask the tokens the model
attends to most, a fixed share per image, so the student must infer the object's key parts from the context.

The opposite choice to MST's (which masks only low-attention tokens); an exact count per image, so MAE can batch
the visible rest."""
from __future__ import annotations

import torch

from mst.masking.base import MASKS, MaskResult, MaskStrategy, check_importance, check_ratio


def top_attended(importance: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N) -> (B, N) bool: per image the ``k`` highest-importance tokens (ties: the earlier position first)."""
    b, n = importance.shape
    order = torch.sort(-importance, dim=1, stable=True).indices
    out = torch.zeros(b, n, dtype=torch.bool, device=importance.device)
    if k > 0:
        out.scatter_(1, order[:, :k], True)
    return out


class AttMaskHigh(MaskStrategy):
    """The ``int(N * mask_ratio)`` most-attended tokens of each image are masked (no randomness)."""

    needs_importance = True

    def __init__(self, ratio: float) -> None:
        self.ratio = check_ratio(ratio)

    @classmethod
    def from_config(cls, section, patch_size):
        return cls(section["ratio"])

    def __call__(self, batch, grid, importance, generator):
        n = grid[0] * grid[1]
        check_importance(importance, batch, n,
                         "AttMask needs a per-token attention (importance) to mask the most-attended tokens")
        return MaskResult(mask=top_attended(importance, int(n * self.ratio)))


MASKS.register("attmask", AttMaskHigh)
