"""What MAE and SimMIM share: config checks of the ``mim`` section, the mask draw, and reconstruction panels."""
from __future__ import annotations

import torch

from mst.masking import MaskResult, build_mask_strategy
from mst.figures import Panel, masked_view, to_display
from mst.models.backbones import BACKBONES
from mst.models.tokens import patchify, unpatchify
from mst.registry import ConfigError


def validate_mim(cfg: dict, drops_tokens: bool) -> None:
    """``mim.mask`` registered, ``mim.mask_ratio`` in [0, 1), ``mim.mask_patch_size`` a multiple of the patch size
    that divides the image; ``drops_tokens``: the method will use the keep contract, which the backbone must
    support."""
    mim, model = cfg["mim"], cfg["model"]
    if drops_tokens and not BACKBONES.get(model["arch"]).drops_tokens:
        raise ConfigError(f"model.arch={model['arch']!r} cannot drop tokens (its windows need the whole grid), which "
                          f"{cfg['method']} does with mim.mask={mim['mask']!r}: use a ViT")
    ratio = float(mim["mask_ratio"])
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"mim.mask_ratio={mim['mask_ratio']} must lie in [0, 1) (1 would hide every token)")
    unit = mim["mask_patch_size"]
    if unit is not None:
        patch, size = int(model["patch_size"]), int(cfg["augment"]["global_size"])
        if int(unit) % patch:
            raise ConfigError(f"mim.mask_patch_size={unit} is not a multiple of model.patch_size={patch}")
        if size % int(unit):
            raise ConfigError(f"mim.mask_patch_size={unit} does not divide the image (augment.global_size={size})")
    build_mask_strategy(mim["mask"], mim, int(model["patch_size"]), "mim.mask")


def draw_mask(strategy, images: torch.Tensor, patch: int, generator) -> MaskResult:
    """The strategy's mask for a batch of images (on the images' device); ``none`` -> nothing hidden."""
    b, _, h, w = images.shape
    grid = (h // patch, w // patch)
    result = strategy(b, grid, None, generator)
    if result is None:
        return MaskResult(mask=torch.zeros(b, grid[0] * grid[1], dtype=torch.bool, device=images.device))
    keep = None if result.keep is None else result.keep.to(images.device)
    return MaskResult(mask=result.mask.to(images.device), keep=keep, candidates=result.candidates)


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


__all__ = ["draw_mask", "reconstruction_panels", "validate_mim"]
