"""MST's attention-guided mask (eq. 5, Algorithm 1): only the lowest-attention 1/num tokens may be masked."""
from __future__ import annotations

import torch

from mst.masking.base import MASKS, MaskResult, MaskStrategy, check_importance
from mst.masking.bernoulli import bernoulli


def low_attention_candidates(importance: torch.Tensor, num: int) -> torch.Tensor:
    """Per image, the floor(N / num) tokens with the lowest attention (Algorithm 1's threshold tau).

    Ties are broken by a stable sort on position, so exactly floor(N / num) tokens are candidates and a token with
    higher attention than any non-candidate is never one.

    >>> low_attention_candidates(torch.tensor([[0.4, 0.1, 0.3, 0.2]]), num=2)  # the lower half: 0.1 and 0.2
    tensor([[False,  True, False,  True]])
    """
    b, n = importance.shape
    k = n // int(num)
    order = torch.sort(importance, dim=1, stable=True).indices
    cand = torch.zeros(b, n, dtype=torch.bool, device=importance.device)
    if k > 0:
        cand.scatter_(1, order[:, :k], True)
    return cand


class AttentionGuidedMask(MaskStrategy):
    """The lowest-attention 1/num tokens are candidates; each is masked with probability ``p``. The
    highest-attention tokens (the object's key parts) are never masked."""

    needs_importance = True

    def __init__(self, num: int = 8, p: float = 0.1) -> None:
        self.num = int(num)
        self.p = float(p)

    @classmethod
    def from_config(cls, section, patch_size):
        return cls(section["num"], section["p"])

    def __call__(self, batch, grid, importance, generator):
        n = grid[0] * grid[1]
        check_importance(importance, batch, n, "the attention-guided mask needs the teacher's CLS attention")
        cand = low_attention_candidates(importance, self.num)
        draw = bernoulli((batch, n), self.p, generator, importance.device)
        return MaskResult(mask=cand & draw, candidates=cand)


MASKS.register("attention", AttentionGuidedMask)
