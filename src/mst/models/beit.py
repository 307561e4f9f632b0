"""A BEiT-style ViT (timm's ``Beit``) as a backbone: SimMIM's reference encoder (microsoft/SimMIM, whose ViT is
BEiT's): layer-scale 0.1, no absolute position embedding, one relative position bias shared by all blocks, BEiT's
pretraining init (truncated normals cut at +-1 std, depth-rescaled output projections) and a [MASK] embedding
initialised the same way.

The token contract is the ViT wrapper's (:mod:`mst.models.backbone`). What the relative position bias changes:

* the bias depends only on the offset between two tokens, so the bias of any subset of grid positions is exact:
  a smaller grid (local crops) uses the positions of a top-left window of the built grid, and the ``keep``
  contract (MAE / AMT throwing tokens) gathers each image's kept rows and columns, (B, heads, K+1, K+1) — thrown
  tokens leave the sequence exactly as if attention to them were masked out;
* timm's attention folds the q/v biases into one ``F.linear`` (its ``qkv`` module is never called), so the last
  block's CLS attention is recomputed from that block's input (hooked at ``norm1``): q for the CLS token only and
  k for every token, plus the bias row of the CLS query.

The timm model is kept whole in ``self.vit``, so checkpoints and export carry timm's own keys (``vit.``).
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
from torch.utils.checkpoint import checkpoint

from mst.models.backbone import ViTArch
from mst.models.contract import BackboneOutput, check_divisible, mask_grid_tokens
from mst.models.tokens import OutputCapture, attention_on_grid, keep_after_prefix

INIT_STD = 0.02


def reference_trunc_normal_(t: torch.Tensor) -> torch.Tensor:
    """BEiT's / SimMIM's ``_trunc_normal_``: N(0, 0.02) cut at +-0.02 (one std, not timm's +-2)."""
    return nn.init.trunc_normal_(t, std=INIT_STD, a=-INIT_STD, b=INIT_STD)


@dataclass(frozen=True)
class BeitArch(ViTArch):
    """A timm Beit with SimMIM's ViT settings. A ViTArch for what reads one (shape overrides; fine-tuning builds
    timm's classifier with the same ``num_classes`` / ``global_pool`` kwargs)."""

    init_values: float = 0.1  # layer-scale init

    def timm_spec(self, model: "ModelSettings", in_chans: int) -> tuple[str, dict]:
        if model.pos_embed != "learned":
            raise ValueError(f"model.pos_embed={model.pos_embed}: {model.arch} has no "
                             "absolute position embedding (a shared relative position bias); leave it learned")
        name, kwargs = super().timm_spec(model, in_chans)
        del kwargs["dynamic_img_size"]  # Beit has none: other grids are handled by the wrapper (see the module doc)
        kwargs.update(global_pool="token", init_values=self.init_values, use_abs_pos_emb=False,
                      use_rel_pos_bias=False, use_shared_rel_pos_bias=True)
        return name, kwargs

    def build(self, model: "ModelSettings", in_chans: int, drop_path: float = 0.0, mask_token: bool = False,
              classifier: tuple[int, str] | None = None) -> nn.Module:
        return BeitBackbone(self, model, in_chans, drop_path, mask_token, classifier)


def cls_attention(attn: nn.Module, x: torch.Tensor, bias: torch.Tensor, num_prefix: int = 1,
                  per_head: bool = False) -> torch.Tensor:
    """softmax(q_cls k^T * scale + bias_cls) of a timm Beit ``Attention`` on its input ``x`` (B, L, D), restricted
    to the patch tokens: (B, [heads,] L - num_prefix). ``bias`` (1 or B, heads, L, L) is the bias the pass used."""
    b, n, _ = x.shape
    heads = attn.num_heads
    w = attn.qkv.weight
    inner = w.shape[0] // 3
    q_bias, k_bias = (attn.q_bias, attn.k_bias) if attn.q_bias is not None else (None, None)
    q = F.linear(x[:, :1], w[:inner], q_bias).reshape(b, 1, heads, -1).transpose(1, 2)  # B, H, 1, hd
    k = F.linear(x, w[inner:2 * inner], k_bias).reshape(b, n, heads, -1).transpose(1, 2)  # B, H, L, hd
    logits = (q.float() @ k.float().transpose(-2, -1)).squeeze(2) * attn.scale + bias[:, :, 0].float()
    probs = logits.softmax(dim=-1)[:, :, num_prefix:]
    return probs if per_head else probs.mean(dim=1)


class BeitBackbone(nn.Module):
    """timm Beit + [MASK] after the patch projection + kept-token gathering + last-block CLS attention."""

    def __init__(self, arch: BeitArch, model: "ModelSettings", in_chans: int, drop_path: float = 0.0,
                 mask_token: bool = False, classifier: tuple[int, str] | None = None) -> None:
        super().__init__()
        name, kwargs = arch.timm_spec(model, in_chans)
        if classifier is not None:
            kwargs.update(num_classes=int(classifier[0]), global_pool=classifier[1])
        self.vit = timm.create_model(name, pretrained=False, drop_path_rate=drop_path, **kwargs)
        self._reference_init()
        self.embed_dim = self.vit.embed_dim
        self.patch_size = int(model.patch_size)
        self.num_prefix = self.vit.num_prefix_tokens
        self.mask_token = None
        if mask_token:
            self.mask_token = nn.Parameter(reference_trunc_normal_(torch.zeros(1, 1, self.embed_dim)))
        self._capture = OutputCapture()
        self.vit.blocks[-1].norm1.register_forward_hook(self._capture)
        if model.grad_checkpointing:
            self.vit.set_grad_checkpointing(True)

    @torch.no_grad()
    def _reference_init(self) -> None:
        """BEiT's pretraining init, as SimMIM's ViT: every linear / conv weight and the CLS token from
        :func:`reference_trunc_normal_` (timm cuts at +-2 and leaves the patch conv at PyTorch's default), zero
        biases, then the depth rescaling of each block's output projections. timm's classifier head is left
        as timm sets it."""
        for name, m in self.vit.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)) and not name.startswith("head"):
                reference_trunc_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        reference_trunc_normal_(self.vit.cls_token)
        self.vit.fix_init_weight()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Linear projection of the patches: (B, C, H, W) -> (B, h, w, D), any size the patch divides."""
        check_divisible(x, self.patch_size, "patch size")
        pe = self.vit.patch_embed
        return pe.norm(pe.proj(x).permute(0, 2, 3, 1))

    def relative_bias(self, grid: tuple[int, int], idx: torch.Tensor | None = None) -> torch.Tensor:
        """The shared relative position bias (1 or B, heads, L, L) of the CLS token and the (h, w) grid's patches
        (or each image's kept ones, ``idx`` (B, K)), read at a top-left window of the grid it was built for."""
        rpb = self.vit.rel_pos_bias
        (gh, gw), (h, w) = rpb.window_size, grid
        if h > gh or w > gw:
            raise ValueError(f"a {h}x{w} token grid is larger than the {gh}x{gw} grid the relative position bias "
                             f"covers (model.img_size / model.patch_size): use images of at most that size")
        index = rpb.relative_position_index
        pos = (torch.arange(h, device=index.device)[:, None] * gw + torch.arange(w, device=index.device)).flatten()
        pos = pos[None] if idx is None else pos[idx.to(index.device)]
        pos = F.pad(pos + 1, (1, 0))  # the CLS token is row / column 0
        rel = index[pos[:, :, None], pos[:, None, :]]  # (1 or B, L, L)
        return rpb.relative_position_bias_table[rel].permute(0, 3, 1, 2).contiguous()

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
        """See :mod:`mst.models.contract`; as the ViT wrapper's (attention 0 at tokens not kept)."""
        tokens = mask_grid_tokens(self.embed(x), mask, self.mask_token, replacement, generator)
        b, h, w, d = tokens.shape
        z = torch.cat([self.vit.cls_token.expand(b, -1, -1), tokens.reshape(b, h * w, d)], dim=1)
        z, idx = keep_after_prefix(z, keep, self.num_prefix, h * w)
        bias = self.relative_bias((h, w), idx)
        z = self.vit.pos_drop(z)
        self._capture.enabled = return_attention
        try:
            ckpt = self.vit.grad_checkpointing and self.training and torch.is_grad_enabled()
            for blk in self.vit.blocks:
                z = checkpoint(blk, z, bias, use_reentrant=False) if ckpt else blk(z, shared_rel_pos_bias=bias)
            z = self.vit.norm(z)
            attention = None
            if return_attention:
                attention = attention_on_grid(cls_attention(self.vit.blocks[-1].attn, self._capture.output, bias,
                                                            self.num_prefix, per_head=True), idx, h * w, per_head)
        finally:
            self._capture.enabled = False
            self._capture.output = None
        return BackboneOutput(cls=z[:, 0], patches=z[:, self.num_prefix:], grid=(h, w), attention=attention,
                              keep_index=idx)

    def timm_state_dict(self) -> dict[str, torch.Tensor]:
        """The wrapped Beit's weights in timm's key layout (no ``vit.`` prefix, no [MASK] token)."""
        return {k: v.detach().clone() for k, v in self.vit.state_dict().items()}
