"""The token-encoder contract every backbone (ViT, Swin) keeps, and the pieces both implement it with.

``backbone(x, mask=None, keep=None, ...) -> BackboneOutput``:

* ``mask`` (B, N) bool: these patch tokens are replaced by the learned [MASK] embedding right after the patch
  projection, *before* position embeddings (MST, SimMIM), so a [MASK] token still knows where it sits;
* ``keep`` (B, N) bool, the same count K per image: only these tokens (plus CLS) enter the blocks, gathered after
  position embeddings (MAE's visible tokens, AMT's tokens not thrown away). ``patches`` then holds K tokens, in
  the order of ``keep_index``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mst.masking.replace import replace_tokens


@dataclass
class BackboneOutput:
    cls: torch.Tensor  # (B, D) CLS token (ViT) or mean of the final tokens (Swin), after the final norm
    patches: torch.Tensor  # (B, N or K, D) patch tokens after the final norm
    grid: tuple[int, int]  # (h, w) token grid of the final tokens
    attention: torch.Tensor | None = None  # (B, N) or (B, heads, N) last-block CLS->patch attention
    mask_grid: tuple[int, int] | None = None  # grid the mask and attention live on (the patch grid); None: grid
    keep_index: torch.Tensor | None = None  # (B, K) positions of ``patches`` when a keep set was given

    def __post_init__(self) -> None:
        if self.mask_grid is None:
            self.mask_grid = self.grid


def new_mask_token(dim: int) -> nn.Parameter:
    """The learnable [MASK] embedding, N(0, 0.02) like timm's other tokens."""
    return nn.Parameter(nn.init.normal_(torch.zeros(1, 1, dim), std=0.02))


def mask_grid_tokens(
    tokens: torch.Tensor,
    mask: torch.Tensor | None,
    mask_token: torch.Tensor | None,
    replacement: str,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Patch-embedded tokens (B, h, w, D) with the masked ones replaced (MST eq. 6); unchanged when ``mask`` is None."""
    if mask is None:
        return tokens
    if mask_token is None:
        raise RuntimeError("this backbone has no [MASK] embedding (built with mask_token=False, e.g. a teacher)")
    b, h, w, d = tokens.shape
    flat = replace_tokens(tokens.reshape(b, h * w, d), mask, mask_token, replacement, generator)
    return flat.reshape(b, h, w, d)


def check_divisible(x: torch.Tensor, stride: int, what: str) -> None:
    if x.shape[-1] % stride or x.shape[-2] % stride:
        raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by the {what} {stride}")
