"""What the engine hands a method each step: the views on the device and what is known about each image."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    views: list[torch.Tensor]  # normalised (B, C, H, W) views: MST [global 1, global 2, local 1..]; else [view]
    labels: torch.Tensor  # (B,) int64, -1 for unlabelled images
    index: torch.Tensor  # (B,) int64 position of each image in the training dataset
    boxes: torch.Tensor | None = None  # (B, 4) crop box (x0, y0, x1, y1) of views[0], fractions of the source image
    flips: torch.Tensor | None = None  # (B,) bool: views[0] was flipped horizontally after cropping

    @property
    def size(self) -> int:
        return int(self.views[0].shape[0])
