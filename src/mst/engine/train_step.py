"""One MST training step, in the order of Algorithm 2:

    views -> teacher (DINO targets + CLS attention, one pass) -> mask -> student -> losses

Optimisation (backward, clipping, optimizer, EMA) is the trainer's job; this file only computes the loss, so
it reads top to bottom and can be tested on its own.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mst.losses import DINOLoss, restore_loss
from mst.masking import MaskStrategy


@dataclass
class StepOutput:
    loss: torch.Tensor  # lambda1 * CE + lambda2 * restore (what backward() is called on)
    metrics: dict[str, float]  # each term, the realised mask ratio
    mask: torch.Tensor | None  # (n_global * B, N) bool, for inspection and tests


def mst_step(
    views: list[torch.Tensor],
    student: nn.Module,
    teacher: nn.Module,
    dino_loss: DINOLoss,
    mask_strategy: MaskStrategy,
    cfg: dict,
    epoch: int,
    generator: torch.Generator | None = None,
) -> StepOutput:
    """``views``: [global_1, global_2, local_1, ..., local_n], each a (B, C, H, W) batch, already on device.

    ``student`` may be wrapped in DDP; ``teacher`` is an :class:`~mst.models.encoder.Encoder` without gradients.
    """
    n_global, n_local = 2, len(views) - 2
    global_views = torch.cat(views[:n_global])  # (2B, C, H, W): view-major, like the teacher's outputs
    local_views = torch.cat(views[n_global:]) if n_local else None

    # 1. Teacher: the DINO targets and, from the *same* pass, the last block's CLS->patch attention (eq. 4).
    with torch.no_grad():
        t = teacher.backbone(global_views, return_attention=mask_strategy.needs_attention)
        teacher_logits = teacher.head(t.cls)

    # 2. Mask: which of the student's global-view tokens become [MASK] (eq. 5 for MST; locals are never masked).
    n_tokens = t.mask_grid[0] * t.mask_grid[1]
    result = mask_strategy(global_views.shape[0], n_tokens, t.attention, generator)
    mask = None if result is None else result.mask.to(global_views.device)

    # 3. Student: masked global views + local crops through backbone and head; decoder on the global views.
    s = student(
        global_views,
        local_views,
        mask=mask,
        replacement=cfg["mask"]["replacement"],
        n_global=n_global,
        n_local=n_local,
    )

    # 4. Losses: self-distillation (eq. 2) and restoration of the whole augmented view (eq. 9), eq. 11.
    loss_ce = dino_loss(s.logits, teacher_logits, epoch)
    lam1, lam2 = float(cfg["loss"]["ce_weight"]), float(cfg["loss"]["restore_weight"])
    loss = lam1 * loss_ce
    metrics = {"loss_ce": loss_ce.item()}
    if s.reconstruction is not None:
        patch = cfg["model"]["patch_size"]
        loss_restore = restore_loss(s.reconstruction, global_views, mask, patch, cfg["decoder"]["target"])
        loss = loss + lam2 * loss_restore
        metrics["loss_restore"] = loss_restore.item()
    metrics["loss"] = loss.item()
    metrics["mask_ratio"] = mask.float().mean().item() if mask is not None else 0.0
    return StepOutput(loss=loss, metrics=metrics, mask=mask)
