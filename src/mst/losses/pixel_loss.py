"""Pixel reconstruction losses of the MIM methods.

* MAE: mean squared error per patch (over its pixels), averaged over the patches that count (the masked ones),
  against raw or per-patch normalised pixels (``norm_pix_loss``: each target patch minus its mean, divided by
  sqrt(unbiased variance + 1e-6)).
* SimMIM: absolute error on the masked pixels, divided by the number of masked pixels and the channel count
  (computed on patch tokens, so it also works on the token subsets AMT leaves).
"""
from __future__ import annotations

import torch


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(..., P) patch pixels -> each patch minus its mean over P, over sqrt(unbiased variance + eps) (MAE)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def patch_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, norm_pix: bool = False) -> torch.Tensor:
    """pred / target (B, M, P) patch pixels, weight (B, M) (1 = counts, 0 = ignored; fractional weights allowed) ->
    sum over patches of weight x mean squared error of the patch, divided by the sum of weights."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    target = target.float()
    if norm_pix:
        target = normalize_patches(target)
    per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
    w = weight.to(per_patch.dtype)
    return (per_patch * w).sum() / w.sum().clamp_min(1e-12)


def patch_l1(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, channels: int,
             norm_pix: bool = False) -> torch.Tensor:
    """SimMIM's loss in token space: pred / target (B, M, P = patch^2 * C), weight (B, M) bool (masked tokens) ->
    summed absolute error of the masked tokens' pixels / (masked pixels + 1e-5) / C, which is the reference's
    L1 over the masked pixels of the image."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    target = target.float()
    if norm_pix:
        target = normalize_patches(target)
    w = weight.to(torch.float32)
    err = (pred.float() - target).abs().sum(dim=-1)
    pixels = w.sum() * (pred.shape[-1] // channels)
    return (err * w).sum() / (pixels + 1e-5) / channels
