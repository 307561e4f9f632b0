"""The ViT backbone: a timm VisionTransformer driven through the token contract of :mod:`mst.models.contract`.

Two hooks into timm's forward pass:

1. ``mask``: replace tokens right after the linear projection (MST appendix K, SimMIM), *then* add the CLS token and
   position embeddings; ``keep``: gather each image's kept tokens after the position embeddings (MAE, AMT).
2. The last block's CLS->patch attention (MST eq. 4, AMT's maps), computed from that block's q/k (captured by a
   forward hook on its qkv projection) for the CLS query only: O(N) extra work, every block keeps fused attention.

The wrapped timm model is kept whole in ``self.vit`` so its ``state_dict`` is timm's (prefixed ``vit.``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mst.models.settings import ModelSettings

from dataclasses import dataclass

import timm
import torch
from timm.layers import build_sincos2d_pos_embed
from torch import nn

from mst.models.contract import BackboneOutput, check_divisible, mask_grid_tokens, new_mask_token
from mst.models.tokens import OutputCapture, attention_on_grid, keep_after_prefix

POS_EMBEDS = ("learned", "sincos")


@dataclass(frozen=True)
class ViTArch:
    """A timm ViT whose defaults we start from, with its width / depth / heads (overridable in ``model``)."""

    timm_name: str
    embed_dim: int
    depth: int
    num_heads: int
    drops_tokens = True  # the keep contract: a per-image subset of tokens can go through the blocks

    def timm_spec(self, model: "ModelSettings", in_chans: int) -> tuple[str, dict]:
        """The timm model name and kwargs that recreate the backbone (also written next to exported weights)."""
        kwargs = dict(img_size=int(model.img_size), patch_size=int(model.patch_size),
                      in_chans=int(in_chans), num_classes=0, dynamic_img_size=True)
        for key in ("depth", "embed_dim", "num_heads"):  # optional overrides of the arch's shape
            if getattr(model, key):
                kwargs[key] = int(getattr(model, key))
        width = kwargs.get("embed_dim", self.embed_dim)
        heads = kwargs.get("num_heads", self.num_heads)
        if width % heads:
            raise ValueError(f"model.embed_dim={width} is not divisible by model.num_heads={heads}")
        return self.timm_name, kwargs

    def build(self, model: "ModelSettings", in_chans: int, drop_path: float = 0.0, mask_token: bool = False,
              classifier: tuple[int, str] | None = None) -> nn.Module:
        return ViTBackbone(self, model, in_chans, drop_path, mask_token, classifier)


def cls_attention_from_qkv(attn: nn.Module, qkv: torch.Tensor, num_prefix: int, per_head: bool = False) -> torch.Tensor:
    """softmax(q_cls k^T / sqrt(d)) over all tokens, restricted to the patch tokens; mean over heads unless
    ``per_head``. ``attn`` is the timm Attention module that produced ``qkv`` (for heads, scale, q/k norms)."""
    b, n, _ = qkv.shape
    heads = attn.num_heads
    qkv = qkv.reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)  # 3, B, H, N, hd
    q, k = attn.q_norm(qkv[0][:, :, :1]), attn.k_norm(qkv[1])
    logits = (q.float() @ k.float().transpose(-2, -1)).squeeze(2) * attn.scale  # B, H, N
    probs = logits.softmax(dim=-1)[:, :, num_prefix:]
    return probs if per_head else probs.mean(dim=1)


class ViTBackbone(nn.Module):
    """timm ViT + optional learnable [MASK] embedding + CLS-attention capture + kept-token gathering."""

    def __init__(self, arch: ViTArch, model: "ModelSettings", in_chans: int, drop_path: float = 0.0,
                 mask_token: bool = False, classifier: tuple[int, str] | None = None) -> None:
        """``classifier`` = (num_classes, global_pool "token" | "avg"): timm's own head on top (fine-tuning);
        ``self.vit(x)`` then returns logits, and "avg" pooling uses timm's fc_norm in place of the final norm."""
        super().__init__()
        name, kwargs = arch.timm_spec(model, in_chans)
        if classifier is not None:
            kwargs.update(num_classes=int(classifier[0]), global_pool=classifier[1])
        self.vit = timm.create_model(name, pretrained=False, drop_path_rate=drop_path, **kwargs)
        self.embed_dim = self.vit.embed_dim
        self.patch_size = int(model.patch_size)
        self.num_prefix = self.vit.num_prefix_tokens
        self.mask_token = new_mask_token(self.embed_dim) if mask_token else None
        if model.pos_embed == "sincos":
            self._fix_sincos_pos_embed()
        self._capture = OutputCapture()
        self.vit.blocks[-1].attn.qkv.register_forward_hook(self._capture)
        if model.grad_checkpointing:
            self.vit.set_grad_checkpointing(True)

    def _fix_sincos_pos_embed(self) -> None:
        """MAE's encoder: fixed 2-d sin-cos position embeddings (not trained), zero for the CLS token."""
        grid = self.vit.patch_embed.grid_size
        table = build_sincos2d_pos_embed(list(grid), self.embed_dim)  # (h * w, D)
        prefix = 0 if getattr(self.vit, "no_embed_class", False) else self.num_prefix  # DINOv2-reg: patches only
        with torch.no_grad():
            self.vit.pos_embed.zero_()
            self.vit.pos_embed[0, prefix:] = table
        self.vit.pos_embed.requires_grad_(False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Linear projection of the patches: (B, C, H, W) -> (B, h, w, D)."""
        check_divisible(x, self.patch_size, "patch size")
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
        """See :mod:`mst.models.contract`. ``return_attention`` adds the last block's CLS->patch attention from this
        same pass, on the whole patch grid (0 at tokens not kept); ``per_head`` keeps (B, heads, N)."""
        tokens = mask_grid_tokens(self.embed(x), mask, self.mask_token, replacement, generator)
        b, h, w, _ = tokens.shape
        self._capture.enabled = return_attention
        try:
            z, idx = keep_after_prefix(self.vit._pos_embed(tokens), keep, self.num_prefix, h * w)
            z = self.vit.patch_drop(z)
            z = self.vit.norm_pre(z)
            if self.vit.grad_checkpointing and self.training and torch.is_grad_enabled():
                z = timm.models.checkpoint_seq(self.vit.blocks, z)
            else:
                z = self.vit.blocks(z)
            z = self.vit.norm(z)
            attention = None
            if return_attention:
                attention = attention_on_grid(cls_attention_from_qkv(
                    self.vit.blocks[-1].attn, self._capture.output, self.num_prefix, per_head=True), idx, h * w, per_head)
        finally:
            self._capture.enabled = False
            self._capture.output = None
        return BackboneOutput(cls=z[:, 0], patches=z[:, self.num_prefix:], grid=(h, w), attention=attention,
                              keep_index=idx)

    def timm_state_dict(self) -> dict[str, torch.Tensor]:
        """The wrapped ViT's weights in timm's own key layout (no ``vit.`` prefix, no [MASK] token)."""
        return {k: v.detach().clone() for k, v in self.vit.state_dict().items()}
