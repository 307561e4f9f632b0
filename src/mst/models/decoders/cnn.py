"""MST's global image decoder: a small CNN that restores the whole view from the student's patch tokens.

Paper section 3.3: conv-BN-ReLU blocks alternate with 2x upsampling only (to limit checkerboard artefacts), so a
patch-16 ViT needs log2(16) = 4 upsamplings from the H/16 x W/16 token grid to full resolution.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from mst.models.decoders.base import DECODERS


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class GlobalImageDecoder(nn.Module):
    """Tokens (B, N, D) on an (h, w) grid -> image (B, C, h * patch, w * patch).

    Each of the ceil(log2(patch_size)) stages is: conv-BN-ReLU, then 2x nearest upsampling (the last one by what
    remains when the patch is no power of two: 1.75 for 14 px). A final 3x3 conv maps to
    ``out_chans`` (no activation: the target is a normalised image with negative values).
    """

    def __init__(self, embed_dim: int, patch_size: int, out_chans: int, channels: list[int] | tuple[int, ...]) -> None:
        super().__init__()
        if patch_size < 2:
            raise ValueError(f"the decoder needs a patch size >= 2, got {patch_size}")
        n_up = math.ceil(math.log2(patch_size))
        if len(channels) < n_up:
            raise ValueError(
                f"decoder.channels needs at least {n_up} widths for patch size {patch_size}, got {list(channels)}"
            )
        self.patch_size = patch_size
        stages: list[nn.Module] = []
        cin = embed_dim
        for i, cout in enumerate(channels[:n_up]):
            # 2x each; a patch that is no power of two (DINOv2's 14) ends on the remaining factor (14 / 8 = 1.75)
            factor = 2.0 if i < n_up - 1 else patch_size / 2 ** (n_up - 1)
            stages += [_conv_bn_relu(cin, cout), nn.Upsample(scale_factor=factor, mode="nearest")]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.out = nn.Conv2d(cin, out_chans, kernel_size=3, padding=1)

    @property
    def num_upsamplings(self) -> int:
        return sum(isinstance(m, nn.Upsample) for m in self.stages)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, n, d = tokens.shape
        h, w = grid
        if n != h * w:
            raise ValueError(f"decoder got {n} tokens for a {h}x{w} grid")
        x = tokens.transpose(1, 2).reshape(b, d, h, w)
        if self.stages and next(self.parameters()).is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.out(self.stages(x))


def cnn_decoder(section: dict, embed_dim: int, patch_size: int, in_chans: int, grid) -> GlobalImageDecoder:
    return GlobalImageDecoder(embed_dim, patch_size, in_chans, list(section["decoder_channels"]))


cnn_decoder.takes = "all_tokens"
DECODERS.register("cnn", cnn_decoder)
