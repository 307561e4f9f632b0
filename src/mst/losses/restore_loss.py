"""MST's restoration loss (eq. 9): mean absolute error between the decoder's output and the augmented view."""
from __future__ import annotations

import torch


def restore_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    patch_size: int | None = None,
    region: str = "image",
) -> torch.Tensor:
    """L1 over the pixels of ``region``.

    ``image`` (the paper): every pixel of the view, E_{HxW} |x - g(f_s(x, m))|.
    ``masked`` (ablation, MLM-like): only pixels of masked tokens; ``mask`` (B, N) and ``patch_size`` needed.
    With no masked token in the batch the masked-only loss is 0 (and still differentiable).
    """
    if pred.shape != target.shape:
        raise ValueError(f"decoder output {tuple(pred.shape)} does not match the view {tuple(target.shape)}")
    err = (pred.float() - target.float()).abs()
    if region == "image":
        return err.mean()
    if region != "masked":
        raise ValueError(f"decoder.target={region!r} is not one of image, masked")
    if mask is None or patch_size is None:
        raise ValueError("the masked-only restore loss needs the mask and the patch size")
    b, c, hh, ww = pred.shape
    h, w = hh // patch_size, ww // patch_size
    pix = mask.reshape(b, 1, h, w).float()
    pix = pix.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)
    denom = pix.sum() * c
    return (err * pix).sum() / denom.clamp_min(1.0)
