"""Losses: DINO self-distillation (eq. 2) and MST restoration (eq. 9)."""
from mst.losses.dino_loss import DINOLoss
from mst.losses.restore_loss import restore_loss

__all__ = ["DINOLoss", "restore_loss"]
