"""The backbone registry: ``model.arch`` names an entry with ``timm_spec`` and ``build`` (ViT, BEiT or Swin)."""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from mst.models.backbone import ViTArch
from mst.models.beit import BeitArch
from mst.models.swin import SwinArch
from mst.registry import Registry
from mst.models.settings import ModelSettings
from mst.settings import typed

def timm_vit(name: str) -> ViTArch | None:
    """Any timm VisionTransformer by its timm name (``vit_small_patch14_reg4_dinov2``, ``deit_small_patch16_224``,
    ``vit_base_patch16_224.mae``): the architecture a pretrained source (``model.init``) brings, registers, layer
    scale and all. Read on the meta device: nothing is allocated. None for other names and families."""
    import timm
    import torch
    from timm.models.vision_transformer import VisionTransformer

    try:
        if not timm.is_model(name):
            return None
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
    except Exception:  # noqa: BLE001 - not a model timm can build here: the registry's own error names the choices
        return None
    if type(model) is not VisionTransformer:
        return None
    return ViTArch(name, embed_dim=int(model.embed_dim), depth=len(model.blocks),
                   num_heads=int(model.blocks[0].attn.num_heads))


def timm_backbone(name: str):
    """The registry's fallback for a timm name: a ViT (:func:`timm_vit`) or a CNN (:func:`mst.models.cnn.timm_cnn`)."""
    from mst.models.cnn import timm_cnn

    return timm_vit(name) or timm_cnn(name)


BACKBONES: Registry = Registry("backbone", "model.arch", fallback=timm_backbone)
BACKBONES.register("vit_tiny", ViTArch("vit_tiny_patch16_224", embed_dim=192, depth=12, num_heads=3))
BACKBONES.register("vit_small", ViTArch("vit_small_patch16_224", embed_dim=384, depth=12, num_heads=6))
BACKBONES.register("vit_base", ViTArch("vit_base_patch16_224", embed_dim=768, depth=12, num_heads=12))
BACKBONES.register("vit_large", ViTArch("vit_large_patch16_224", embed_dim=1024, depth=24, num_heads=16))
# SimMIM's reference ViT-B: layer-scale 0.1, one shared relative position bias, no absolute positions
BACKBONES.register("beit_base", BeitArch("beit_base_patch16_224", embed_dim=768, depth=12, num_heads=12))
BACKBONES.register("swin_tiny", SwinArch("swin_tiny_patch4_window7_224"))


def model_settings(model: Mapping | ModelSettings) -> ModelSettings:
    """The ``model`` section as its typed settings (a resolved config's section, or a checkpoint's, in which a key
    newer than the checkpoint takes its default)."""
    return model if isinstance(model, ModelSettings) else typed("model", model)


def timm_spec(model: Mapping | ModelSettings, in_chans: int) -> tuple[str, dict]:
    """The timm model name and the kwargs that recreate ``model.arch`` (written next to exported weights)."""
    model = model_settings(model)
    return BACKBONES.get(model.arch).timm_spec(model, in_chans)


def create_backbone(model: Mapping | ModelSettings, in_chans: int, drop_path: float = 0.0, mask_token: bool = False,
                    **kwargs) -> nn.Module:
    """A backbone keeping the token contract (:mod:`mst.models.contract`) for ``model.arch``; ``kwargs`` go to
    the entry's ``build`` (e.g. ``classifier=(num_classes, pool)`` for a ViT)."""
    model = model_settings(model)
    return BACKBONES.get(model.arch).build(model, in_chans, drop_path, mask_token, **kwargs)
