"""Swin-T as an MST backbone (paper Table 1, Swin-T row).

[MASK] goes in after the patch embedding exactly as for a ViT (on the 4-px patch grid). Swin has no CLS token, so
two things are defined here:

* the image feature fed to the DINO head is the mean of the final-stage tokens (timm's ``avg`` pooling);
* token importance (what the ViT's CLS attention gives): a *mean-pooled query* over the last block of the last
  stage attends to that block's keys, softmax(mean_i(q_i) K^T / sqrt(d)), averaged over heads — the attention an
  image-level query pays to each final-stage token. Computed from that block's qkv weights applied to its
  (spatial, unshifted) input, so window partitioning and shifting do not matter. The relative position bias is
  not used: a pooled query has no position. The (h, w) map is upsampled bilinearly to the patch grid, which is
  the grid the mask lives on.

The decoder restores the view from the final-stage tokens, so its upsampling factor is the total stride (32 for
Swin-T: 5 upsamplings); ``patch_size`` is that stride, ``embed_patch`` the 4-px embedding patch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mst.models.settings import ModelSettings

from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from torch import nn

from mst.models.contract import BackboneOutput, check_divisible, mask_grid_tokens, new_mask_token
from mst.models.tokens import OutputCapture

@dataclass(frozen=True)
class SwinArch:
    """A timm Swin Transformer (4-px patch embedding; depth and widths are per stage, so not overridable)."""

    timm_name: str
    drops_tokens = False  # windows need the whole grid

    def timm_spec(self, model: "ModelSettings", in_chans: int) -> tuple[str, dict]:
        if int(model.patch_size) != 4:
            raise ValueError(f"model.patch_size={model.patch_size}: Swin embeds 4-px patches (set 4)")
        for key in ("depth", "embed_dim", "num_heads"):
            if getattr(model, key):
                raise ValueError(f"model.{key} cannot be overridden for Swin (it is per stage); leave it null")
        if model.pos_embed != "learned":
            raise ValueError("model.pos_embed=sincos is for ViTs; Swin has relative position biases")
        kwargs = dict(img_size=int(model.img_size), in_chans=int(in_chans), num_classes=0,
                      dynamic_img_size=True)
        return self.timm_name, kwargs

    def build(self, model: "ModelSettings", in_chans: int, drop_path: float = 0.0, mask_token: bool = False) -> nn.Module:
        return SwinBackbone(self, model, in_chans, drop_path, mask_token)


def pooled_query_attention(attn: nn.Module, x: torch.Tensor, per_head: bool = False) -> torch.Tensor:
    """x (B, H, W, C) -> (B, [heads,] H*W): softmax over tokens of the mean query against every key."""
    b, h, w, c = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x.reshape(b, h * w, c)).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k = qkv[0].float(), qkv[1].float()  # B, heads, N, hd
    q_mean = q.mean(dim=2, keepdim=True)
    probs = ((q_mean @ k.transpose(-2, -1)).squeeze(2) * attn.scale).softmax(dim=-1)  # B, heads, N
    return probs if per_head else probs.mean(dim=1)


class SwinBackbone(nn.Module):
    """timm Swin Transformer + [MASK] at the patch embedding + pooled-query token importance."""

    def __init__(self, arch: SwinArch, model: "ModelSettings", in_chans: int, drop_path: float = 0.0,
                 mask_token: bool = False) -> None:
        super().__init__()
        name, kwargs = arch.timm_spec(model, in_chans)
        self.vit = timm.create_model(name, pretrained=False, drop_path_rate=drop_path, **kwargs)  # the timm model
        self.embed_dim = self.vit.num_features
        self.embed_patch = 4
        self.patch_size = self.embed_patch * 2 ** (len(self.vit.layers) - 1)  # total stride of the final stage
        self.num_prefix = 0
        dim0 = self.vit.patch_embed.proj.out_channels
        self.mask_token = new_mask_token(dim0) if mask_token else None
        self._capture = OutputCapture()  # norm1 output: the attention input, (B, H, W, C), before windowing
        self._last_block = self.vit.layers[-1].blocks[-1]
        self._last_block.norm1.register_forward_hook(self._capture)
        if model.grad_checkpointing:
            self.vit.set_grad_checkpointing(True)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible(x, self.patch_size, "Swin's total stride")
        return self.vit.patch_embed(x)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        replacement: str = "learned",
        return_attention: bool = False,
        generator: torch.Generator | None = None,
        per_head: bool = False,
    ) -> BackboneOutput:
        if keep is not None:
            raise ValueError("Swin cannot drop tokens (keep): its windows need the whole grid. Use a ViT for MAE / "
                             "AMT throwing, or a method that only replaces tokens with [MASK] (MST, SimMIM)")
        tokens = mask_grid_tokens(self.embed(x), mask, self.mask_token, replacement, generator)  # B, H/4, W/4, C0
        b, mh, mw, _ = tokens.shape
        self._capture.enabled = return_attention
        try:
            z = self.vit.norm(self.vit.layers(tokens))  # B, h, w, D
            attention = None
            if return_attention:
                a = pooled_query_attention(self._last_block.attn, self._capture.output, per_head)
                h, w = z.shape[1:3]
                a = a.reshape(b, -1, h, w)
                a = F.interpolate(a, size=(mh, mw), mode="bilinear", align_corners=False).flatten(2)
                a = a / a.sum(dim=-1, keepdim=True)  # still a distribution over the patch grid
                attention = a if per_head else a[:, 0]
        finally:
            self._capture.enabled = False
            self._capture.output = None
        h, w = z.shape[1:3]
        patches = z.reshape(b, h * w, -1)
        return BackboneOutput(cls=patches.mean(dim=1), patches=patches, grid=(h, w), attention=attention,
                              mask_grid=(mh, mw))

    def timm_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.vit.state_dict().items()}
