"""Losses: DINO self-distillation (MST eq. 2), MST restoration (eq. 9), MIM pixel losses (MAE, SimMIM)."""
from mst.losses.dino_loss import DINOLoss
from mst.losses.pixel_loss import normalize_patches, patch_l1, patch_mse
from mst.losses.restore_loss import restore_loss

__all__ = ["DINOLoss", "normalize_patches", "patch_l1", "patch_mse", "restore_loss"]
