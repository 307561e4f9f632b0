"""f_s and f_t of the paper: backbone + projection head, plus the global image decoder on the student."""
from __future__ import annotations

from torch import nn

from mst.models.backbone import ViTBackbone
from mst.models.decoder import GlobalImageDecoder
from mst.models.head import DINOHead


class Encoder(nn.Module):
    """A backbone and a DINO head. The student also owns the [MASK] embedding (inside its backbone, when a mask
    strategy is on) and the decoder (when enabled); the teacher owns neither, so the EMA, which runs over the
    parameters the two share by name, can never touch them."""

    def __init__(self, cfg: dict, student: bool) -> None:
        super().__init__()
        in_chans = int(cfg["data"]["channels"])
        self.backbone = ViTBackbone(
            cfg["model"],
            in_chans=in_chans,
            drop_path=float(cfg["model"]["drop_path"]) if student else 0.0,
            mask_token=student and cfg["mask"]["strategy"] != "none",
        )
        h = cfg["head"]
        self.head = DINOHead(
            self.backbone.embed_dim,
            out_dim=int(h["out_dim"]),
            hidden_dim=int(h["hidden_dim"]),
            bottleneck_dim=int(h["bottleneck_dim"]),
            nlayers=int(h["nlayers"]),
            norm_last_layer=bool(h["norm_last_layer"]),
            use_bn=bool(h["use_bn"]),
        )
        self.decoder = None
        if student and cfg["decoder"]["enabled"]:
            self.decoder = GlobalImageDecoder(
                self.backbone.embed_dim, self.backbone.patch_size, in_chans, list(cfg["decoder"]["channels"])
            )


def build_student_teacher(cfg: dict) -> tuple[Encoder, Encoder]:
    """A student and a teacher starting from the same weights; the teacher never gets gradients."""
    student = Encoder(cfg, student=True)
    teacher = Encoder(cfg, student=False)
    missing, unexpected = teacher.load_state_dict(student.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"teacher has parameters the student lacks: {missing}")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher
