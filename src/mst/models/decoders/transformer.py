"""MAE's decoder: a small transformer that sees the encoded visible tokens and a shared learned mask token at every
position to reconstruct, with fixed 2-d sin-cos positions, and predicts each of those tokens' pixels.

With AMT, thrown tokens are not in ``decode_index``: they are neither decoded nor attended to.
"""
from __future__ import annotations

from functools import partial

import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from mst.models.decoders.base import DECODERS
from mst.models.tokens import gather_tokens, scatter_tokens


class MAEDecoder(nn.Module):
    def __init__(self, embed_dim: int, patch_size: int, out_chans: int, grid: tuple[int, int], dim: int = 512,
                 depth: int = 8, num_heads: int = 16, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"mae.decoder_dim={dim} is not divisible by mae.decoder_heads={num_heads}")
        self.grid = tuple(grid)
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        pos = torch.zeros(1, 1 + grid[0] * grid[1], dim)
        pos[0, 1:] = build_sincos2d_pos_embed(list(grid), dim)  # CLS: position 0 vector (zeros), as MAE
        self.register_buffer("pos_embed", pos, persistent=False)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm)
                                      for _ in range(depth)])
        self.norm = norm(dim)
        self.pred = nn.Linear(dim, patch_size ** 2 * out_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(xavier_init)

    def forward(self, cls: torch.Tensor, visible: torch.Tensor, keep_index: torch.Tensor,
                decode_index: torch.Tensor) -> torch.Tensor:
        """cls (B, D), visible (B, K, D) at positions keep_index (B, K) -> predictions (B, M, patch^2 * C) for the
        positions decode_index (B, M) (visible and masked tokens, in that index order)."""
        return self.pred(self.features(cls, visible, keep_index, decode_index))

    def features(self, cls: torch.Tensor, visible: torch.Tensor, keep_index: torch.Tensor,
                 decode_index: torch.Tensor) -> torch.Tensor:
        """The last block's normalised tokens (B, M, dim) at decode_index, before the pixel head (``pred``), which a
        method predicting other targets (a frozen teacher's features) reads with a head of its own."""
        n = self.pos_embed.shape[1] - 1
        x = scatter_tokens(self.embed(visible), keep_index, n, fill=self.mask_token)  # mask token elsewhere
        x = gather_tokens(x + self.pos_embed[:, 1:], decode_index)
        c = self.embed(cls).unsqueeze(1) + self.pos_embed[:, :1]
        return self.norm(self.blocks(torch.cat([c, x], dim=1)))[:, 1:]


def xavier_init(m: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linear layers, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def transformer_decoder(section: dict, embed_dim: int, patch_size: int, in_chans: int, grid) -> MAEDecoder:
    return MAEDecoder(embed_dim, patch_size, in_chans, grid, int(section["decoder_dim"]),
                      int(section["decoder_depth"]), int(section["decoder_heads"]))


transformer_decoder.takes = "visible_tokens"
DECODERS.register("transformer", transformer_decoder)
