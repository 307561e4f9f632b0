"""Distillation from a frozen pretrained teacher into any student (LightlyTrain's default use; GFM's and MaskDistill's
feature targets), on the user's unlabelled images.

One step:

    view -> teacher (frozen, no grad): CLS / pooled embedding + patch tokens on its grid
         -> student (a ViT or a CNN): pooled embedding + its last feature map
         -> linear maps to the teacher's width; the student's map resized to the teacher's grid (bilinear)
         -> 1 - cos(student, teacher) on the embedding and on every patch token

The teacher is ``teacher.init`` (a SOURCE as for ``--init``: ``timm:NAME``, ``timm:NAME=FILE``, an mst run or
export; :mod:`mst.methods.frozen`), fitted to the data's channels and size by :mod:`mst.sources` and kept in eval
mode; it runs once per step on the one view both networks see. The student is ``model.arch``: a registered ViT, any timm ViT name, or a
timm CNN (``resnet18``, ``convnext_atto``, ``efficientnet_b0``, ...). Cosine, not smooth-L1: it leaves each
teacher feature's scale out of the target (the scales of a CLS token and of patch tokens differ, and differ from
one pretrained model to the next), so no normalisation statistics need estimating; the student's own scale is free.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mst.data.batch import Batch
from mst.methods.base import METHODS, Method, StepContext, StepOutput
from mst.methods.frozen import TeacherPass, build_frozen_teacher, cosine_distance, resize_tokens
from mst.models.backbones import create_backbone
from mst.registry import ConfigError
from mst.settings import NON_NEGATIVE, Settings, setting


@dataclass(frozen=True)
class DistillSettings(Settings, section="distill"):
    """The loss's two terms (the teacher itself: ``teacher.init``)."""

    global_weight: float = setting(1.0, "1 - cos on the pooled / CLS embedding", range=NON_NEGATIVE)
    patch_weight: float = setting(1.0, "1 - cos on the patch tokens, the student's map resized to the teacher's "
                                  "grid", range=NON_NEGATIVE)


@METHODS.register("distill")
class Distill(Method):
    sections = ("distill", "teacher")
    views = "single"
    backbones = {"student": "student"}
    default_backbone = "student"

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        d = cfg["distill"]
        if not cfg["teacher"]["init"]:  # checked here, not in validate: a preset may leave the teacher to --teacher
            raise ConfigError("method=distill needs a teacher: --teacher SOURCE or --set teacher.init=SOURCE "
                              "(timm:NAME, timm:NAME=FILE, or an mst run / export)")
        channels = int(cfg["data"]["channels"])
        self.student = create_backbone(cfg["model"], channels, drop_path=float(cfg["model"]["drop_path"]))
        self.teacher = build_frozen_teacher(str(cfg["teacher"]["init"]), channels, int(cfg["model"]["img_size"]))
        width = int(self.teacher.embed_dim)
        self.global_map = nn.Linear(int(self.student.embed_dim), width)
        self.patch_map = nn.Linear(int(getattr(self.student, "patch_dim", self.student.embed_dim)), width)
        self.global_weight, self.patch_weight = float(d["global_weight"]), float(d["patch_weight"])
        size = int(cfg["model"]["img_size"])
        try:  # a student too deep for the images (ConvNeXt's stem needs 32 px) is one line, before training
            with torch.no_grad():
                self.student.eval()(torch.zeros(1, channels, size, size))
        except (RuntimeError, ValueError) as e:
            raise ConfigError(f"model.arch={cfg['model']['arch']!r} cannot take {size} px images "
                              f"(model.img_size): {str(e).splitlines()[0][:120]}") from None
        self.student.train()

    @classmethod
    def validate(cls, cfg: dict) -> None:
        if float(cfg["distill"]["global_weight"]) < 0 or float(cfg["distill"]["patch_weight"]) < 0:
            raise ConfigError("distill.global_weight / distill.patch_weight must be >= 0")

    def teacher_targets(self, x: torch.Tensor) -> TeacherPass:
        """The frozen teacher's forward, once per step (eval mode, no grad: :class:`FrozenTeacher`)."""
        return self.teacher(x)

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        x = batch.views[0]
        # 1. The frozen teacher's targets (no grad, eval mode).
        t = self.teacher_targets(x)
        t_cls, t_patches, t_grid = t.cls, t.patches, t.grid
        # 2. The student on the same view; its features mapped to the teacher's width and grid.
        s = self.student(x)
        s_global = self.global_map(s.cls)
        s_patches = self.patch_map(resize_tokens(s.patches, s.grid, t_grid))
        # 3. Cosine distances: the embedding and every patch token.
        loss_global = cosine_distance(s_global, t_cls)
        loss_patch = cosine_distance(s_patches, t_patches)
        loss = self.global_weight * loss_global + self.patch_weight * loss_patch
        return StepOutput(loss, {"loss": loss.item(), "loss_global": loss_global.item(),
                                 "loss_patch": loss_patch.item()})


__all__ = ["Distill", "resize_tokens"]
