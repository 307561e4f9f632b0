"""Signs of collapse that any method's features can show, shared by the DINO loss (per step) and the online
evaluation (per epoch) without either importing the other."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class CollapseWarning(UserWarning):
    """The features (or a DINO teacher's output) are collapsing: towards a uniform output or onto few directions."""


def feature_stats(features: torch.Tensor, eps: float = 1e-7) -> dict[str, float]:
    """Dimensional collapse of (N, D) features: RankMe (Garrido et al., ICML 2023), exp of the entropy of the
    normalised singular values (1 for one direction, up to min(N, D)), and the mean over dimensions of the std of
    the L2-normalised features (0 when they collapse to one point, about 1/sqrt(D) when spread out).

    >>> round(feature_stats(torch.eye(4))["rankme"], 3)
    4.0
    """
    f = features.float()
    sv = torch.linalg.svdvals(f)
    p = sv / sv.sum() + eps
    z = F.normalize(f, dim=-1)
    return {"rankme": float(torch.exp(-(p * torch.log(p)).sum())), "feature_std": float(z.std(dim=0).mean())}
