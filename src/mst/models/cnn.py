"""A timm CNN (ResNet, ConvNeXt, EfficientNet, ...) behind the backbone contract, as a distillation student and for
evaluation and export like a ViT.

``backbone(x) -> BackboneOutput``: ``cls`` is timm's pooled pre-logits feature (``forward_head(..., pre_logits=
True)``), ``patches`` the last feature map as tokens (B, h * w, C) on its ``grid``. A CNN has no tokens to mask or
throw: ``mask`` / ``keep`` are refused. The timm model sits in ``self.vit`` like a ViT's, so checkpoints, evaluation
and export read one key layout (``<prefix>.vit.<timm key>``) whatever the family.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mst.models.settings import ModelSettings

from dataclasses import dataclass

import timm
import torch
from torch import nn

from mst.models.contract import BackboneOutput
from mst.registry import ConfigError


@dataclass(frozen=True)
class CNNArch:
    """A timm CNN by its timm name; ``stride``: the reduction of its last feature map (32 for a ResNet)."""

    timm_name: str
    stride: int
    drops_tokens = False

    def timm_spec(self, model: "ModelSettings", in_chans: int) -> tuple[str, dict]:
        return self.timm_name, dict(in_chans=int(in_chans), num_classes=0)

    def build(self, model: "ModelSettings", in_chans: int, drop_path: float = 0.0, mask_token: bool = False,
              classifier: tuple[int, str] | None = None) -> nn.Module:
        if mask_token:
            raise ConfigError(f"model.arch={self.timm_name!r} is a CNN: it has no tokens to mask (use a ViT, or "
                              "method=distill)")
        return CNNBackbone(self, in_chans, drop_path, classifier)


class CNNBackbone(nn.Module):
    """timm CNN + the token view of its last feature map."""

    def __init__(self, arch: CNNArch, in_chans: int, drop_path: float = 0.0,
                 classifier: tuple[int, str] | None = None) -> None:
        super().__init__()
        kwargs = {"drop_path_rate": drop_path} if drop_path else {}
        num_classes = int(classifier[0]) if classifier is not None else 0
        self.vit = timm.create_model(arch.timm_name, pretrained=False, in_chans=int(in_chans),
                                     num_classes=num_classes, **kwargs)
        # the pooled feature (cls) may be wider than the map (LCNet / MobileNetV3 pool through a conv head)
        self.embed_dim = int(getattr(self.vit, "head_hidden_size", None) or self.vit.num_features)
        self.patch_dim = int(self.vit.num_features)
        self.patch_size = arch.stride
        self.num_prefix = 0
        self.mask_token = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, keep: torch.Tensor | None = None,
                return_attention: bool = False, **_: object) -> BackboneOutput:
        if mask is not None or keep is not None:
            raise ConfigError("a CNN backbone has no tokens to mask or throw away: use a ViT for masking methods")
        fmap = self.vit.forward_features(x)  # (B, C, h, w)
        pooled = self.vit.forward_head(fmap, pre_logits=True)
        b, c, h, w = fmap.shape
        return BackboneOutput(cls=pooled, patches=fmap.flatten(2).transpose(1, 2), grid=(h, w))

    def timm_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.vit.state_dict().items()}


def timm_cnn(name: str) -> CNNArch | None:
    """A timm CNN by name (resnet18, convnext_atto, efficientnet_b0, ...), read on the meta device; None for a
    name timm does not know or a model that is not a convolutional network with a feature map."""
    try:
        if not timm.is_model(name):
            return None
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0)
    except Exception:  # noqa: BLE001 - the registry's own error names the choices
        return None
    info = getattr(model, "feature_info", None)
    if not info or not hasattr(model, "forward_head") or hasattr(model, "patch_embed"):
        return None  # transformers (patch embeddings) are ViTs or not supported here
    reduction = info[-1]["reduction"] if isinstance(info, list) else info.reduction()[-1]
    return CNNArch(name, int(reduction))
