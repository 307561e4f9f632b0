"""MST (Li et al., NeurIPS 2021): DINO self-distillation + attention-guided [MASK] + a global image decoder.

One step, in the order of Algorithm 2:

    views -> teacher (DINO targets + CLS attention, one pass) -> mask -> student -> losses

Which tokens are masked is the shared ``mask`` section (:mod:`mst.masking.settings`; MST's defaults: the
attention strategy, num 8, p 0.1). Plain DINO is this method with ``mask.strategy: none`` and ``mst.decoder: none``:
the method ``dino`` (:class:`DINO`, these two defaults changed; every key still applies, e.g.
``mask.strategy=amt`` throws in DINO). A strategy that needs an importance reads the teacher's CLS attention
(``mask.importance: teacher``). A throwing strategy (``mask.strategy: amt``, AMT's draw by the teacher's
attention: ``mask.ratio`` masked, ``mask.throw_ratio`` thrown)
removes tokens from the student's global views after the position embeddings (local crops and the teacher see every
token); it needs ``mst.decoder: none``, as the decoder restores the whole view from every token.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mst.data.batch import Batch
from mst.schedules import cosine_schedule
from mst.losses import DINOLoss, restore_loss
from mst.losses.dino_loss import CENTERINGS, CollapseMonitor, feature_stats
from mst.losses.koleo import koleo_loss
from mst.masking import MASKS, build_mask_strategy
from mst.masking.replace import REPLACEMENTS
from mst.methods.base import METHODS, Method, StepContext, StepOutput
from mst.figures import Panel, masked_view, to_display
from mst.models.decoders import decoder_kind
from mst.models.encoder import Encoder, build_student_teacher
from mst.methods.frozen import (check_frozen_source, cosine_distance, resample_importance, resize_tokens,
                                teacher_for)
from mst.methods.importance import check_source
from mst.models.backbones import BACKBONES
from mst.models.head import cancel_last_layer_grads
from mst.registry import ConfigError
from mst.settings import Config, AT_LEAST_1, NON_NEGATIVE, POSITIVE, PROBABILITY, Each, ListOf, Settings, setting


@dataclass(frozen=True)
class DINOSettings(Settings, section="dino"):
    """Self-distillation (DINO; MST's eq. 1-2)."""

    out_dim: int = setting(4096, "prototypes of the projection head", range=AT_LEAST_1, old=("head.out_dim",))
    hidden_dim: int = setting(2048, "head MLP width", range=AT_LEAST_1, old=("head.hidden_dim",))
    bottleneck_dim: int = setting(256, "head bottleneck width", range=AT_LEAST_1, old=("head.bottleneck_dim",))
    nlayers: int = setting(3, "head MLP layers", range=AT_LEAST_1, old=("head.nlayers",))
    norm_last_layer: bool = setting(True, "weight-normalised prototypes with a fixed norm",
                                    old=("head.norm_last_layer",))
    use_bn: bool = setting(False, "BN in the projection head, statistics from the global views only (MST Table 6)",
                           old=("head.use_bn",))
    teacher_temp: float = setting(0.04, "teacher softmax temperature", range=POSITIVE, old=("loss.teacher_temp",))
    warmup_teacher_temp: float = setting(0.04, "its start, warmed up linearly", range=POSITIVE,
                                         old=("loss.warmup_teacher_temp",))
    warmup_teacher_temp_epochs: int = setting(0, "epochs of that warm-up", range=NON_NEGATIVE,
                                              old=("loss.warmup_teacher_temp_epochs",))
    student_temp: float = setting(0.1, "student softmax temperature", range=POSITIVE, old=("loss.student_temp",))
    center_momentum: float = setting(0.9, "EMA of the teacher's mean output", range=PROBABILITY,
                                     old=("loss.center_momentum",))
    centering: str = setting("center", "center (DINO: EMA of the teacher's mean output) | sinkhorn (DINOv2: "
                             "Sinkhorn-Knopp)", choices=tuple(CENTERINGS))
    sinkhorn_iters: int = setting(3, "DINOv2's number of normalisations", range=AT_LEAST_1)
    koleo_weight: float = setting(0.0, "KoLeo on the student's global-view CLS tokens (DINOv2: 0.1; 0: off)",
                                  range=NON_NEGATIVE)
    momentum_teacher: float = setting(0.996, "EMA teacher momentum, cosine to 1 over training", range=PROBABILITY,
                                      old=("optim.momentum_teacher",))
    freeze_last_layer: int = setting(1, "epochs during which the prototypes do not move", range=NON_NEGATIVE,
                                     old=("optim.freeze_last_layer",))


@dataclass(frozen=True)
class MSTSettings(Settings, section="mst"):
    """MST's [MASK] replacement and decoder (eq. 5-11); the mask itself is the ``mask`` section."""

    replacement: str = setting("learned", "learned | bert (80 % [MASK] / 10 % random token / 10 % unchanged)",
                               choices=tuple(REPLACEMENTS), old=("mask.replacement",))
    decoder: str = setting("cnn", "an image decoder (cnn | linear) or none")
    decoder_channels: list | str = setting("auto", "cnn widths, one per 2x upsampling (auto: log2(patch) of 256, "
                                           "128, 64, ...)", kind=ListOf(int), range=Each(AT_LEAST_1),
                                           old=("decoder.channels",))
    restore_target: str = setting("image", "image (whole view, eq. 9) | masked (masked tokens' pixels only)",
                                  choices=("image", "masked"), old=("decoder.target",))
    ce_weight: float = setting(1.0, "lambda1 of eq. 11", range=NON_NEGATIVE, old=("loss.ce_weight",))
    restore_weight: float = setting(0.6, "lambda2 of eq. 11", range=NON_NEGATIVE, old=("loss.restore_weight",))
    frozen_weight: float = setting(0.0, "a feature-distillation term towards the frozen teacher (teacher.init; GFM): "
                                   "1 - cos of the student's global-view CLS and patch tokens, linearly mapped, and "
                                   "the teacher's; 0: off", range=NON_NEGATIVE)


def student_teacher(config: Config) -> tuple[Encoder, Encoder]:
    """MST's student (with the [MASK] embedding when it masks, and the image decoder) and its EMA teacher."""
    d, m = config.dino, config.mst
    head = dict(out_dim=d.out_dim, hidden_dim=d.hidden_dim, bottleneck_dim=d.bottleneck_dim, nlayers=d.nlayers,
                norm_last_layer=d.norm_last_layer, use_bn=d.use_bn)
    return build_student_teacher(config.model, int(config.data.channels), head, masks=config.mask.strategy != "none",
                                 decoder=m.decoder, decoder_settings=m)


@METHODS.register("mst")
class MST(Method):
    sections = ("dino", "mst", "mask", "teacher")
    views = "multicrop"
    backbones = {"teacher": "teacher.backbone", "student": "student.backbone"}
    default_backbone = "teacher"  # DINO/MST report and release the teacher
    importance_sources = ("teacher", "frozen")
    small_budget_base_lr = 8e-3  # with dino.koleo_weight=0.1: the recipe search (docs/results.md)

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        d, m = cfg["dino"], cfg["mst"]
        self.student, self.teacher = student_teacher(self.settings)
        if cfg["optim"]["channels_last_decoder"] and self.student.decoder is not None:
            self.student.decoder.to(memory_format=torch.channels_last)  # measured faster on CPU
        self.dino_loss = DINOLoss(
            int(d["out_dim"]), 2, float(d["student_temp"]), float(d["teacher_temp"]), float(d["warmup_teacher_temp"]),
            int(d["warmup_teacher_temp_epochs"]), int(cfg["optim"]["epochs"]), float(d["center_momentum"]),
            d["centering"], int(d["sinkhorn_iters"]),
        )
        self.mask_strategy = build_mask_strategy(cfg["mask"]["strategy"], cfg["mask"], int(cfg["model"]["patch_size"]))
        # a frozen pretrained teacher whose attention guides the mask (mask.importance=frozen) or whose features the
        # student also regresses (mst.frozen_weight), else None; built after every trained module (same init)
        self.frozen_importance = self.mask_strategy.needs_importance and cfg["mask"]["importance"] == "frozen"
        self.frozen = teacher_for(cfg, self.frozen_importance or float(m["frozen_weight"]) > 0)
        self.frozen_cls = self.frozen_patch = None
        if float(m["frozen_weight"]) > 0:
            width = int(self.student.backbone.embed_dim)
            self.frozen_cls = nn.Linear(width, self.frozen.embed_dim)
            self.frozen_patch = nn.Linear(int(getattr(self.student.backbone, "patch_dim", width)), self.frozen.embed_dim)
        self.collapse = CollapseMonitor()  # one warning when the teacher stays near uniform

    @classmethod
    def validate(cls, cfg: dict) -> None:
        m, k = cfg["mst"], cfg["mask"]
        check_source(cfg["method"], cls.importance_sources, "mask.importance", k["importance"],
                     [("mask.strategy", k["strategy"])])
        check_frozen_source(cfg, k["importance"], {"mst.frozen_weight > 0": float(m["frozen_weight"]) > 0})
        if float(m["frozen_weight"]) > 0 and MASKS.get(k["strategy"], "mask.strategy").throws:
            raise ConfigError(f"mst.frozen_weight={m['frozen_weight']} compares every patch token of the student's "
                              f"global views with the frozen teacher's, but mask.strategy={k['strategy']!r} throws "
                              "some away: set one of them off")
        if MASKS.get(k["strategy"], "mask.strategy").throws:
            if m["decoder"] != "none":
                raise ConfigError(f"mask.strategy={k['strategy']!r} throws tokens away, but mst.decoder="
                                  f"{m['decoder']!r} restores the whole view from every token: set mst.decoder=none "
                                  "to throw")
            if not BACKBONES.get(cfg["model"]["arch"]).drops_tokens:
                raise ConfigError(f"mask.strategy={k['strategy']!r} throws tokens away, which model.arch="
                                  f"{cfg['model']['arch']!r} cannot (Swin's windows and a CNN's feature map need "
                                  "the whole grid): use a ViT")
        if float(cfg["dino"]["koleo_weight"]) > 0 and int(cfg["optim"]["batch_size"]) < 2:
            raise ConfigError(f"dino.koleo_weight={cfg['dino']['koleo_weight']} needs optim.batch_size >= 2 (KoLeo "
                              "spreads each process's batch: one image has no neighbour); set dino.koleo_weight=0")
        if cfg["dino"]["centering"] not in CENTERINGS:
            raise ConfigError(f"dino.centering={cfg['dino']['centering']!r} is not one of {', '.join(CENTERINGS)}")
        if m["replacement"] not in REPLACEMENTS:
            raise ConfigError(f"mst.replacement={m['replacement']!r} is not one of {', '.join(REPLACEMENTS)}")
        if m["restore_target"] not in ("image", "masked"):
            raise ConfigError(f"mst.restore_target={m['restore_target']!r} is not one of image, masked")
        if m["decoder"] != "none":
            if decoder_kind(m["decoder"], "mst.decoder") != "all_tokens":
                raise ConfigError(f"mst.decoder={m['decoder']!r} decodes visible tokens only; MST restores the whole "
                                  "view from every patch token: choose an image decoder (cnn, linear) or none")
        build_mask_strategy(k["strategy"], k, int(cfg["model"]["patch_size"]))

    # -- the step ---------------------------------------------------------------------------------------------
    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        """``batch.views``: [global_1, global_2, local_1, ..., local_n], each (B, C, H, W) on the device."""
        views = batch.views
        n_global, n_local = 2, len(views) - 2
        global_views = torch.cat(views[:n_global])  # (2B, C, H, W): view-major, like the teacher's outputs
        local_views = torch.cat(views[n_global:]) if n_local else None

        # 1. Teacher: the DINO targets and, from the *same* pass, the last block's CLS->patch attention (eq. 4).
        #    With mask.importance=frozen the attention is a frozen pretrained teacher's instead (one pass of it).
        needs = self.mask_strategy.needs_importance and self.settings.mask.importance == "teacher"
        with torch.no_grad():
            t = self.teacher.backbone(global_views, return_attention=needs)
            teacher_logits = self.teacher.head(t.cls)
        importance = t.attention if needs else None
        frozen = None if self.frozen is None else self.frozen(global_views, attention=self.frozen_importance)
        if self.frozen_importance:
            importance = resample_importance(frozen.attention, frozen.grid, t.mask_grid)

        # 2. Mask: which of the student's global-view tokens become [MASK] (eq. 5; locals are never masked), and
        #    with a throwing strategy which leave its sequence (keep: the tokens that stay, [MASK] ones included).
        result = self.mask_strategy(global_views.shape[0], t.mask_grid, importance, ctx.generator)
        mask = None if result is None else result.mask.to(global_views.device)
        keep = None if result is None or result.keep is None else (result.keep | result.mask).to(global_views.device)

        # 3. Student: masked global views + local crops through backbone and head; decoder on the global views.
        s = self.student(global_views, local_views, mask=mask, keep=keep, replacement=self.settings.mst.replacement,
                         n_global=n_global, n_local=n_local)

        # 4. Losses: self-distillation (eq. 2) and restoration of the whole augmented view (eq. 9), eq. 11.
        loss_ce = self.dino_loss(s.logits, teacher_logits, ctx.epoch)
        m = self.settings.mst
        loss = float(m["ce_weight"]) * loss_ce
        metrics = {"loss_ce": loss_ce.item()}
        koleo_weight = float(self.settings.dino.koleo_weight)
        if koleo_weight > 0:  # DINOv2: spread the student's global CLS tokens, one view's batch at a time
            loss_koleo = sum(koleo_loss(c) for c in s.global_cls.chunk(n_global))
            loss = loss + koleo_weight * loss_koleo
            metrics["loss_koleo"] = loss_koleo.item()
        if s.reconstruction is not None:
            loss_restore = restore_loss(s.reconstruction, global_views, mask, int(self.settings.model.patch_size),
                                        m["restore_target"])
            loss = loss + float(m["restore_weight"]) * loss_restore
            metrics["loss_restore"] = loss_restore.item()
        if self.frozen_cls is not None:  # GFM: the frozen teacher's features of the same (unmasked) global views
            n = s.global_patches.shape[1]
            grid = (math.isqrt(n), n // math.isqrt(n))
            loss_frozen = (cosine_distance(self.frozen_cls(s.global_cls), frozen.cls)
                           + cosine_distance(self.frozen_patch(s.global_patches),
                                             resize_tokens(frozen.patches, frozen.grid, grid)))
            loss = loss + float(m["frozen_weight"]) * loss_frozen
            metrics["loss_frozen"] = loss_frozen.item()
        metrics["loss"] = loss.item()
        metrics["mask_ratio"] = mask.float().mean().item() if mask is not None else 0.0
        if keep is not None:
            metrics["thrown_ratio"] = 1.0 - keep.float().mean().item()
        metrics["teacher_temp"] = self.dino_loss.teacher_temp(ctx.epoch)
        metrics.update(self.dino_loss.stats)  # collapse monitors: teacher entropy / ln K, KL, centre norm
        metrics["teacher_cls_std"] = feature_stats(t.cls)["feature_std"]  # spread of the teacher's CLS in the batch
        self.collapse.update(metrics["teacher_entropy_ratio"], ctx.step)
        return StepOutput(loss=loss, metrics=metrics, mask=mask)

    # -- engine hooks -----------------------------------------------------------------------------------------
    def schedules(self, iters_per_epoch: int, epochs: int) -> dict[str, np.ndarray]:
        """The teacher momentum: cosine from dino.momentum_teacher to 1, per iteration (DINO)."""
        return {"momentum": cosine_schedule(float(self.settings.dino.momentum_teacher), 1.0, epochs, iters_per_epoch)}

    def ema_pairs(self):
        return [(self.student, self.teacher)]

    def after_backward(self, ctx: StepContext) -> None:
        cancel_last_layer_grads(self.student, ctx.epoch, int(self.settings.dino.freeze_last_layer))

    # -- figures ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def panels(self, images: torch.Tensor, generator: torch.Generator | None = None) -> list[list[Panel]]:
        """Per image: a random mask (same p), MST's attention-guided mask (red: candidates left unmasked) and,
        with a decoder, the student's restoration of the attention-masked view."""
        from mst.masking import AttentionGuidedMask, RandomMask

        m, k, d = self.settings.mst, self.settings.mask, self.settings.data
        t = self.teacher.backbone(images, return_attention=True)
        b, grid = len(images), t.mask_grid
        rand = RandomMask(k.p)(b, grid, None, generator).mask
        guided = AttentionGuidedMask(k.num, k.p)(b, grid, t.attention.cpu(), generator)
        recon = None
        if self.student.decoder is not None:
            bb = self.student.backbone
            out = bb(images, mask=guided.mask.to(images.device) if bb.mask_token is not None else None,
                     replacement=m["replacement"], generator=generator)
            recon = self.student.decoder(out.patches, out.grid)
        rows = []
        for i in range(b):
            img = to_display(images[i], d["mean"], d["std"])
            row = [
                Panel(f"random p={k.p}: {int(rand[i].sum())}", masked_view(img, rand[i], grid), None),
                Panel(f"attn num={k.num} p={k.p}: {int(guided.mask[i].sum())}/"
                      f"{int(guided.candidates[i].sum())}",
                      masked_view(img, guided.mask[i], grid, candidates=guided.candidates[i]), None),
            ]
            if recon is not None:
                row.append(Panel("decoder restoration", to_display(recon[i], d["mean"], d["std"])))
            rows.append(row)
        return rows


@METHODS.register("dino")
class DINO(MST):
    """Plain DINO (Caron et al., ICCV 2021): MST with, by default, no mask (``mask.strategy: none``) and no decoder
    (``mst.decoder: none``): self-distillation of multi-crop views alone. Every key of the ``dino``, ``mst`` and
    ``mask`` sections still applies (``mask.strategy=amt``: DINO throws tokens, AMT's draw by the teacher's
    attention). With the
    same resolved sections it trains exactly as ``mst`` (tests/test_dino_method.py), so checkpoints of either load
    as the other and ``configs/fashion_mnist_dino.yaml`` reproduces the runs recorded with ``method: mst``."""

    changed_defaults = {"mst": {"decoder": "none"}, "mask": {"strategy": "none"}}
    trains_as = "mst"

    @classmethod
    def validate(cls, cfg: dict) -> None:
        super().validate(cfg)
        m = cfg["mst"]
        if m["decoder"] != "none":  # e.g. --config an MST preset --set method=dino: its mask and decoder stay
            warnings.warn(f"method=dino with mst.decoder={m['decoder']!r} (mask.strategy={cfg['mask']['strategy']!r}) "
                          "restores the view from the student's tokens: that is MST; set mst.decoder=none (and "
                          "mask.strategy=none) for plain "
                          "DINO, or method=mst", stacklevel=2)
