"""The ``model`` section: which backbone, at which size, from which weights."""
from __future__ import annotations

from dataclasses import dataclass

from mst.settings import AT_LEAST_1, RATIO, Settings, setting


@dataclass(frozen=True)
class ModelSettings(Settings, section="model"):
    arch: str = setting("vit_tiny", "a registered backbone (vit_tiny | vit_small | vit_base | vit_large | beit_base |"
                        " swin_tiny) or any timm ViT / CNN name", kind=str)
    patch_size: int | str = setting("auto", "patch side in px (auto: 16 from 160 px, 8 from 48 px, else 4)",
                                    kind=int, range=AT_LEAST_1)
    img_size: int | str = setting("auto", "the one size key: training views and evaluation crops (auto: 28 for "
                                  "Fashion-MNIST; a folder's median shorter side, capped: CPU 64, GPU 224)",
                                  kind=int, range=AT_LEAST_1, old=("augment.global_size",))
    depth: int | None = setting(None, "override the arch's depth (a shallower ViT for CPU runs)", kind=int,
                                range=AT_LEAST_1)
    embed_dim: int | None = setting(None, "override the arch's width (ViT only)", kind=int, range=AT_LEAST_1)
    num_heads: int | None = setting(None, "override the arch's number of heads (must divide the width)", kind=int,
                                    range=AT_LEAST_1)
    drop_path: float = setting(0.1, "stochastic depth rate", range=RATIO)
    pos_embed: str = setting("learned", "learned | sincos (fixed 2-d sin-cos, MAE's encoder)",
                             choices=("learned", "sincos"))
    grad_checkpointing: bool = setting(False, "recompute activations in backward (less memory)", resumable=True)
    init: str | None = setting(None, "start from existing weights: timm:NAME | timm:NAME=FILE | an mst run, "
                               "checkpoint or export", kind=str)
