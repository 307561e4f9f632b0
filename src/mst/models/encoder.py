"""f_s and f_t of MST: backbone + DINO projection head, plus the global image decoder on the student."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mst.models.backbones import create_backbone
from mst.models.bn import frozen_bn_stats
from mst.models.decoders import build_decoder
from mst.models.head import DINOHead
from mst.models.settings import ModelSettings


@dataclass
class StudentOutput:
    logits: list[torch.Tensor]  # one (B, K) tensor per view: the global views first, then the local crops
    reconstruction: torch.Tensor | None  # (n_global * B, C, H, W) decoder output for the global views
    global_patches: torch.Tensor  # (n_global * B, N, D)
    global_cls: torch.Tensor  # (n_global * B, D): the backbone's CLS on the global views (KoLeo)


class Encoder(nn.Module):
    """A backbone and a DINO head. The student also owns the [MASK] embedding (inside its backbone, when it masks)
    and the decoder (when one is configured); the teacher owns neither, so the EMA, which runs over the parameters
    the two share by name, can never touch them."""

    def __init__(self, model: ModelSettings, in_chans: int, head: dict, student: bool, masks: bool = False,
                 decoder: str = "none", decoder_settings=None) -> None:
        """``model``: the backbone's settings; ``head``: :class:`DINOHead`'s keyword arguments; the student gets
        the [MASK] embedding when it ``masks`` and the image ``decoder`` (a registered name, built from
        ``decoder_settings``) unless it is "none"."""
        super().__init__()
        self.backbone = create_backbone(model, in_chans=in_chans, drop_path=model.drop_path if student else 0.0,
                                        mask_token=student and masks)
        self.head = DINOHead(self.backbone.embed_dim, **head)
        self.decoder = None
        if student and decoder != "none":
            grid = (model.img_size // self.backbone.patch_size,) * 2
            self.decoder = build_decoder(decoder, decoder_settings, self.backbone.embed_dim, self.backbone.patch_size,
                                         in_chans, grid, "mst.decoder")

    def forward(
        self,
        global_views: torch.Tensor,
        local_views: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        replacement: str = "learned",
        n_global: int = 2,
        n_local: int = 0,
    ) -> StudentOutput:
        """The student's pass: masked global views (one batch of n_global * B; ``keep``: only those tokens enter,
        after the position embeddings), unmasked local crops, the head on every CLS token, and the decoder on the
        global views' patch tokens.

        BatchNorm statistics (head with BN, decoder) are updated from the global views only (appendix C)."""
        g = self.backbone(global_views, mask=mask, keep=keep, replacement=replacement)
        logits = list(self.head(g.cls).chunk(n_global))
        if local_views is not None and n_local > 0:
            l_cls = self.backbone(local_views).cls
            with frozen_bn_stats(self.head):
                logits += list(self.head(l_cls).chunk(n_local))
        recon = self.decoder(g.patches, g.grid) if self.decoder is not None else None
        return StudentOutput(logits=logits, reconstruction=recon, global_patches=g.patches, global_cls=g.cls)


def build_student_teacher(model: ModelSettings, in_chans: int, head: dict, masks: bool, decoder: str = "none",
                          decoder_settings=None) -> tuple[Encoder, Encoder]:
    """A student and a teacher starting from the same weights (arguments as :class:`Encoder`'s); the teacher never
    gets gradients."""
    student = Encoder(model, in_chans, head, True, masks, decoder, decoder_settings)
    teacher = Encoder(model, in_chans, head, False)
    missing, unexpected = teacher.load_state_dict(student.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"teacher has parameters the student lacks: {missing}")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher
