"""SimMIM's decoder: one linear map per token to its patch's pixels (a 1x1 convolution + PixelShuffle, as the
reference). Tokens (B, N, D) on an (h, w) grid -> image (B, C, h * patch, w * patch)."""
from __future__ import annotations

import torch
from torch import nn

from mst.models.decoders.base import DECODERS


class LinearPixelDecoder(nn.Module):
    def __init__(self, embed_dim: int, patch_size: int, out_chans: int) -> None:
        super().__init__()
        self.patch_size = int(patch_size)
        self.proj = nn.Conv2d(embed_dim, self.patch_size ** 2 * out_chans, kernel_size=1)
        self.shuffle = nn.PixelShuffle(self.patch_size)

    def patch_pixels(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, K, D) tokens anywhere on the grid -> (B, K, patch^2 * C) pixels in :func:`~mst.models.tokens.patchify`
        order: the same linear map as :meth:`forward`, for token subsets (AMT throws tokens out of SimMIM's grid)."""
        p = self.patch_size
        y = tokens @ self.proj.weight.flatten(1).t() + self.proj.bias  # channel index = c * p * p + i * p + j
        b, k, _ = y.shape
        return y.reshape(b, k, -1, p, p).permute(0, 1, 3, 4, 2).reshape(b, k, -1)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, n, d = tokens.shape
        h, w = grid
        if n != h * w:
            raise ValueError(f"decoder got {n} tokens for a {h}x{w} grid")
        return self.shuffle(self.proj(tokens.transpose(1, 2).reshape(b, d, h, w)))


def linear_decoder(section: dict, embed_dim: int, patch_size: int, in_chans: int, grid) -> LinearPixelDecoder:
    return LinearPixelDecoder(embed_dim, patch_size, in_chans)


linear_decoder.takes = "all_tokens"
DECODERS.register("linear", linear_decoder)
