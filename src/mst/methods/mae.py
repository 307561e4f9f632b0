"""MAE (He et al., CVPR 2022): hide most patches, encode only the visible ones, reconstruct the hidden pixels.

One step:

    view -> mask (a share of patches, per image) -> encoder on the visible tokens
         -> decoder (visible tokens + a mask token at every hidden position) -> MSE on the hidden patches

Faithful to the reference code: exactly ``int(N * (1 - mask_ratio))`` visible tokens per image, fixed 2-d sin-cos
positions in the encoder (``model.pos_embed: sincos`` in the presets) and the decoder, xavier-uniform linear
layers, per-patch normalised targets (``mim.norm_pix_loss``), the loss averaged over the hidden patches only.
A strategy that throws tokens (AMT) is honoured: thrown tokens are neither encoded, decoded nor in the loss.
"""
from __future__ import annotations

import torch
from torch import nn

from mst.data.batch import Batch
from mst.losses import patch_mse
from mst.masking import build_mask_strategy
from mst.figures import Panel
from mst.methods.base import METHODS, Method, StepContext, StepOutput
from mst.methods.mim_common import draw_mask, reconstruction_panels, validate_mim
from mst.models.backbones import create_backbone
from mst.models.decoders import build_decoder, decoder_kind
from mst.models.decoders.transformer import xavier_init
from mst.models.tokens import gather_tokens, keep_indices, patchify
from mst.registry import ConfigError


def mae_init(vit: nn.Module) -> None:
    """MAE's encoder initialisation on a timm ViT: xavier-uniform linear layers and patch projection (as a linear
    map), N(0, 0.02) CLS token."""
    vit.apply(xavier_init)
    w = vit.patch_embed.proj.weight.data
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    if getattr(vit, "cls_token", None) is not None:
        nn.init.normal_(vit.cls_token, std=0.02)


@METHODS.register("mae")
class MAE(Method):
    sections = ("mim", "mae")
    views = "single"
    backbones = {"encoder": "encoder"}
    default_backbone = "encoder"

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        model, channels = cfg["model"], int(cfg["data"]["channels"])
        self.patch = int(model["patch_size"])
        self.encoder = create_backbone(model, channels, drop_path=float(model["drop_path"]))
        mae_init(self.encoder.vit)
        grid = (int(model["img_size"]) // self.patch,) * 2
        self.decoder = build_decoder(cfg["mae"]["decoder"], cfg["mae"], self.encoder.embed_dim, self.patch, channels,
                                     grid, "mae.decoder")
        self.masking = build_mask_strategy(cfg["mim"]["mask"], cfg["mim"], self.patch, "mim.mask")

    @classmethod
    def validate(cls, cfg: dict) -> None:
        validate_mim(cfg, drops_tokens=True)
        if cfg["mim"]["mask"] == "none" or float(cfg["mim"]["mask_ratio"]) == 0.0:
            raise ConfigError(f"mim.mask={cfg['mim']['mask']!r} with mim.mask_ratio={cfg['mim']['mask_ratio']} hides "
                              "nothing, so MAE has nothing to reconstruct")
        name = cfg["mae"]["decoder"]
        if decoder_kind(name, "mae.decoder") != "visible_tokens":
            raise ConfigError(f"mae.decoder={name!r} decodes a full token grid; MAE's encoder output holds only the "
                              "visible tokens: choose a decoder of visible tokens (transformer)")

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        x = batch.views[0]

        # 1. Mask: per image, which tokens the encoder sees (keep) and which it must reconstruct (mask).
        m = draw_mask(self.masking, x, self.patch, ctx.generator)
        keep = m.keep if m.keep is not None else ~m.mask

        # 2. Encoder on the visible tokens only (position embeddings added before they are gathered).
        z = self.encoder(x, keep=keep)

        # 3. Decoder: the visible tokens and a mask token at every hidden position (thrown tokens: neither).
        decode_index = keep_indices(keep | m.mask)
        pred = self.decoder(z.cls, z.patches, z.keep_index, decode_index)

        # 4. Loss: mean squared error per patch, averaged over the hidden patches.
        target = gather_tokens(patchify(x, self.patch), decode_index)
        hidden = gather_tokens(m.mask, decode_index)
        loss = patch_mse(pred, target, hidden, bool(self.cfg["mim"]["norm_pix_loss"]))
        metrics = {"loss": loss.item(), "mask_ratio": m.mask.float().mean().item(),
                   "visible_ratio": keep.float().mean().item()}
        return StepOutput(loss=loss, metrics=metrics, mask=m.mask)

    @torch.no_grad()
    def panels(self, images: torch.Tensor, generator: torch.Generator | None = None) -> list[list[Panel]]:
        m = draw_mask(self.masking, images, self.patch, generator)
        keep = m.keep if m.keep is not None else ~m.mask
        z = self.encoder(images, keep=keep)
        everything = keep_indices(torch.ones_like(keep))
        pred = self.decoder(z.cls, z.patches, z.keep_index, everything)
        d = self.cfg["data"]
        return reconstruction_panels(images, m, pred, self.patch, bool(self.cfg["mim"]["norm_pix_loss"]), d["mean"],
                                     d["std"])


__all__ = ["MAE", "mae_init"]
