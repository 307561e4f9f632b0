"""Where a mask strategy's per-token importance comes from: a registry of sources beside the strategies.

A strategy says whether it needs an importance (``MaskStrategy.needs_importance``); a method says which sources it
can give (``Method.importance_sources``) and reads the one configured (``mask.importance``):

* ``teacher`` (MST / DINO): the EMA teacher's last-block CLS attention, from the same pass that makes the DINO
  targets, on the same global views (MST eq. 4): no extra work;
* ``maps`` (AMT): each training image's stored map (:class:`AttentionMaps`), refreshed every ``amt.interval``
  epochs, cropped and flipped like the view;
* ``encoder`` (MAE / SimMIM): the current encoder's CLS attention in a no-grad eval pass over the view before
  masking (one extra forward pass without gradients per step).
* ``frozen`` (every method that masks): a frozen pretrained teacher's (``teacher.init``) last-block CLS attention
  on the same view, resampled to the token grid (:mod:`mst.methods.frozen`; one pass of the teacher per step).

``none`` is no source: a strategy that needs an importance is then refused when the config is read. The model-
running parts live here, beside the methods, so :mod:`mst.masking` stays tensor-to-mask code.
"""
from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist
from torch import nn

from mst.masking import MASKS
from mst.masking.amt import crop_maps, normalised_head_mean
from mst.registry import ConfigError, Registry

IMPORTANCE: Registry[str] = Registry("importance source", "importance")
IMPORTANCE.register("none", "no importance (strategies that need one are refused)")
IMPORTANCE.register("teacher", "the EMA teacher's CLS attention from the same pass on the same global views")
IMPORTANCE.register("maps", "AMT's stored per-image maps, cropped and flipped like each view")
IMPORTANCE.register("encoder", "the current encoder's CLS attention in a no-grad eval pass on the view")
IMPORTANCE.register("frozen", "a frozen pretrained teacher's (teacher.init) CLS attention on the same view, "
                              "resampled to the token grid")


def check_source(method: str, sources: tuple[str, ...], key: str, source: str, needs: list[tuple[str, str]]) -> None:
    """One-line ConfigErrors: ``source`` (the value of ``key``) unknown or not one ``method`` can give (``sources``),
    or none while a strategy in ``needs`` ((its config key, its name)) needs an importance."""
    IMPORTANCE.get(source, key)
    if source != "none" and source not in sources:
        raise ConfigError(f"{key}={source!r}: method={method!r} can take a per-token importance only from "
                          f"{' or '.join(sources)} (or none)")
    if source == "none":
        for strategy_key, name in needs:
            if MASKS.get(name, strategy_key).needs_importance:
                raise ConfigError(f"{strategy_key}={name!r} needs a per-token importance but {key} is none: set {key} "
                                  f"to {' or '.join(sources)}")


@torch.no_grad()
def encoder_importance(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, N) last-block CLS->patch attention of ``backbone`` on ``x``, in eval mode (no drop path) without
    gradients, so the importance is the model's current view of the image and costs no backward."""
    was_training = backbone.training
    backbone.eval()
    try:
        return backbone(x, return_attention=True).attention.float()
    finally:
        backbone.train(was_training)


class AttentionMaps(nn.Module):
    """AMT's per-image maps: one (h, w) map per training image, the last block's CLS->patch attention of the model
    being trained, min-max normalised per head, averaged over heads, computed without gradients in eval mode over
    the whole un-cropped training set (each image resized to the input size). Stored as uint8 (value x 255,
    rounded): the maps are in [0, 1] and only their relative size matters for sampling, so 1/255 steps lose
    nothing that matters, and ImageNet's 1.28 M maps of 14 x 14 take 251 MB (float32: 1 GB) on every process.
    Saved with the checkpoint (as extra state: DDP does not broadcast it every step). ``refreshed_epoch`` is the
    epoch of the last refresh (-1: never; the maps are then ones, as the reference initialises them)."""

    def __init__(self, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        self.maps = torch.zeros((0, *self.grid), dtype=torch.uint8)  # sized by bind() to the training set
        self.refreshed_epoch = -1

    def bind(self, n_images: int) -> None:
        """Size the buffer for a training set of ``n_images`` (ones: uniform weights until the first refresh); a
        buffer loaded from a checkpoint must already have that size."""
        if len(self.maps) == 0:
            self.maps = torch.full((int(n_images), *self.grid), 255, dtype=torch.uint8)
        elif len(self.maps) != n_images:
            from mst.registry import ConfigError

            raise ConfigError(f"the checkpoint's AMT attention buffer holds maps of {len(self.maps)} images but the "
                              f"training set has {n_images}: the data changed since the buffer was filled; resume on "
                              "the same data (or start a new run)")

    def get_extra_state(self) -> dict:
        return {"maps": self.maps, "refreshed_epoch": self.refreshed_epoch}

    def set_extra_state(self, state: dict) -> None:
        maps = state["maps"]
        if tuple(maps.shape[1:]) != self.grid:
            raise ValueError(f"the checkpoint's AMT maps are {tuple(maps.shape[1:])}, not the {self.grid} token grid")
        self.maps = maps.to(torch.uint8).cpu()
        self.refreshed_epoch = int(state["refreshed_epoch"])

    def weights(self, index: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor | None,
                grid: tuple[int, int]) -> torch.Tensor:
        """(B, N) weights on the token grid of a batch's views (``index``: dataset positions)."""
        maps = self.maps[index.cpu()].to(boxes.device, torch.float32) / 255.0
        return crop_maps(maps, boxes, flips, grid)

    @torch.no_grad()
    def refresh(self, backbone: nn.Module, dataset, size: int, mean, std, epoch: int, device: torch.device,
                batch_size: int = 256, rank: int = 0, world_size: int = 1) -> dict[str, float]:
        """Recompute every map with ``backbone`` (eval mode, no gradients) over ``dataset`` ((PIL, label) pairs),
        each image resized to ``size`` x ``size`` and normalised; ranks share the images and all-gather the maps.
        Returns its cost for the logs (seconds, buffer MB)."""
        from mst.data.image_ops import crop_resize, eight_bit, normalize, prepare_images
        from mst.data.tensor_multicrop import RawImageDataset, collate_raw

        t0 = time.perf_counter()
        was_training = backbone.training
        backbone.eval()
        n = len(self.maps)
        per_rank = math.ceil(n / world_size)
        mine = list(range(rank * per_rank, min(n, (rank + 1) * per_rank)))
        raw = RawImageDataset(dataset, len(mean))
        out = torch.zeros((per_rank, *self.grid), dtype=torch.uint8)
        try:
            for start in range(0, len(mine), batch_size):
                chunk = mine[start:start + batch_size]
                images, _ = collate_raw(raw.__getitems__(chunk))
                images = images.to(device) if torch.is_tensor(images) else [im.to(device) for im in images]
                unit = eight_bit(images)
                x, hs, ws = prepare_images(images, len(mean))
                full = torch.stack([torch.zeros_like(ws), torch.zeros_like(hs), ws, hs], dim=1).float()
                x = normalize(crop_resize(x, full, size, clamp=unit), mean, std)  # the whole image, resized
                att = backbone(x, return_attention=True, per_head=True).attention  # (B, heads, N)
                maps = normalised_head_mean(att.float()).reshape(len(chunk), *self.grid)
                out[start:start + len(chunk)] = torch.round(maps * 255).to(torch.uint8).cpu()
        finally:
            backbone.train(was_training)
        if world_size > 1 and dist.is_initialized():
            gathered = [torch.zeros_like(out, device=device) for _ in range(world_size)]
            dist.all_gather(gathered, out.to(device))
            out = torch.cat([g.cpu() for g in gathered])
        self.maps = out[:n].contiguous()
        self.refreshed_epoch = int(epoch)
        return {"amt_refresh_s": time.perf_counter() - t0, "amt_buffer_mb": self.maps.numel() / 2**20}


__all__ = ["IMPORTANCE", "AttentionMaps", "check_source", "encoder_importance"]
