"""Token helpers shared by every method: images <-> patch tokens, and per-image subsets of tokens.

A *keep* set is a (B, N) bool tensor with the same number of True per row (MAE's visible tokens, AMT's tokens not
thrown away). :func:`keep_indices` turns it into sorted indices (B, K), which :func:`gather_tokens` and
:func:`scatter_tokens` use to go between all N tokens and the K kept ones.
"""
from __future__ import annotations

import torch
from torch import nn


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, patch * patch * C), tokens in row-major grid order, pixels (py, px, c) inside."""
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {(h, w)} is not divisible by the patch size {patch}")
    gh, gw = h // patch, w // patch
    x = images.reshape(b, c, gh, patch, gw, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch * patch * c)


def unpatchify(tokens: torch.Tensor, patch: int, grid: tuple[int, int], channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, N, patch * patch * C) -> (B, C, gh * patch, gw * patch)."""
    b, n, d = tokens.shape
    gh, gw = grid
    if n != gh * gw or d != patch * patch * channels:
        raise ValueError(f"{n} tokens of {d} values do not make a {gh}x{gw} grid of {patch}px {channels}-channel patches")
    x = tokens.reshape(b, gh, gw, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, gh * patch, gw * patch)


def pixel_mask(mask: torch.Tensor, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """(B, N) token mask -> (B, 1, gh * patch, gw * patch) float pixel mask."""
    b = mask.shape[0]
    m = mask.reshape(b, 1, *grid).float()
    return m.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)


def keep_indices(keep: torch.Tensor) -> torch.Tensor:
    """(B, N) bool with the same count K of True per row -> (B, K) int64 indices of the True entries, ascending."""
    if keep.ndim != 2 or keep.dtype != torch.bool:
        raise ValueError(f"keep must be a (B, N) bool tensor, got {keep.dtype} {tuple(keep.shape)}")
    counts = keep.sum(dim=1)
    if counts.numel() and not bool((counts == counts[0]).all()):
        raise ValueError(f"keep must select the same number of tokens in every image, got {counts.min().item()} to "
                         f"{counts.max().item()}: token subsets are batched, so the mask strategy must draw exact counts")
    k = int(counts[0]) if counts.numel() else 0
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept tokens first, in position order
    return order[:, :k]


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, ...) and idx (B, K) -> (B, K, ...): each image's tokens at its own indices."""
    shape = idx.shape + x.shape[2:]
    index = idx.reshape(*idx.shape, *([1] * (x.ndim - 2))).expand(shape)
    return torch.gather(x, 1, index)


def scatter_tokens(x: torch.Tensor, idx: torch.Tensor, n: int, fill: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Inverse of :func:`gather_tokens`: (B, K, D) at idx (B, K) into (B, n, D); other positions get ``fill``
    (a scalar or a (D,)/(1, 1, D) tensor, e.g. a learned mask token)."""
    b, _, d = x.shape
    if torch.is_tensor(fill):
        out = fill.to(x.dtype).reshape(1, 1, d).expand(b, n, d).clone()
    else:
        out = x.new_full((b, n, d), float(fill))
    return out.scatter(1, idx.unsqueeze(-1).expand(-1, -1, d), x)


def keep_after_prefix(z: torch.Tensor, keep: torch.Tensor | None, num_prefix: int,
                      n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, prefix + N, D) tokens -> the prefix tokens and the kept patch tokens, and the kept indices (None: all
    kept). A ViT-style backbone throws tokens this way after its position embeddings."""
    if keep is None:
        return z, None
    if keep.shape != (z.shape[0], n):
        raise ValueError(f"keep shape {tuple(keep.shape)} does not match {z.shape[0]} images of {n} tokens")
    idx = keep_indices(keep.to(z.device))
    return torch.cat([z[:, :num_prefix], gather_tokens(z[:, num_prefix:], idx)], dim=1), idx


def attention_on_grid(attention: torch.Tensor, idx: torch.Tensor | None, n: int, per_head: bool) -> torch.Tensor:
    """Per-head CLS attention (B, heads, K) over the kept tokens -> on the whole grid of ``n`` tokens (0 where
    thrown), averaged over heads unless ``per_head``."""
    if idx is not None:
        attention = scatter_tokens(attention.transpose(1, 2), idx, n).transpose(1, 2)
    return attention if per_head else attention.mean(dim=1)


class OutputCapture:
    """A forward hook that keeps its module's output while ``enabled``: how a backbone reads the last block's
    attention input (or qkv) from the same pass that makes its tokens, without forming an attention matrix."""

    def __init__(self) -> None:
        self.enabled = False
        self.output: torch.Tensor | None = None

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if self.enabled:
            self.output = output
