"""Supervised fine-tuning of a pretrained backbone (or the same ViT from scratch): how MIM methods are judged.

One step:

    view + labels -> mixup / cutmix (soft targets) -> random erasing -> ViT + linear head -> cross-entropy

The recipe of MAE / BEiT fine-tuning, through timm's own pieces: layer-wise lr decay (``param_groups_layer_decay``),
drop-path, label smoothing, ``Mixup`` and ``RandomErasing``; AdamW without decay on biases, norms, the CLS token
and position embeddings; warm-up + cosine from the engine. The head sits on the CLS token or on the mean of the
patch tokens (``finetune.pool: avg`` uses timm's fc_norm instead of the final norm, as MAE).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay
from torch import nn

from mst.data.batch import Batch
from mst.health import ChanceLossMonitor
from mst.checkpoint import backbone_state, load_checkpoint, resolve_which
from mst.methods.base import METHODS, Method, StepContext, StepOutput
from mst.models.backbone import ViTArch
from mst.models.backbones import BACKBONES, create_backbone
from mst.registry import ConfigError
from mst.settings import NON_NEGATIVE, PROBABILITY, Range, Settings, setting


@dataclass(frozen=True)
class FinetuneSettings(Settings, section="finetune"):
    """Supervised fine-tuning of a pretrained backbone (or from scratch), the MAE / BEiT recipe."""

    init: str | None = setting(None, "checkpoint (run directory or file) whose backbone starts the fine-tune; "
                               "null: random init", kind=str)
    init_backbone: str | None = setting(None, "which of its backbones (null: its default: MST's teacher, MIM's "
                                        "encoder)", kind=str)
    num_classes: int = setting(10, "classes of the labels", range=Range(2))
    pool: str = setting("cls", "cls (CLS token after the final norm) | avg (mean of patch tokens + fc_norm, as MAE)",
                        choices=("cls", "avg"))
    layer_decay: float = setting(0.75, "lr of block i (0-based) x decay^(depth - i); embeddings x decay^(depth + 1)",
                                 range=Range(0, 1, lo_open=True))
    label_smoothing: float = setting(0.1, "label smoothing", range=PROBABILITY)
    mixup: float = setting(0.8, "mixup alpha (0: off)", range=NON_NEGATIVE)
    cutmix: float = setting(1.0, "cutmix alpha (0: off)", range=NON_NEGATIVE)
    mixup_prob: float = setting(1.0, "probability of mixing a batch", range=PROBABILITY)
    mixup_switch_prob: float = setting(0.5, "probability of cutmix instead of mixup", range=PROBABILITY)
    reprob: float = setting(0.25, "random erasing probability (timm, pixel mode)", range=PROBABILITY)


@METHODS.register("finetune")
class Supervised(Method):
    sections = ("finetune",)
    views = "single"
    needs_labels = True
    backbones = {"finetuned": "backbone"}
    default_backbone = "finetuned"

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        f, model = cfg["finetune"], cfg["model"]
        self.num_classes, self.pool = int(f["num_classes"]), f["pool"]
        self.backbone = create_backbone(model, int(cfg["data"]["channels"]), drop_path=float(model["drop_path"]),
                                        classifier=(self.num_classes, "token" if self.pool == "cls" else "avg"))
        mixing = float(f["mixup"]) > 0 or float(f["cutmix"]) > 0
        self.mixup = Mixup(mixup_alpha=float(f["mixup"]), cutmix_alpha=float(f["cutmix"]), prob=float(f["mixup_prob"]),
                           switch_prob=float(f["mixup_switch_prob"]), mode="batch",
                           label_smoothing=float(f["label_smoothing"]), num_classes=self.num_classes) if mixing else None
        self.reprob = float(f["reprob"])
        self.chance = ChanceLossMonitor(self.num_classes)  # one warning when the loss stays at ln K after warm-up
        if mixing:  # mixup already smooths the targets
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif float(f["label_smoothing"]) > 0:
            self.criterion = LabelSmoothingCrossEntropy(float(f["label_smoothing"]))
        else:
            self.criterion = nn.CrossEntropyLoss()

    @classmethod
    def validate(cls, cfg: dict) -> None:
        f = cfg["finetune"]
        if f["pool"] not in ("cls", "avg"):
            raise ConfigError(f"finetune.pool={f['pool']!r} is not one of cls, avg")
        if int(f["num_classes"]) < 2:
            raise ConfigError(f"finetune.num_classes={f['num_classes']} must be >= 2")
        from mst.models.cnn import CNNArch

        if not isinstance(BACKBONES.get(cfg["model"]["arch"]), (ViTArch, CNNArch)):
            raise ConfigError(f"fine-tuning builds a timm ViT or CNN classifier; model.arch={cfg['model']['arch']!r} "
                              "is neither")
        if not 0 < float(f["layer_decay"]) <= 1:
            raise ConfigError(f"finetune.layer_decay={f['layer_decay']} must lie in (0, 1]")
        if (float(f["mixup"]) > 0 or float(f["cutmix"]) > 0) and int(cfg["optim"]["batch_size"]) % 2:
            raise ConfigError(f"mixup / cutmix pair images within a batch: optim.batch_size="
                              f"{cfg['optim']['batch_size']} must be even")
        if not 0 <= float(f["reprob"]) <= 1:
            raise ConfigError(f"finetune.reprob={f['reprob']} must lie in [0, 1]")

    # -- initialisation -----------------------------------------------------------------------------------------
    def init_from(self, ckpt: str, which: str | None = None) -> str:
        """Start from a pretrained checkpoint's backbone (its default unless ``which``): every weight but the new
        head (and, with avg pooling, fc_norm replacing the final norm). Returns the backbone's name."""
        state = load_checkpoint(ckpt)
        pre = state["config"]
        which = resolve_which(state, which)
        if int(pre["data"]["channels"]) != int(self.settings.data.channels):
            raise ConfigError(f"the backbone of {ckpt} takes {pre['data']['channels']}-channel images but "
                              f"data.channels={self.settings.data.channels}: fine-tune on data like its own")
        weights = backbone_state(state, which)
        missing, unexpected = self.backbone.vit.load_state_dict(weights, strict=False)
        new = ("head.", "fc_norm.", self.backbone.vit.default_cfg.get("classifier", "head") + ".")
        missing = [k for k in missing if not k.startswith(new)]
        unexpected = [k for k in unexpected if not (self.pool == "avg" and k.startswith("norm."))]
        if missing or unexpected:
            raise ConfigError(f"the backbone of {ckpt} does not fit this model (missing {missing[:4]}, unexpected "
                              f"{unexpected[:4]}): fine-tune with the pretraining's model settings")
        head = self.backbone.vit.get_classifier()
        nn.init.trunc_normal_(head.weight, std=2e-5)  # MAE: a near-zero head on a good backbone
        nn.init.zeros_(head.bias)
        return which

    # -- the step -----------------------------------------------------------------------------------------------
    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        x, labels = batch.views[0], batch.labels
        # 1. Regularise the batch: mixup / cutmix (soft targets), then random erasing per image.
        target = labels
        if self.mixup is not None:
            x, target = self.mixup(x, labels)
        if self.reprob > 0:
            x = RandomErasing(self.reprob, mode="pixel", max_count=1, device=x.device)(x)
        # 2. Classify and score.
        logits = self.backbone.vit(x)
        loss = self.criterion(logits, target)
        acc = 100.0 * int((logits.argmax(1) == labels).sum()) / len(labels)
        value = loss.item()
        if self.training:
            self.chance.update(value, ctx.values.get("lr", 0.0), ctx.step)
        return StepOutput(loss=loss, metrics={"loss": value, "train_top1": acc})

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of images (eval mode is the caller's choice)."""
        return self.backbone.vit(x)

    def param_groups(self) -> list[dict]:
        """timm's layer-wise lr decay groups ("lr_scale"), no weight decay on 1-d parameters, CLS token and
        position embeddings; the engine scales every group's lr by its lr_scale and sets decay where it is on."""
        vit = self.backbone.vit
        skip = vit.no_weight_decay() if hasattr(vit, "no_weight_decay") else ()
        groups = param_groups_layer_decay(vit, weight_decay=1.0, no_weight_decay_list=skip,
                                          layer_decay=float(self.settings.finetune.layer_decay))
        for g in groups:
            if g["weight_decay"] == 0.0:
                g["no_weight_decay"] = True
        rest = [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("backbone.vit.")]
        if rest:
            groups.append({"params": rest})
        return groups

    def checkpoint_info(self) -> dict:
        vit_pool = "token" if self.pool == "cls" else "avg"
        cnn = not hasattr(self.backbone.vit, "blocks")
        return {"classifier": {"prefix": "backbone.vit.", "num_classes": self.num_classes,
                               "global_pool": None if cnn else vit_pool}}


__all__ = ["Supervised"]
