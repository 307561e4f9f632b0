"""AMT (Good helper is around you: Attention-driven Masked Image Modeling, AAAI 2023): masks and throws drawn by
the model's own attention, from maps stored per training image.

* the per-image maps themselves (computing, storing, refreshing them) live beside the methods, in
  :class:`mst.methods.importance.AttentionMaps`; this module stays tensor-to-mask code;
* :func:`normalised_head_mean`: how a map is made from the per-head CLS attention;
* :func:`crop_maps`: the crop box and flip of each image's view applied to its map (box scaled to the map grid,
  resized to the token grid with area averaging, the same flip), so weights sit on the tokens they belong to.
* :class:`AMTMask`: per image, all tokens (or mask units) drawn without replacement with probability
  proportional to their weights (Gumbel-top-k: argsort of log-weight + Gumbel noise is exactly that draw); in
  draw order the first ``mask_ratio`` share is masked, the next ``throw_ratio`` share thrown, the rest visible
  (``order: mask_first``, the reference code's). ``throw_first`` throws first; ``throw_lowest`` throws the
  lowest-weight tokens and draws the masked ones from the rest (the abstract's "redundant patch throwing").
* :class:`AMTSpec`: the draw's settings (ratios, mask unit, order, rounding of the counts), resolved from a config
  and checked once; a method passes its reference ratios in (its class attribute ``amt_reference``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mst.masking.base import MASKS, MaskResult, MaskStrategy, check_importance, gen_device
from mst.registry import ConfigError

ORDERS = ("mask_first", "throw_first", "throw_lowest")
ROUNDINGS = {"floor": math.floor, "ceil": math.ceil}  # MAE's int(); SimMIM's mask generator (ceil)


@dataclass(frozen=True)
class AMTSpec:
    """AMT's draw, resolved and checked once: the validator, the step and the figures all read this one object.

    ``unit``: mask-unit side in tokens; ``rounding``: how the counts of units are rounded (see :meth:`counts`)."""

    mask_ratio: float
    throw_ratio: float
    unit: int = 1
    order: str = "mask_first"
    rounding: str = "floor"

    def __post_init__(self) -> None:
        for key, value in (("amt.mask_ratio", self.mask_ratio), ("amt.throw_ratio", self.throw_ratio)):
            if not 0 <= value < 1:
                raise ConfigError(f"{key}={value} must lie in [0, 1)")
        if self.mask_ratio + self.throw_ratio >= 1:
            raise ConfigError(f"amt.mask_ratio={self.mask_ratio} and amt.throw_ratio={self.throw_ratio} must sum to "
                              "less than 1 (something must stay visible)")
        if self.order not in ORDERS:
            raise ConfigError(f"amt.order={self.order!r} is not one of {', '.join(ORDERS)}")
        if self.rounding not in ROUNDINGS:
            raise ConfigError(f"AMT rounding={self.rounding!r} is not one of {', '.join(ROUNDINGS)}")
        if not isinstance(self.unit, int) or self.unit < 1:
            raise ConfigError(f"AMT mask unit={self.unit} tokens must be a whole number >= 1 (mask.unit)")

    @classmethod
    def from_config(cls, amt, mask, patch_size: int, reference: tuple[float, float] | None, method: str = "",
                    need_reference: bool = True) -> "AMTSpec":
        """The spec of a method's resolved ``amt`` and ``mask`` sections: ``amt.mask_ratio`` / ``amt.throw_ratio``,
        where null the method's ``reference`` ratios (None: the method has none, so no guess); units of
        ``mask.unit``; counts rounded up with ``mask.strategy: blocks`` (SimMIM's reference), else down
        (MAE's). ``need_reference=False`` (checking a config whose AMT is off): a null ratio of a method without a
        reference is not an error (it counts as 0 for the checks). ``method`` names the method in errors."""
        from mst.masking.ratio import mask_unit_tokens

        null = [f"amt.{k}" for k in ("mask_ratio", "throw_ratio") if amt[k] is None]
        if null and reference is None and not need_reference:
            reference = (0.0, 0.0)
        if null and reference is None:
            raise ConfigError(f"{' and '.join(null)} null: method={method!r} has no reference AMT ratios "
                              "(amt_reference) to fill in, so set them")
        mask_ratio = float(reference[0] if amt["mask_ratio"] is None else amt["mask_ratio"])
        throw_ratio = float(reference[1] if amt["throw_ratio"] is None else amt["throw_ratio"])
        try:
            unit = mask_unit_tokens(mask, int(patch_size))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        rounding = "ceil" if mask["strategy"] == "blocks" else "floor"
        return cls(mask_ratio, throw_ratio, unit, amt["order"], rounding)

    def counts(self, n: int) -> tuple[int, int]:
        """(masked, thrown) units of ``n``."""
        round_ = ROUNDINGS[self.rounding]
        n_mask = round_(n * self.mask_ratio)
        return n_mask, round_(n * (self.mask_ratio + self.throw_ratio)) - n_mask


class AMTMask(MaskStrategy):
    """The draw of an :class:`AMTSpec` (built from one, or from its fields, which it checks)."""

    needs_importance = True
    throws = True

    def __init__(self, mask_ratio: float, throw_ratio: float, unit: int = 1, order: str = "mask_first",
                 rounding: str = "floor") -> None:
        self.spec = AMTSpec(float(mask_ratio), float(throw_ratio), int(unit), order, rounding)

    @classmethod
    def from_spec(cls, spec: AMTSpec) -> "AMTMask":
        return cls(spec.mask_ratio, spec.throw_ratio, spec.unit, spec.order, spec.rounding)

    @classmethod
    def from_config(cls, section, patch_size):
        """The registry's way (``mask.strategy: amt``, MST / DINO), from the ``mask`` section: ``ratio`` masked,
        ``throw_ratio`` thrown, units of ``unit`` (optional ``order``, ``rounding``); the MIM methods' AMT plug-in
        goes through :meth:`AMTSpec.from_config`."""
        from mst.masking.ratio import mask_unit_tokens

        optional = {k: section[k] for k in ("order", "rounding") if k in section}
        return cls(section["ratio"], section["throw_ratio"], mask_unit_tokens(section, patch_size), **optional)

    def counts(self, n: int) -> tuple[int, int]:
        """(masked, thrown) units of ``n``."""
        return self.spec.counts(n)

    def __call__(self, batch, grid, importance, generator):
        h, w = grid
        check_importance(importance, batch, h * w, "AMT needs each image's (cropped) attention map as importance")
        u = self.spec.unit
        if h % u or w % u:
            raise ValueError(f"the {h}x{w} token grid is not divisible by the mask unit of {u} tokens")
        weights = importance.float().reshape(batch, h // u, u, w // u, u).sum((2, 4)).flatten(1)  # per unit
        n = weights.shape[1]
        n_mask, n_throw = self.counts(n)
        order = self.draw_order(weights, generator)
        role = torch.zeros(batch, n, dtype=torch.int8, device=weights.device)  # 0 visible, 1 masked, 2 thrown
        if self.spec.order == "mask_first":
            role.scatter_(1, order[:, :n_mask], 1)
            role.scatter_(1, order[:, n_mask:n_mask + n_throw], 2)
        elif self.spec.order == "throw_first":
            role.scatter_(1, order[:, :n_throw], 2)
            role.scatter_(1, order[:, n_throw:n_throw + n_mask], 1)
        else:  # throw_lowest: the n_throw lowest-weight units (ties at random), masked drawn among the rest
            noise = torch.rand(weights.shape, generator=generator, device=gen_device(generator, weights.device))
            lowest = torch.argsort(weights * (1 + 1e-6 * noise.to(weights.device)), dim=1)[:, :n_throw]
            role.scatter_(1, lowest, 2)
            rest = order[role.gather(1, order) == 0][: batch * (n - n_throw)].reshape(batch, n - n_throw)
            role.scatter_(1, rest[:, :n_mask], 1)
        units = role.reshape(batch, h // u, 1, w // u, 1).expand(batch, h // u, u, w // u, u).reshape(batch, h * w)
        return MaskResult(mask=units == 1, keep=units == 0)

    @staticmethod
    def draw_order(weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(B, n) weights >= 0 -> (B, n) indices in the order of a draw without replacement with probability
        proportional to the weights (Gumbel-top-k); zero-weight units come after every positive one, in random order."""
        g = torch.rand(weights.shape, generator=generator, device=gen_device(generator, weights.device))
        gumbel = -torch.log(-torch.log(g.to(weights.device).clamp(1e-20, 1 - 1e-7)))
        keys = torch.where(weights > 0, torch.log(weights.clamp_min(1e-30)), torch.full_like(weights, -1e4)) + gumbel
        return torch.argsort(keys, dim=1, descending=True)


MASKS.register("amt", AMTMask)


def crop_maps(maps: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor | None, grid: tuple[int, int]) -> torch.Tensor:
    """maps (B, h0, w0) over whole images, boxes (B, 4) crop boxes (x0, y0, x1, y1) as fractions of the image,
    flips (B,) bool -> (B, gh * gw) weights on the view's token grid: the box scaled to the map grid, resized to
    the token grid (bilinear with area averaging, as the images), then flipped like the view."""
    from torchvision.ops import roi_align

    b, h0, w0 = maps.shape
    scale = torch.tensor([w0, h0, w0, h0], dtype=torch.float32, device=maps.device)
    rois = torch.cat([torch.arange(b, device=maps.device, dtype=torch.float32)[:, None],
                      boxes.to(maps.device, torch.float32) * scale], dim=1)
    out = roi_align(maps.float()[:, None], rois, output_size=grid, spatial_scale=1.0, sampling_ratio=-1,
                    aligned=True)[:, 0]
    if flips is not None:
        out = torch.where(flips.to(maps.device).view(-1, 1, 1), out.flip(-1), out)
    return out.flatten(1)


def normalised_head_mean(per_head: torch.Tensor) -> torch.Tensor:
    """(B, heads, N) CLS->patch attention -> (B, N): each head min-max normalised over its tokens, then the mean."""
    lo = per_head.amin(dim=-1, keepdim=True)
    hi = per_head.amax(dim=-1, keepdim=True)
    return ((per_head - lo) / (hi - lo).clamp_min(1e-12)).mean(dim=1)


__all__ = ["AMTMask", "AMTSpec", "ORDERS", "crop_maps", "normalised_head_mean"]
