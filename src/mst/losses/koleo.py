"""KoLeo regulariser (Sablayrolles et al., ICLR 2019; DINOv2 applies it to the student's CLS tokens)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """-mean_i log(d_i + eps), d_i the distance from L2-normalised feature i to its nearest other feature in the
    batch: the Kozachenko-Leonenko entropy estimate, up to constants. Minimising it spreads the features over the
    sphere, against the dimensional collapse of small-data self-distillation.

    >>> float(koleo_loss(torch.eye(2))) == -float(torch.log(torch.tensor(2.0).sqrt() + 1e-8))
    True
    """
    if features.shape[0] < 2:  # one image has no neighbour: no term (dino.koleo_weight refuses batch_size 1)
        return features.float().sum() * 0.0
    x = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():
        sims = x @ x.t()
        sims.fill_diagonal_(-2.0)  # never one's own neighbour
        nearest = sims.argmax(dim=1)
    dists = (x - x[nearest]).norm(dim=-1)
    return -torch.log(dists + eps).mean()
