"""The ViT backbone: a timm VisionTransformer with MST's two hooks into its forward pass.

1. Masking after the linear projection (paper appendix K): patch-embed, replace masked tokens, *then* add the CLS
   token and position embeddings, then run the blocks. So a [MASK] token still knows where it sits.
2. The last block's CLS->patch attention (eq. 4), computed from that block's q/k (captured by a forward hook on
   its qkv projection) for the CLS query only: O(N) extra work, and every block keeps fused SDPA attention.

The wrapped timm model is kept whole in ``self.vit`` so its ``state_dict`` is timm's (prefixed ``vit.``).
"""
from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from torch import nn

from mst.masking.replace import replace_tokens

# name -> (timm model whose defaults we start from, its width/depth/heads)
ARCHS: dict[str, tuple[str, dict]] = {
    "vit_tiny": ("vit_tiny_patch16_224", dict(embed_dim=192, depth=12, num_heads=3)),
    "vit_small": ("vit_small_patch16_224", dict(embed_dim=384, depth=12, num_heads=6)),
    "vit_base": ("vit_base_patch16_224", dict(embed_dim=768, depth=12, num_heads=12)),
}


def timm_spec(model_cfg: dict, in_chans: int) -> tuple[str, dict]:
    """The timm model name and the kwargs that recreate our backbone (also written next to exported weights)."""
    arch = model_cfg["arch"]
    if arch.startswith("swin"):
        from mst.models.swin import swin_spec

        return swin_spec(model_cfg, in_chans)
    if arch not in ARCHS:
        raise ValueError(f"model.arch={arch!r} is not supported; choose one of {', '.join(ARCHS)}")
    name, dims = ARCHS[arch]
    kwargs = dict(
        img_size=int(model_cfg["img_size"]),
        patch_size=int(model_cfg["patch_size"]),
        in_chans=int(in_chans),
        num_classes=0,
        dynamic_img_size=True,
    )
    for key in ("depth", "embed_dim", "num_heads"):  # optional overrides of the arch's shape
        if model_cfg.get(key):
            kwargs[key] = int(model_cfg[key])
    width = kwargs.get("embed_dim", dims["embed_dim"])
    heads = kwargs.get("num_heads", dims["num_heads"])
    if width % heads:
        raise ValueError(f"model.embed_dim={width} is not divisible by model.num_heads={heads}")
    return name, kwargs


def create_timm_vit(model_cfg: dict, in_chans: int, drop_path: float = 0.0) -> nn.Module:
    name, kwargs = timm_spec(model_cfg, in_chans)
    return timm.create_model(name, pretrained=False, drop_path_rate=drop_path, **kwargs)


@dataclass
class BackboneOutput:
    cls: torch.Tensor  # (B, D) CLS token after the final norm
    patches: torch.Tensor  # (B, N, D) patch tokens after the final norm
    grid: tuple[int, int]  # (h, w) token grid
    attention: torch.Tensor | None = None  # (B, N) last-block CLS->patch attention, mean over heads
    mask_grid: tuple[int, int] | None = None  # grid the mask and attention live on (the patch grid); None: grid

    def __post_init__(self) -> None:
        if self.mask_grid is None:
            self.mask_grid = self.grid


class _QKVCapture:
    """Forward hook storing the last block's qkv projection output (no attention matrix is formed)."""

    def __init__(self) -> None:
        self.enabled = False
        self.qkv: torch.Tensor | None = None

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if self.enabled:
            self.qkv = output


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


def new_mask_token(dim: int) -> nn.Parameter:
    """The learnable [MASK] embedding (student only), N(0, 0.02) like timm's other tokens."""
    return nn.Parameter(nn.init.normal_(torch.zeros(1, 1, dim), std=0.02))


def mask_grid_tokens(
    tokens: torch.Tensor,
    mask: torch.Tensor | None,
    mask_token: torch.Tensor | None,
    replacement: str,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Patch-embedded tokens (B, h, w, D) with the masked ones replaced (eq. 6); unchanged when ``mask`` is None."""
    if mask is None:
        return tokens
    if mask_token is None:
        raise RuntimeError("this backbone has no [MASK] embedding (the teacher is never masked)")
    b, h, w, d = tokens.shape
    flat = replace_tokens(tokens.reshape(b, h * w, d), mask, mask_token, replacement, generator)
    return flat.reshape(b, h, w, d)


def check_divisible(x: torch.Tensor, stride: int, what: str) -> None:
    if x.shape[-1] % stride or x.shape[-2] % stride:
        raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by the {what} {stride}")


class ViTBackbone(nn.Module):
    """timm ViT + optional learnable [MASK] embedding (student) + CLS-attention capture (teacher)."""

    def __init__(self, model_cfg: dict, in_chans: int, drop_path: float = 0.0, mask_token: bool = False) -> None:
        super().__init__()
        self.vit = create_timm_vit(model_cfg, in_chans, drop_path)
        self.embed_dim = self.vit.embed_dim
        self.patch_size = int(model_cfg["patch_size"])
        self.num_prefix = self.vit.num_prefix_tokens
        self.mask_token = new_mask_token(self.embed_dim) if mask_token else None
        self._capture = _QKVCapture()
        self.vit.blocks[-1].attn.qkv.register_forward_hook(self._capture)
        if model_cfg.get("grad_checkpointing"):
            self.vit.set_grad_checkpointing(True)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Linear projection of the patches: (B, C, H, W) -> (B, h, w, D)."""
        check_divisible(x, self.patch_size, "patch size")
        return self.vit.patch_embed(x)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        replacement: str = "learned",
        return_attention: bool = False,
        generator: torch.Generator | None = None,
        per_head: bool = False,
    ) -> BackboneOutput:
        """``mask`` (B, N) bool marks the tokens to replace (student only); ``return_attention`` adds the
        last block's CLS->patch attention from this same pass (teacher); ``per_head`` keeps (B, heads, N)."""
        tokens = mask_grid_tokens(self.embed(x), mask, self.mask_token, replacement, generator)
        b, h, w, _ = tokens.shape
        self._capture.enabled = return_attention
        try:
            z = self.vit._pos_embed(tokens)
            z = self.vit.patch_drop(z)
            z = self.vit.norm_pre(z)
            if self.vit.grad_checkpointing and self.training and torch.is_grad_enabled():
                z = timm.models.checkpoint_seq(self.vit.blocks, z)
            else:
                z = self.vit.blocks(z)
            z = self.vit.norm(z)
            attention = None
            if return_attention:
                attention = cls_attention_from_qkv(
                    self.vit.blocks[-1].attn, self._capture.qkv, self.num_prefix, per_head
                )
        finally:
            self._capture.enabled = False
            self._capture.qkv = None
        return BackboneOutput(cls=z[:, 0], patches=z[:, self.num_prefix:], grid=(h, w), attention=attention)

    def timm_state_dict(self) -> dict[str, torch.Tensor]:
        """The wrapped ViT's weights in timm's own key layout (no ``vit.`` prefix, no [MASK] token)."""
        return {k: v.detach().clone() for k, v in self.vit.state_dict().items()}


def create_backbone(model_cfg: dict, in_chans: int, drop_path: float = 0.0, mask_token: bool = False) -> nn.Module:
    """ViTBackbone or SwinBackbone for ``model.arch``; both return :class:`BackboneOutput`."""
    if model_cfg["arch"].startswith("swin"):
        from mst.models.swin import SwinBackbone

        return SwinBackbone(model_cfg, in_chans, drop_path, mask_token)
    return ViTBackbone(model_cfg, in_chans, drop_path, mask_token)
