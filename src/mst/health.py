"""Signs of collapse that any method's features can show, shared by the DINO loss (per step) and the online
evaluation (per epoch) without either importing the other; and the sign of a classifier that does not learn."""
from __future__ import annotations

import math
from collections import deque

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


class NotLearningWarning(UserWarning):
    """A supervised run's loss stays at chance: the classifier is not learning (often an lr too large for it)."""


class ChanceLossMonitor:
    """Warns once when a classifier's training loss, averaged over the last ``steps`` steps after the lr warm-up
    (from the first step whose lr is not above the previous one), is at or above ``ratio`` x ln K: the loss of a
    uniform prediction, with or without label smoothing. On Fashion-MNIST a fine-tune at base lr 1.6e-2 hovered at
    ln 10 (2.24-2.31) from step ~80 to ~250 of 480 and ended at 29 % (docs/results.md, "Attention as an axis");
    the runs that learn are under 0.97 ln K by the end of the warm-up. A mean, not every step: the loss of a
    near-uniform classifier still dips under the line now and then.

    >>> m = ChanceLossMonitor(num_classes=10, steps=2)
    >>> [m.update(2.30, lr, step) for step, lr in enumerate([1.0, 2.0, 2.0, 1.9, 1.8])]  # warns once
    [False, False, False, True, False]
    """

    def __init__(self, num_classes: int, ratio: float = 0.97, steps: int = 100) -> None:
        self.num_classes, self.chance = int(num_classes), math.log(num_classes)
        self.ratio, self.steps = float(ratio), int(steps)
        self.last_lr, self.warmed_up, self.warned = None, False, False
        self.losses: deque[float] = deque(maxlen=self.steps)

    def update(self, loss: float, lr: float, step: int) -> bool:
        """Record one step; True on the step that warns."""
        self.warmed_up = self.warmed_up or (self.last_lr is not None and lr <= self.last_lr)
        self.last_lr = lr
        if not self.warmed_up or self.warned:
            return False
        self.losses.append(float(loss))
        if len(self.losses) < self.steps or sum(self.losses) / self.steps < self.ratio * self.chance:
            return False
        self.warned = True
        import warnings

        warnings.warn(f"the training loss has stayed at chance (a mean >= {self.ratio:.0%} of ln {self.num_classes} = "
                      f"{self.chance:.2f} over {self.steps} steps after the warm-up, step {step}): the classifier is "
                      "not learning. Try a lower optim.base_lr or finetune.layer_decay", NotLearningWarning,
                      stacklevel=2)
        return True
