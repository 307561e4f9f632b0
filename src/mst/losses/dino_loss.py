"""DINO's self-distillation loss (MST eq. 2) with teacher centering and a teacher-temperature schedule."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


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
    ) -> None:
        super().__init__()
        self.n_global = n_global
        self.student_temp = student_temp
        self.center_momentum = center_momentum
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
        self.update_center(teacher_out)
        return total / pairs

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        batch_center = teacher_out.float().sum(dim=0, keepdim=True)
        count = torch.tensor([float(teacher_out.shape[0])], device=teacher_out.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            dist.all_reduce(count)
        batch_center = batch_center / count
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))
