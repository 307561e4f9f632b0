"""A frozen pretrained teacher (``teacher.init``): the model a user already holds, guiding another one's training.

It is built once from a SOURCE (the forms of ``--init``: ``timm:NAME``, ``timm:NAME=FILE``, an mst run or export),
fitted to the data's channels and size with timm's tools (:mod:`mst.sources`), kept in eval mode without
gradients, and run once per step on the step's view(s); every consumer reads that one pass (:class:`TeacherPass`):

* ``method: distill``: its CLS / pooled embedding and patch tokens are the student's targets;
* ``mask.importance: frozen`` (MST / DINO, MAE, SimMIM): its last-block CLS attention, resampled to the
  student's token grid (:func:`resample_importance`), is what an attention-guided strategy reads: MST's
  low-attention mask, AttMask-High, AMT's draw (MILAN's and MaskDistill's guide, MST's idea with a teacher that
  already knows images);
* ``mim.target: teacher`` (MAE, SimMIM): its patch tokens, resized to the student's grid (:func:`resize_tokens`)
  and normalised per token, are what the masked tokens are reconstructed as (MaskDistill, MILAN);
* ``mst.frozen_weight`` (MST / DINO): a feature-distillation term beside the EMA teacher's CE (GFM): the student's
  global-view CLS and patch tokens, linearly mapped, towards the frozen teacher's (:func:`cosine_distance`).

On a GPU it runs under bf16 autocast (it is only read, never trained); what it returns is float32.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mst.models.backbones import create_backbone
from mst.registry import ConfigError
from mst.settings import Settings, setting


@dataclass(frozen=True)
class TeacherSettings(Settings, section="teacher"):
    """The frozen teacher, read by every method that can use one."""

    init: str | None = setting(None, "SOURCE of a frozen pretrained teacher (--teacher): timm:NAME | "
                               "timm:NAME=FILE | an mst run or export; read by distill, mask.importance=frozen, "
                               "mim.target=teacher|both, mst.frozen_weight", kind=str, old=("distill.teacher",))


@dataclass
class TeacherPass:
    """One forward of the frozen teacher: (B, D) embedding, (B, n, D) patch tokens on ``grid``, and (B, n) the
    last block's CLS->patch attention when asked for."""

    cls: torch.Tensor
    patches: torch.Tensor
    grid: tuple[int, int]
    attention: torch.Tensor | None = None


class FrozenTeacher(nn.Module):
    """A backbone that stays in eval mode (whatever ``train()`` is asked) and runs without gradients on views
    resized to its own input size (a multiple of its patch)."""

    def __init__(self, backbone: nn.Module, input_size: int) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.input_size = int(input_size)
        self.embed_dim = int(backbone.embed_dim)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, attention: bool = False) -> TeacherPass:
        size = self.input_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
            out = self.backbone(x, return_attention=attention)
        att = out.attention.float() if attention else None
        return TeacherPass(out.cls.float(), out.patches.float(), tuple(out.grid), att)

    def importance(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N) the teacher's CLS attention on ``x``, on the student's token ``grid``."""
        t = self(x, attention=True)
        return resample_importance(t.attention, t.grid, grid)


def build_frozen_teacher(source_text: str, channels: int, img_size: int, key: str = "teacher.init") -> FrozenTeacher:
    """The source's ViT at the data's channels and (a multiple of its patch near) the data's size, with its own
    patch size and its weights fitted by :func:`mst.sources.fit_state`; ``key`` names the setting in errors."""
    from mst.sources import fit_state, load_source

    try:
        source = load_source(source_text)
    except ConfigError as e:  # the same SOURCE rules as --init, named by this key
        raise ConfigError(str(e).replace("model.init=", f"{key}=", 1)) from None
    arch = source.arch()
    patch = arch["patch_size"]
    size = int(img_size)
    if size % patch:
        size = max(patch, size // patch * patch)  # the teacher sees the view resized to a multiple of its patch
    model_cfg = {"arch": arch["arch"].split(".")[0], "embed_dim": arch["embed_dim"], "depth": arch["depth"],
                 "num_heads": arch["num_heads"], "patch_size": patch, "img_size": size}
    backbone = create_backbone(model_cfg, in_chans=int(channels))
    state, _ = fit_state(source, backbone.vit)
    backbone.vit.load_state_dict(state, strict=True)
    return FrozenTeacher(backbone, size)


def teacher_for(cfg: dict, needed: bool) -> FrozenTeacher | None:
    """The config's frozen teacher where a consumer reads it (``needed``), else None."""
    if not needed:
        return None
    return build_frozen_teacher(str(cfg["teacher"]["init"]), int(cfg["data"]["channels"]),
                                int(cfg["model"]["img_size"]))


def check_frozen_source(cfg: dict, source: str | None, readers: dict[str, bool] | None = None) -> None:
    """``mask.importance=frozen`` (or another reader in ``readers``: its setting -> whether it is on) needs
    ``teacher.init``; a teacher nothing reads is named in one warning."""
    on = {"mask.importance='frozen'": source == "frozen", **(readers or {})}
    used = [name for name, yes in on.items() if yes]
    if used and not cfg["teacher"]["init"]:
        raise ConfigError(f"{used[0]} reads a frozen pretrained teacher: set teacher.init=SOURCE (--teacher SOURCE: "
                          "timm:NAME, timm:NAME=FILE, an mst run or export)")
    if not used and cfg["teacher"]["init"]:
        warnings.warn(f"teacher.init is set but method={cfg['method']} reads it only with "
                      f"{' or '.join(n.replace(chr(39), '') for n in on)}: the teacher is not used", stacklevel=3)


def resize_tokens(tokens: torch.Tensor, grid: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """(B, h * w, D) tokens on ``grid`` -> (B, H * W, D) on ``target`` by bilinear interpolation of the map
    (align_corners=False: each token is the centre of its cell)."""
    b, n, d = tokens.shape
    fmap = tokens.transpose(1, 2).reshape(b, d, *grid)
    if tuple(grid) != tuple(target):
        fmap = F.interpolate(fmap, size=target, mode="bilinear", align_corners=False)
    return fmap.flatten(2).transpose(1, 2)


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos over the last dimension: the teacher's direction, not its scale (a CLS token's and patch
    tokens' scales differ, and differ from one pretrained model to the next), with no statistics to estimate."""
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def resample_importance(importance: torch.Tensor, grid: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """(B, h * w) per-token importance on ``grid`` -> (B, H * W) on ``target``: to a coarser grid each token takes
    the mean over the cells it covers (area), to a finer one the bilinear value at its centre
    (align_corners=False); the same grid is returned as is.

    >>> resample_importance(torch.tensor([[1., 3., 5., 7.]]), (2, 2), (1, 1))
    tensor([[4.]])
    """
    if tuple(grid) == tuple(target):
        return importance
    b = importance.shape[0]
    fmap = importance.float().reshape(b, 1, *grid)
    coarser = target[0] <= grid[0] and target[1] <= grid[1]
    if coarser:
        out = F.interpolate(fmap, size=tuple(target), mode="area")
    else:
        out = F.interpolate(fmap, size=tuple(target), mode="bilinear", align_corners=False)
    return out.reshape(b, target[0] * target[1])


__all__ = ["FrozenTeacher", "TeacherPass", "TeacherSettings", "build_frozen_teacher", "check_frozen_source",
           "cosine_distance", "resample_importance", "resize_tokens", "teacher_for"]
