"""MAE (He et al., CVPR 2022): hide most patches, encode only the visible ones, reconstruct the hidden pixels;
with AMT (attention-driven masking and throwing) and Beyond Masking's degradations as options.

One step:

    view -> [degrade] -> mask (a share of patches, per image) -> encoder on the visible tokens
         -> decoder (visible tokens + a mask token at every hidden position) -> MSE on the hidden patches

Faithful to the reference code: exactly ``int(N * (1 - mask_ratio))`` visible tokens per image, fixed 2-d sin-cos
positions in the encoder (``model.pos_embed: sincos`` in the presets) and the decoder, xavier-uniform linear
layers, per-patch normalised targets (``mim.norm_pix_loss``), the loss averaged over the hidden patches only.
AMT's thrown tokens are neither encoded, decoded nor in the loss. With a degradation (``mim.degradation``) the
encoder sees the degraded view and the decoder reconstructs the clean one (see :mod:`mst.degradations`).
"""
from __future__ import annotations


from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from mst.data.batch import Batch
from mst.degradations import DEGRADATIONS, Degraded, build_degradation
from mst.figures import Panel, to_display
from mst.losses import normalize_patches, patch_mse
from mst.methods.base import METHODS, StepContext, StepOutput
from mst.methods.mim_common import (MIM_MASK, MIMMasking, MIMMethod, figure_mask, masked_panels,
                                     reconstruction_panels, uneven_counts, validate_mim)
from mst.models.backbones import create_backbone
from mst.models.decoders import build_decoder, decoder_kind
from mst.models.decoders.transformer import xavier_init
from mst.models.tokens import gather_tokens, keep_indices, patchify, unpatchify
from mst.registry import ConfigError
from mst.settings import AT_LEAST_1, Settings, setting


def mae_init(vit: nn.Module) -> None:
    """MAE's encoder initialisation on a timm ViT: xavier-uniform linear layers and patch projection (as a linear
    map), N(0, 0.02) CLS token."""
    vit.apply(xavier_init)
    w = vit.patch_embed.proj.weight.data
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    if getattr(vit, "cls_token", None) is not None:
        nn.init.normal_(vit.cls_token, std=0.02)


@dataclass(frozen=True)
class MAESettings(Settings, section="mae"):
    """MAE's decoder."""

    decoder: str = setting("transformer", "a registered decoder")
    decoder_dim: int = setting(512, "decoder width", range=AT_LEAST_1)
    decoder_depth: int = setting(8, "decoder blocks", range=AT_LEAST_1)
    decoder_heads: int = setting(16, "decoder heads", range=AT_LEAST_1)


@METHODS.register("mae")
class MAE(MIMMethod):
    sections = ("mim", "mae", "mask", "amt", "degrade", "teacher")
    changed_defaults = {"mask": MIM_MASK}
    # AMT's reference ratios (guijiejie/AMT): mask 45 %, throw 40 % of the patches (amt.* null -> these)
    amt_reference = (0.45, 0.40)

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        model = cfg["model"]
        self.degradation = build_degradation(cfg["mim"]["degradation"], cfg["degrade"])
        # the side of the view the pipeline crops: the input's, or wider (zoom-in sees the centre of a wider view)
        self.view_size = self.degradation.view_size(int(cfg["model"]["img_size"]))
        self.encoder = create_backbone(model, self.degradation.input_channels(self.channels),
                                       drop_path=float(model["drop_path"]))
        mae_init(self.encoder.vit)
        self.decoder = build_decoder(cfg["mae"]["decoder"], cfg["mae"], self.encoder.embed_dim, self.patch,
                                     self.channels, self.grid, "mae.decoder")
        self.masking = MIMMasking(cfg)
        self.attach_teacher(cfg, int(cfg["mae"]["decoder_dim"]))  # the decoder's tokens predict its features
        if cfg["mim"]["target"] == "teacher":
            self.decoder.pred = None  # no pixel head: every trained weight gets a gradient (DDP)

    @classmethod
    def validate(cls, cfg: dict) -> None:
        validate_mim(cfg, drops_tokens=True)
        mim, k = cfg["mim"], cfg["mask"]
        degraded = mim["degradation"] != "none"
        for name in DEGRADATIONS.names():  # every degrade.* value, used or not, by the constructor that reads it
            build_degradation(name, cfg["degrade"])
        if not degraded and (k["strategy"] == "none" or float(k["ratio"]) == 0.0):
            raise ConfigError(f"mask.strategy={k['strategy']!r} with mask.ratio={k['ratio']} hides nothing, so MAE "
                              "has nothing to reconstruct (unless mim.degradation degrades the view)")
        if degraded:
            d = build_degradation(mim["degradation"], cfg["degrade"])
            try:
                d.check(int(cfg["data"]["channels"]), int(cfg["model"]["img_size"]), int(cfg["model"]["patch_size"]))
            except ValueError as e:
                raise ConfigError(str(e)) from None
            if cfg["amt"]["enabled"]:
                raise ConfigError("mim.degradation and amt.enabled do not combine: a degradation compares the whole "
                                  "reconstructed view, which needs every token decoded, and AMT throws tokens away")
        grid = (int(cfg["model"]["img_size"]) // int(cfg["model"]["patch_size"]),) * 2
        if uneven_counts(k["strategy"], k, int(cfg["model"]["patch_size"]), grid):
            raise ConfigError(f"mask.strategy={k['strategy']!r} hides a different number of tokens in each image, but MAE's "
                              "encoder batches the same number of visible tokens per image: choose patches, blocks "
                              "or attmask")
        name = cfg["mae"]["decoder"]
        if decoder_kind(name, "mae.decoder") != "visible_tokens":
            raise ConfigError(f"mae.decoder={name!r} decodes a full token grid; MAE's encoder output holds only the "
                              "visible tokens: choose a decoder of visible tokens (transformer)")

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        x = batch.views[0]

        # 0. Degrade (Beyond Masking; "none": the view itself): the encoder's input and the clean target.
        d = self.degradation(x, ctx.generator)

        # 1. Mask: per image, which tokens the encoder sees (keep) and which it must reconstruct (mask); with AMT
        #    (from amt.start) drawn by the stored attention maps, and the rest thrown away.
        #    With a frozen teacher (mask.importance=frozen, mim.target) its one pass of the step is on the clean view.
        t = self.frozen_pass(x)
        m = self.masking(replace(batch, views=[d.input]), ctx.epoch, ctx.generator, self.encoder, t)  # input's grid
        keep = m.keep if m.keep is not None else ~m.mask

        # 2. Encoder on the visible tokens only (position embeddings added before they are gathered).
        z = self.encoder(d.input, keep=keep)

        # 3. Decoder: the visible tokens and a mask token at every hidden position (thrown tokens: neither).
        decode_index = keep_indices(keep | m.mask)
        h = self.decoder.features(z.cls, z.patches, z.keep_index, decode_index)

        # 4. Loss: mean squared error per patch, averaged over the hidden patches (all of them when nothing is
        #    hidden); with a degradation, compared in the frame the degradation says. mim.target=teacher / both:
        #    the frozen teacher's normalised features of the hidden patches instead / besides (MaskDistill, MILAN).
        s, masked = self.settings.mim, gather_tokens(m.mask, decode_index)
        metrics = {}
        if s.target != "teacher":
            pred, norm_pix = self.decoder.pred(h), bool(s.norm_pix_loss)
            if s.degradation == "none":
                loss = patch_mse(pred, gather_tokens(patchify(x, self.patch), decode_index), masked, norm_pix)
            else:
                loss = degraded_loss(pred, d, m.mask, self.patch, norm_pix)
        if s.target != "pixels":
            feat = self.teacher_loss(h, t, decode_index, masked)
            metrics["loss_teacher"] = feat.item()
            loss = feat if s.target == "teacher" else loss + float(s.teacher_weight) * feat
        metrics.update({"loss": loss.item(), "mask_ratio": m.mask.float().mean().item(),
                        "visible_ratio": keep.float().mean().item()})
        return StepOutput(loss=loss, metrics=metrics, mask=m.mask)

    def on_epoch_start(self, epoch: int, data) -> dict[str, float]:
        return self.masking.on_epoch_start(epoch, self.encoder, data)

    @torch.no_grad()
    def panels(self, images: torch.Tensor, generator: torch.Generator | None = None) -> list[list[Panel]]:
        """Masked input (thrown tokens black), reconstruction, reconstruction pasted into the visible tokens; with
        AMT first the image's attention map and the map of a random crop, the crop being what is masked; with a
        degradation first the clean view and the degraded input, the reconstruction being of the clean view."""
        if images.shape[-1] != self.view_size:  # figures start from eval images at the input size
            images = F.interpolate(images, size=(self.view_size, self.view_size), mode="bilinear", align_corners=False)
        d = self.degradation(images, generator)
        shown, m, extra = figure_mask(self.masking, self.encoder, d.input, generator, self.frozen)  # AMT: its crop
        if self.decoder.pred is None:  # mim.target=teacher: features, no pixels to show
            c = self.settings.data
            return [e + r for e, r in zip(extra, masked_panels(shown, m, self.grid, c["mean"], c["std"]))]
        keep = m.keep if m.keep is not None else ~m.mask
        z = self.encoder(shown, keep=keep)
        everything = keep_indices(torch.ones_like(keep))
        pred = self.decoder(z.cls, z.patches, z.keep_index, everything)
        c = self.settings.data
        if self.settings.mim.degradation != "none":
            shown = shown if shown.shape[1] == images.shape[1] else shown.expand(-1, images.shape[1], -1, -1)
            extra = [[Panel("clean view", to_display(images[i], c["mean"], c["std"]))] for i in range(len(images))]
        rows = reconstruction_panels(shown, m, pred, self.patch, bool(self.settings.mim.norm_pix_loss), c["mean"],
                                     c["std"])
        if self.settings.mim.degradation != "none":  # the reconstruction is of the clean view: no pasting
            rows = [[Panel(f"degraded input, {r[0].title}", r[0].image, None), r[1]] for r in rows]
        return [e + r for e, r in zip(extra, rows)]


def degraded_loss(pred: torch.Tensor, d: Degraded, mask: torch.Tensor, patch: int, norm_pix: bool) -> torch.Tensor:
    """The loss of a degraded view. ``pred`` (B, N, P): every token's pixels on the input's grid. A degradation with
    a loss of its own (zoom-in) computes it; otherwise the per-token MSE against the clean target on the hidden tokens
    (every token when nothing is hidden). A geometric degradation (zoom-out) compares in the input's frame: as the
    reference, the target's patches are normalised in the clean frame first, then the prediction and the target
    go through the same placement."""
    b, _, h, w = d.input.shape
    grid = (h // patch, w // patch)
    channels = d.target.shape[1]
    image = unpatchify(pred.float(), patch, grid, channels)
    if d.loss is not None:
        return d.loss(image, mask, patch, norm_pix)
    weight = mask if bool(mask.any()) else torch.ones_like(mask)
    if d.to_input_frame is None:
        return patch_mse(pred, patchify(d.target, patch), weight, norm_pix)
    target = d.target.float()
    if norm_pix:
        target = unpatchify(normalize_patches(patchify(target, patch)), patch, grid, channels)
    return patch_mse(patchify(d.to_input_frame(image), patch), patchify(d.to_input_frame(target), patch), weight)


__all__ = ["MAE", "degraded_loss", "mae_init"]
