"""SimMIM (Xie et al., CVPR 2022): replace a share of mask units by [MASK], encode every token, predict each
token's pixels with one linear map, L1 on the masked pixels.

One step:

    view -> mask (a share of mask.unit units, per image) -> [MASK] before position embeddings
         -> encoder on all tokens -> per-token linear decoder -> L1 on the masked pixels

A strategy that throws tokens (AMT) is honoured: thrown tokens leave the encoder's sequence (after position
embeddings) and the loss; the decoder then maps the remaining tokens one by one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mst.data.batch import Batch
from mst.losses import patch_l1
from mst.masking import MASKS
from mst.figures import Panel
from mst.methods.base import METHODS, StepContext, StepOutput
from mst.methods.mim_common import (MIM_MASK, MIMMasking, MIMMethod, figure_mask, masked_panels,
                                     reconstruction_panels, validate_mim)
from mst.models.backbones import create_backbone
from mst.models.decoders import build_decoder, decoder_kind
from mst.models.tokens import gather_tokens, patchify, scatter_tokens
from mst.registry import ConfigError
from mst.settings import Settings, setting


@dataclass(frozen=True)
class SimMIMSettings(Settings, section="simmim"):
    decoder: str = setting("linear", "SimMIM's decoder: a registered one (linear: one 1x1 conv + pixel shuffle)")


@METHODS.register("simmim")
class SimMIM(MIMMethod):
    sections = ("mim", "simmim", "mask", "amt", "teacher")
    changed_defaults = {"mask": MIM_MASK}
    small_budget_base_lr = 1e-3  # configs/fashion_mnist_simmim.yaml
    # AMT's reference ratios (guijiejie/AMT): mask 44 %, throw 26 % of the mask units (amt.* null -> these)
    amt_reference = (0.44, 0.26)

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        model = cfg["model"]
        self.encoder = create_backbone(model, self.channels, drop_path=float(model["drop_path"]), mask_token=True)
        self.decoder = build_decoder(cfg["simmim"]["decoder"], cfg["simmim"], self.encoder.embed_dim, self.patch,
                                     self.channels, self.grid, "simmim.decoder")
        self.masking = MIMMasking(cfg)
        self.attach_teacher(cfg, int(self.encoder.embed_dim))  # the encoder's tokens predict its features
        if cfg["mim"]["target"] == "teacher":
            self.decoder = None  # no pixel head: every trained weight gets a gradient (DDP)

    @classmethod
    def validate(cls, cfg: dict) -> None:
        k = cfg["mask"]
        validate_mim(cfg, drops_tokens=MASKS.get(k["strategy"], "mask.strategy").throws or cfg["amt"]["enabled"])
        if k["strategy"] == "none" or float(k["ratio"]) == 0.0:
            raise ConfigError(f"mask.strategy={k['strategy']!r} with mask.ratio={k['ratio']} masks nothing, so SimMIM "
                              "has nothing to reconstruct")
        if cfg["mim"]["degradation"] != "none":
            raise ConfigError(f"mim.degradation={cfg['mim']['degradation']!r}: Beyond Masking's degradations are "
                              "built on MAE (method: mae); SimMIM takes none")
        name = cfg["simmim"]["decoder"]
        if decoder_kind(name, "simmim.decoder") != "all_tokens":
            raise ConfigError(f"simmim.decoder={name!r} decodes visible tokens only; SimMIM decodes every token: "
                              "choose an image decoder (linear)")

    def no_weight_decay_names(self) -> tuple[str, ...]:
        """The reference's ``no_weight_decay``: the position embedding and the CLS token (and Swin's [MASK])."""
        return (".pos_embed", ".cls_token") + ((".mask_token",) if self.settings.model.arch.startswith("swin") else ())

    def _encode(self, x: torch.Tensor, m):
        """The encoder on every token but the thrown ones (masked ones as [MASK]) -> (its output, the kept tokens
        (B, N) or None for all)."""
        keep = None if m.keep is None else m.keep | m.mask
        return self.encoder(x, mask=m.mask, keep=keep), keep

    def _predict(self, x: torch.Tensor, m):
        """Encoder + decoder -> (predicted patches, their positions (B, M) or None for all N)."""
        return self._pixels(*self._encode(x, m))

    def _pixels(self, z, keep):
        """The decoder on the encoder's tokens -> (predicted patches, their positions or None for all N)."""
        if keep is None:
            return patchify(self.decoder(z.patches, z.grid), self.patch), None
        if not hasattr(self.decoder, "patch_pixels"):
            raise ValueError(f"simmim.decoder={self.settings.simmim.decoder!r} needs the whole token grid, but the "
                             "mask strategy throws tokens away: use the per-token decoder (linear)")
        return self.decoder.patch_pixels(z.patches), z.keep_index

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        x = batch.views[0]

        # 1. Mask: a share of mask units per image; with AMT (from amt.start) drawn by the stored attention maps,
        #    and further units thrown out of the sequence.
        #    With a frozen teacher (mask.importance=frozen, mim.target) its one pass of the step is on the view.
        t = self.frozen_pass(x)
        m = self.masking(batch, ctx.epoch, ctx.generator, self.encoder, t)

        # 2. Encoder: [MASK] before position embeddings, every kept token.
        z, keep = self._encode(x, m)
        where = None if keep is None else z.keep_index
        masked = m.mask if where is None else gather_tokens(m.mask, where)

        # 3-4. The per-token linear decoder, L1 on the masked pixels; mim.target=teacher / both: a linear head on the
        #      encoder's masked tokens regresses the frozen teacher's normalised features instead / besides
        #      (MaskDistill).
        s, metrics = self.settings.mim, {}
        if s.target != "teacher":
            pred, _ = self._pixels(z, keep)
            target = patchify(x, self.patch) if where is None else gather_tokens(patchify(x, self.patch), where)
            loss = patch_l1(pred, target, masked, self.channels, bool(s.norm_pix_loss))
        if s.target != "pixels":
            feat = self.teacher_loss(z.patches, t, where, masked)
            metrics["loss_teacher"] = feat.item()
            loss = feat if s.target == "teacher" else loss + float(s.teacher_weight) * feat
        metrics.update({"loss": loss.item(), "mask_ratio": m.mask.float().mean().item()})
        if m.keep is not None:
            metrics["visible_ratio"] = (m.keep & ~m.mask).float().mean().item()
        return StepOutput(loss=loss, metrics=metrics, mask=m.mask)

    def on_epoch_start(self, epoch: int, data) -> dict[str, float]:
        return self.masking.on_epoch_start(epoch, self.encoder, data)

    @torch.no_grad()
    def panels(self, images: torch.Tensor, generator: torch.Generator | None = None) -> list[list[Panel]]:
        """As MAE's: masked input (thrown black), reconstruction, pasted; with AMT the maps first."""
        images, m, extra = figure_mask(self.masking, self.encoder, images, generator, self.frozen)
        d = self.settings.data
        if self.decoder is None:  # mim.target=teacher: features, no pixels to show
            return [e + r for e, r in zip(extra, masked_panels(images, m, self.grid, d["mean"], d["std"]))]
        pred, where = self._predict(images, m)
        if where is not None:  # thrown tokens predicted as 0 (shown black anyway)
            pred = scatter_tokens(pred, where, m.mask.shape[1])
        rows = reconstruction_panels(images, m, pred, self.patch, bool(self.settings.mim.norm_pix_loss), d["mean"],
                                     d["std"])
        return [e + r for e, r in zip(extra, rows)]
