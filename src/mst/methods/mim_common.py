"""What MAE and SimMIM share: config checks of the ``mim``, ``mask`` and ``amt`` sections, which tokens a step hides
(and, with AMT, throws) with the importance from ``mask.importance``, and reconstruction panels."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mst.masking import AMTMask, AMTSpec, MaskResult, build_mask_strategy
from mst.masking.amt import ORDERS
from mst.methods.base import Method
from mst.losses import patch_mse
from mst.methods.frozen import (FrozenTeacher, TeacherPass, check_frozen_source, resample_importance, resize_tokens,
                                teacher_for)
from mst.methods.importance import AttentionMaps, check_source, encoder_importance
from mst.figures import Panel, masked_view, to_display
from mst.models.backbones import BACKBONES
from mst.models.tokens import gather_tokens, patchify, unpatchify
from mst.registry import ConfigError
from mst.settings import Config, AT_LEAST_1, NON_NEGATIVE, RATIO, Settings, setting


@dataclass(frozen=True)
class MIMSettings(Settings, section="mim"):
    """Masked image modelling, shared by MAE and SimMIM (which tokens are hidden: the ``mask`` section)."""

    norm_pix_loss: bool = setting(True, "target = per-patch normalised pixels")
    target: str = setting("pixels", "what the masked tokens are reconstructed as: pixels | teacher (the frozen "
                          "teacher's patch features, each normalised: MaskDistill, MILAN; needs teacher.init) | both "
                          "(pixels + mim.teacher_weight x teacher)", choices=("pixels", "teacher", "both"))
    teacher_weight: float = setting(1.0, "mim.target=both: weight of the teacher-feature term", range=NON_NEGATIVE)
    degradation: str = setting("none", "Beyond Masking (MAE): none | zoom_in | zoom_out | distort | blur | "
                               "decolorize")


@dataclass(frozen=True)
class AMTSettings(Settings, section="amt"):
    """AMT: attention-driven masking and throwing, an option of MAE and SimMIM."""

    enabled: bool = setting(False, "masks and throws follow the attention maps from amt.start on")
    mask_ratio: float | None = setting(None, "null: the method's reference (MAE 0.45, SimMIM 0.44 of the units)",
                                       kind=float, range=RATIO)
    throw_ratio: float | None = setting(None, "null: MAE 0.40, SimMIM 0.26", kind=float, range=RATIO)
    start: int = setting(40, "epoch from which masks follow the maps (plain mask.strategy before); the first refresh",
                         range=NON_NEGATIVE)
    interval: int = setting(40, "epochs between refreshes of the maps", range=AT_LEAST_1)
    order: str = setting("mask_first", "mask_first (reference) | throw_first | throw_lowest", choices=ORDERS)
    batch_size: int = setting(256, "images per batch of the refresh pass", range=AT_LEAST_1)


# the mask section's defaults for masked image modelling (MST's are the section's own): MAE's share of patches,
# no importance unless asked for (null: AMT's maps when amt.enabled); MAE's and SimMIM's changed_defaults
MIM_MASK = {"strategy": "patches", "ratio": 0.75, "importance": None}


class MIMMethod(Method):
    """What MAE and SimMIM have in common: one single-view encoder, which evaluation and export use, on a patch
    grid of img_size / patch_size."""
    views = "single"
    backbones = {"encoder": "encoder"}
    default_backbone = "encoder"
    importance_sources = ("encoder", "maps", "frozen")

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        self.channels, self.patch = int(cfg["data"]["channels"]), int(cfg["model"]["patch_size"])
        self.grid = (int(cfg["model"]["img_size"]) // self.patch,) * 2
        self.frozen = self.teacher_head = None  # set by attach_teacher, where a frozen teacher is read

    def attach_teacher(self, cfg: dict, width: int) -> None:
        """The frozen teacher (after every trained module, so a run with one starts from the same weights as a run
        without), where the mask reads its attention or ``mim.target`` its features; with a target, the head from
        the method's ``width``-wide tokens to the teacher's features."""
        target = cfg["mim"]["target"]
        self.frozen = teacher_for(cfg, self.masking.reads_frozen or target != "pixels")
        if target != "pixels":
            self.teacher_head = nn.Linear(width, self.frozen.embed_dim)

    def frozen_pass(self, x: torch.Tensor) -> TeacherPass | None:
        """The frozen teacher's one pass of the step on the clean view (its attention where the mask reads it)."""
        return None if self.frozen is None else self.frozen(x, attention=self.masking.reads_frozen)

    def teacher_loss(self, tokens: torch.Tensor, t: TeacherPass, index: torch.Tensor | None,
                     masked: torch.Tensor) -> torch.Tensor:
        """MSE between the head on ``tokens`` (B, M, width) and the teacher's patch features resized to the
        student's grid (bilinear) and normalised per token (as norm_pix_loss normalises a patch), taken at
        ``index`` (B, M) (None: every token), averaged over the ``masked`` ones (B, M)."""
        target = resize_tokens(t.patches, t.grid, self.grid)
        if index is not None:
            target = gather_tokens(target, index)
        return patch_mse(self.teacher_head(tokens), target, masked, norm_pix=True)


def validate_mim(cfg: dict, drops_tokens: bool) -> None:
    """``mask.strategy`` registered, ``mask.unit`` a multiple of the patch size that divides the image, the
    importance source one the method can give; ``drops_tokens``: the method will use the keep contract, which the
    backbone must support."""
    k, model = cfg["mask"], cfg["model"]
    if cfg["amt"]["enabled"] and not BACKBONES.get(model["arch"]).drops_tokens:
        raise ConfigError(f"AMT throws tokens away and reads a CLS attention: model.arch={model['arch']!r} can "
                          "do neither (a ViT can)")
    if drops_tokens and not BACKBONES.get(model["arch"]).drops_tokens:
        raise ConfigError(f"model.arch={model['arch']!r} cannot drop tokens (Swin's windows and a CNN's feature "
                          f"map need the whole grid), which {cfg['method']} does with mask.strategy={k['strategy']!r}: "
                          "use a ViT")
    unit = k["unit"]
    if unit is not None:
        patch, size = int(model["patch_size"]), int(cfg["model"]["img_size"])
        if int(unit) % patch:
            raise ConfigError(f"mask.unit={unit} is not a multiple of model.patch_size={patch}")
        if size % int(unit):
            raise ConfigError(f"mask.unit={unit} does not divide the image (model.img_size={size})")
    if k["strategy"] == "amt":
        raise ConfigError(f"mask.strategy='amt' is not a masking of its own in {cfg['method']}: set amt.enabled=true "
                          "(AMT takes over from mask.strategy at amt.start, once the attention maps exist)")
    build_mask_strategy(k["strategy"], k, int(model["patch_size"]))
    source = mim_source(cfg)
    needs = [("mask.strategy", k["strategy"])] + ([("amt.enabled", "amt")] if cfg["amt"]["enabled"] else [])
    check_source(cfg["method"], MIMMethod.importance_sources, "mask.importance", source, needs)
    target = cfg["mim"]["target"]
    check_frozen_source(cfg, source, {f"mim.target={target!r}" if target != "pixels" else "mim.target=teacher|both":
                                      target != "pixels"})
    if target != "pixels" and cfg["mim"]["degradation"] != "none":
        raise ConfigError(f"mim.target={target!r} and mim.degradation={cfg['mim']['degradation']!r} do not combine: "
                          "the teacher's features are of the clean view, the degradation's target is its own")
    if source == "maps" and not cfg["amt"]["enabled"]:
        raise ConfigError("mask.importance='maps' reads AMT's stored per-image maps, which exist only with "
                          "amt.enabled=true: set it, or take mask.importance=encoder")
    # AMT's ratios (null: the method's reference), order and units are checked there alone, also while AMT is off,
    # so a bad value in a preset is named before someone turns AMT on
    amt_spec(cfg, need_reference=bool(cfg["amt"]["enabled"]))
    if cfg["amt"]["enabled"] and cfg["augment"]["rand_augment"] and source == "maps":
        raise ConfigError("augment.rand_augment moves pixels within the crop, so AMT's maps would no longer "
                          "follow the view: leave it off for AMT")


def amt_spec(cfg: dict, need_reference: bool = True) -> AMTSpec:
    """AMT's draw for ``cfg``'s method: its sections and its reference ratios (``amt_reference``), resolved by
    :meth:`AMTSpec.from_config`, the one place that does it (the validator, the step and the figures agree)."""
    from mst.methods.base import METHODS

    method = cfg["method"]
    reference = getattr(METHODS.get(method), "amt_reference", None) if method in METHODS else None
    return AMTSpec.from_config(cfg["amt"], cfg["mask"], int(cfg["model"]["patch_size"]), reference, method,
                               need_reference)


def mim_source(cfg: dict) -> str:
    """``mask.importance``; null: AMT's stored maps when amt.enabled, else none (the settings before it existed)."""
    source = cfg["mask"]["importance"]
    if source is None:
        return "maps" if cfg["amt"]["enabled"] else "none"
    return source


def uneven_counts(name: str, section: dict, patch_size: int, grid: tuple[int, int]) -> bool:
    """Whether strategy ``name`` hides a different number of tokens in different images (a fixed probe draw of 8
    images, random importance), which a method batching the visible tokens (MAE) cannot take."""
    g = torch.Generator().manual_seed(0)
    n = grid[0] * grid[1]
    result = build_mask_strategy(name, section, patch_size)(8, grid, torch.rand(8, n, generator=g), g)
    if result is None:
        return False
    keep = result.keep if result.keep is not None else ~result.mask
    return bool((keep.sum(1) != keep.sum(1)[0]).any())


class MIMMasking(nn.Module):
    """Which tokens a MIM step hides: ``mask.strategy``; with ``amt.enabled``, from epoch ``amt.start`` on, AMT's
    draw (which also throws tokens away). A strategy that needs an importance reads it from ``mask.importance``: AMT's
    stored maps (owned here, saved with the method, refreshed every ``amt.interval`` epochs from ``amt.start``) or
    the encoder's attention in a no-grad pass."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.settings, self.patch = Config.of(cfg), int(cfg["model"]["patch_size"])
        self.random = build_mask_strategy(cfg["mask"]["strategy"], cfg["mask"], self.patch)
        self.source = mim_source(cfg)
        self.amt = self.maps = None
        if cfg["amt"]["enabled"]:
            self.amt = AMTMask.from_spec(amt_spec(cfg))
        if self.source == "maps":
            self.maps = AttentionMaps((int(cfg["model"]["img_size"]) // self.patch,) * 2)
        # mask.importance=frozen: the method passes the frozen teacher's pass of the step in (MIMMethod.frozen_pass)
        self.reads_frozen = self.source == "frozen" and (self.random.needs_importance or self.amt is not None)

    def active(self, epoch: int) -> bool:
        return self.amt is not None and epoch >= int(self.settings.amt.start)

    def forward(self, batch, epoch: int, generator=None, encoder: nn.Module | None = None,
                frozen: TeacherPass | None = None) -> MaskResult:
        """The step's mask (and keep) for ``batch.views[0]``; ``encoder`` gives the importance of source encoder,
        ``frozen`` (the frozen teacher's pass on the view) that of source frozen."""
        x = batch.views[0]
        strategy = self.amt if self.active(epoch) else self.random
        importance = self.importance(batch, encoder, frozen) if strategy.needs_importance else None
        return draw_mask(strategy, x, self.patch, generator, importance)

    def importance(self, batch, encoder: nn.Module | None, frozen: TeacherPass | None = None) -> torch.Tensor:
        """(B, N) importance of the batch's view from ``mask.importance``."""
        x = batch.views[0]
        b, _, h, w = x.shape
        grid = (h // self.patch, w // self.patch)
        if self.source == "maps":
            boxes = batch.boxes if batch.boxes is not None else x.new_tensor([[0.0, 0.0, 1.0, 1.0]]).expand(b, 4)
            return self.maps.weights(batch.index, boxes, batch.flips, grid)
        if self.source == "encoder":
            return encoder_importance(encoder, x)
        if self.source == "frozen":
            return resample_importance(frozen.attention, frozen.grid, grid)
        raise ValueError(f"mask.importance={self.source!r} gives no per-token importance")

    def on_epoch_start(self, epoch: int, encoder: nn.Module, data) -> dict[str, float]:
        """Refresh the maps at amt.start, amt.start + interval, ... (once per epoch, also after a resume)."""
        if self.maps is None:
            return {}
        a = self.settings.amt
        self.maps.bind(len(data.dataset))
        due = epoch >= int(a["start"]) and (epoch - int(a["start"])) % int(a["interval"]) == 0
        if not due or self.maps.refreshed_epoch == epoch:
            return {}
        d = self.settings.data
        stats = self.maps.refresh(encoder, data.dataset, int(self.settings.model.img_size), d["mean"], d["std"],
                                  epoch, data.device, int(a["batch_size"]), data.rank, data.world_size)
        data.log(f"AMT: attention maps of {len(self.maps.maps)} images refreshed at epoch {epoch} in "
                 f"{stats['amt_refresh_s']:.1f} s ({stats['amt_buffer_mb']:.1f} MB, uint8)")
        return stats


@torch.no_grad()
def amt_view(masking: MIMMasking, encoder: nn.Module, images: torch.Tensor, generator: torch.Generator):
    """For figures of an AMT run: each image's attention map (computed now, as a refresh would), a random crop
    box and flip (the preset's RandomResizedCrop) applied to the image *and* its map, and AMT's draw on the cropped
    map. Returns (cropped views, MaskResult, per image [map panel, cropped-map panel])."""
    from mst.data.image_ops import RATIO, crop_resize, sample_crop_boxes
    from mst.masking import crop_maps, normalised_head_mean

    b, c, h, w = images.shape
    patch, a = masking.patch, masking.settings.augment
    grid = (h // patch, w // patch)
    att = encoder(images, return_attention=True, per_head=True).attention
    maps = normalised_head_mean(att.float()).reshape(b, *grid).cpu()
    size = torch.full((b,), h, dtype=torch.float64)
    boxes = sample_crop_boxes(size, torch.full((b,), w, dtype=torch.float64), a["global_scale"], RATIO, generator)
    flips = torch.rand(b, generator=generator) < float(a["flip_p"])
    views = crop_resize(images.cpu().float(), boxes, h)
    views = torch.where(flips.view(-1, 1, 1, 1), views.flip(-1), views).to(images.device)
    fractions = boxes / torch.tensor([w, h, w, h], dtype=boxes.dtype)
    cropped = crop_maps(maps, fractions, flips, grid)
    result = masking.amt(b, grid, cropped, generator)
    up = lambda m: torch.nn.functional.interpolate(m.reshape(1, 1, *grid), size=(h, w))[0, 0].numpy()  # noqa: E731
    extra = [[Panel("attention map (whole image)", up(maps[i]), "inferno"),
              Panel("map of the crop" + (", flipped" if flips[i] else ""), up(cropped[i]), "inferno")]
             for i in range(b)]
    return views, MaskResult(mask=result.mask.to(images.device), keep=result.keep.to(images.device)), extra


def figure_mask(masking: MIMMasking, encoder: nn.Module, images: torch.Tensor, generator,
                frozen: FrozenTeacher | None = None):
    """The views, mask and extra panels a method's figure shows: AMT's (:func:`amt_view`) when it is on, else
    the images themselves with ``mask.strategy``'s draw (importance: the encoder's) and no extra panel."""
    if masking.amt is not None:
        return amt_view(masking, encoder, images, generator or torch.Generator())
    importance = None
    if masking.random.needs_importance:
        grid = (images.shape[-2] // masking.patch, images.shape[-1] // masking.patch)
        importance = (frozen.importance(images, grid) if masking.source == "frozen"
                      else encoder_importance(encoder, images))
    return images, draw_mask(masking.random, images, masking.patch, generator, importance), [[] for _ in images]


def draw_mask(strategy, images: torch.Tensor, patch: int, generator,
              importance: torch.Tensor | None = None) -> MaskResult:
    """The strategy's mask for a batch of images (on the images' device), drawn with ``importance`` (B, N) where
    the strategy needs one; ``none`` -> nothing hidden."""
    b, _, h, w = images.shape
    grid = (h // patch, w // patch)
    result = strategy(b, grid, importance, generator)
    if result is None:
        return MaskResult(mask=torch.zeros(b, grid[0] * grid[1], dtype=torch.bool, device=images.device))
    keep = None if result.keep is None else result.keep.to(images.device)
    return MaskResult(mask=result.mask.to(images.device), keep=keep, candidates=result.candidates)


def masked_panels(images: torch.Tensor, result: MaskResult, grid: tuple[int, int], mean, std) -> list[list[Panel]]:
    """Per image the encoder's input alone (masked grey, thrown black): a method with no pixel prediction."""
    return [[Panel(f"masked {int(result.mask[i].sum())}", masked_view(to_display(images[i], mean, std), result.mask[i],
                                                                      grid, thrown=result.thrown[i]), None)]
            for i in range(len(images))]


def reconstruction_panels(images: torch.Tensor, result: MaskResult, pred_patches: torch.Tensor, patch: int,
                          norm_pix: bool, mean, std) -> list[list[Panel]]:
    """Per image: the encoder's input (masked grey, thrown black), the prediction, and the prediction pasted into
    the masked tokens of the input (MAE's figure). ``pred_patches`` (B, N, P) at every position; with
    ``norm_pix`` the prediction is brought back to pixels with each target patch's own mean and std."""
    b, c, h, w = images.shape
    grid = (h // patch, w // patch)
    target = patchify(images.float(), patch)
    pred = pred_patches.float()
    if norm_pix:
        mu, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mu
    recon = unpatchify(pred, patch, grid, c)
    m = result.mask.reshape(b, 1, *grid).float()
    pasted_mask = m.repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    pasted = images * (1 - pasted_mask) + recon * pasted_mask
    thrown = result.thrown
    rows = []
    for i in range(b):
        img = to_display(images[i], mean, std)
        n_mask, n_thrown = int(result.mask[i].sum()), int(thrown[i].sum())
        title = f"masked {n_mask}" + (f", thrown {n_thrown}" if n_thrown else "")
        rows.append([
            Panel(title, masked_view(img, result.mask[i], grid, thrown=thrown[i]), None),
            Panel("reconstruction", to_display(recon[i], mean, std)),
            Panel("reconstruction + visible", to_display(pasted[i], mean, std)),
        ])
    return rows


__all__ = ["draw_mask", "masked_panels", "mim_source", "reconstruction_panels", "uneven_counts", "validate_mim"]
