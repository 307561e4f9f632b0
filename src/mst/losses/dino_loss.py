"""DINO's self-distillation loss (MST eq. 2) with teacher centering and a teacher-temperature schedule."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mst.health import CollapseWarning, feature_stats  # noqa: F401  (re-exported: the DINO family's monitors)


def collapse_stats(teacher_probs: torch.Tensor, ce: float, center: torch.Tensor) -> dict[str, float]:
    """Signs of DINO's two collapses, from one step: the teacher's mean entropy H and its ratio to ln K (-> 1: a
    uniform teacher, the small-data drift), the KL between the teacher's and the student's terms (CE - H: -> 0 when
    the student has nothing left to match) and the centre's norm (it grows when one dimension dominates)."""
    q = teacher_probs.float()
    entropy = float(-(q * torch.log(q.clamp_min(1e-12))).sum(-1).mean())
    return {"teacher_entropy": entropy, "teacher_entropy_ratio": entropy / float(np.log(q.shape[-1])),
            "kl": ce - entropy, "center_norm": float(center.norm())}


class CollapseMonitor:
    """Warns once when the teacher's entropy stays above ``ratio`` x ln K for ``steps`` steps in a row: the drift
    towards a uniform teacher that small data, small batches and few steps bring (docs/results.md). 0.85: the demo's
    MST run (Fashion-MNIST, 1500 steps of 32, K = 1024), whose features end barely above random init, sits at
    0.87-0.89 from step ~800 on, after 0.51-0.56 around step 200-400."""

    def __init__(self, ratio: float = 0.85, steps: int = 100) -> None:
        self.ratio, self.steps = float(ratio), int(steps)
        self.run, self.warned = 0, False

    def update(self, entropy_ratio: float, step: int) -> None:
        self.run = self.run + 1 if entropy_ratio > self.ratio else 0
        if self.run >= self.steps and not self.warned:
            self.warned = True
            import warnings

            warnings.warn(
                f"the DINO teacher's output entropy has stayed above {self.ratio:.0%} of ln K for {self.steps} steps "
                f"(step {step}): it is drifting towards a uniform distribution and the features will be close to "
                "random init. Try dino.koleo_weight=0.1 and a higher optim.base_lr (the CPU presets' recipe, found "
                "by the search in docs/results.md), a lower dino.teacher_temp, more steps or more data",
                CollapseWarning, stacklevel=2)


CENTERINGS = ("center", "sinkhorn")


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, iters: int = 3) -> torch.Tensor:
    """Teacher targets by Sinkhorn-Knopp (SwAV; DINOv2's replacement for the centre): the (B, K) assignment
    proportional to exp(scores) whose prototypes each get 1/K of the batch (rows, across all processes) and
    whose images each carry 1/B (columns), after ``iters`` alternating normalisations. Rows sum to 1 on return.
    A batch cannot put all its mass on one prototype, which is what keeps it from collapsing without a centre."""
    q = torch.exp(scores - scores.max()).t()  # (K, B); the shift cancels in the normalisations
    distributed = dist.is_available() and dist.is_initialized()
    batch = torch.tensor([float(q.shape[1])], device=q.device)
    if distributed:
        dist.all_reduce(batch)
    k = q.shape[0]
    total = q.sum()
    if distributed:
        dist.all_reduce(total)
    q = q / total
    for _ in range(int(iters)):
        rows = q.sum(dim=1, keepdim=True)
        if distributed:
            dist.all_reduce(rows)
        q = q / rows / k
        q = q / q.sum(dim=0, keepdim=True) / batch
    return (q * batch).t()


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher distribution on each global view and the student's
    distribution on every *other* view, averaged over those pairs.

    The center is an EMA (``center_momentum``) of the teacher's mean output over the global batch (all-reduced
    across processes), updated after the loss is computed. It is a buffer, so it is saved with the checkpoint.
    """

    def __init__(
        self,
        out_dim: int,
        n_global: int = 2,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 0,
        epochs: int = 100,
        center_momentum: float = 0.9,
        centering: str = "center",
        sinkhorn_iters: int = 3,
    ) -> None:
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"dino.centering={centering!r} is not one of {', '.join(CENTERINGS)}")
        self.n_global = n_global
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.centering, self.sinkhorn_iters = centering, int(sinkhorn_iters)
        self.register_buffer("center", torch.zeros(1, out_dim))
        warm = int(min(warmup_teacher_temp_epochs, epochs))
        self.teacher_temps = np.concatenate(
            [np.linspace(warmup_teacher_temp, teacher_temp, warm), np.ones(epochs - warm) * teacher_temp]
        )

    def teacher_temp(self, epoch: int) -> float:
        return float(self.teacher_temps[min(epoch, len(self.teacher_temps) - 1)])

    def forward(self, student_out: list[torch.Tensor], teacher_out: torch.Tensor, epoch: int) -> torch.Tensor:
        """``student_out``: one (B, K) logit tensor per view, the global views first; ``teacher_out``: the
        teacher's (n_global * B, K) logits on the global views, view-major."""
        temp = self.teacher_temp(epoch)
        if self.centering == "sinkhorn":
            teacher_probs = sinkhorn_knopp(teacher_out.float().detach() / temp, self.sinkhorn_iters)
        else:
            teacher_probs = F.softmax((teacher_out.float() - self.center) / temp, dim=-1).detach()
        teacher_probs = teacher_probs.chunk(self.n_global)
        student_logp = [F.log_softmax(s.float() / self.student_temp, dim=-1) for s in student_out]
        total, pairs = 0.0, 0
        for i, q in enumerate(teacher_probs):
            for v, logp in enumerate(student_logp):
                if v == i:
                    continue  # never match a view with itself
                total = total + torch.sum(-q * logp, dim=-1).mean()
                pairs += 1
        loss = total / pairs
        self.stats = collapse_stats(torch.cat(teacher_probs), float(loss.detach()), self.center)
        if self.centering == "center":
            self.update_center(teacher_out)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        batch_center = teacher_out.float().sum(dim=0, keepdim=True)
        count = torch.tensor([float(teacher_out.shape[0])], device=teacher_out.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            dist.all_reduce(count)
        batch_center = batch_center / count
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))
