"""What figures are made of, without plotting: :class:`Panel` (a titled picture a method contributes to
``mst visualize``), a normalised image back to [0, 1], tokens drawn on an image."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


@dataclass
class Panel:
    """One picture of a figure: an image (H, W) or (H, W, 3) in [0, 1]; ``cmap`` for single-channel images."""

    title: str
    image: np.ndarray
    cmap: str | None = "gray"


def to_display(img: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised (C, H, W) -> (H, W) for one channel or (H, W, 3), de-normalised and clipped to [0, 1].

    Multiband images show their first three bands as a false-colour composite, and they and data far outside
    [0, 1] (DICOM in modality units) are stretched band by band between their 2nd and 98th percentiles."""
    m = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
    arr = (img.detach().float().cpu() * s + m).permute(1, 2, 0).numpy()
    if arr.shape[-1] not in (1, 3) or arr.min() < -2 or arr.max() > 3:
        arr = arr[..., :3] if arr.shape[-1] >= 3 else arr[..., :1]
        lo, hi = np.percentile(arr, 2, axis=(0, 1)), np.percentile(arr, 98, axis=(0, 1))
        arr = (arr - lo) / np.maximum(hi - lo, 1e-12)
    arr = np.clip(arr, 0, 1)
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def _upsample(tokens: torch.Tensor | np.ndarray, grid: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    m = np.asarray(tokens.cpu() if torch.is_tensor(tokens) else tokens, dtype=bool).reshape(grid)
    ph, pw = shape[0] // grid[0], shape[1] // grid[1]
    return np.kron(m, np.ones((ph, pw), dtype=bool))


def masked_view(img: np.ndarray, mask, grid: tuple[int, int], candidates=None, thrown=None) -> np.ndarray:
    """The display image as RGB with masked tokens grey, thrown tokens black and (optionally) candidates that were
    not masked tinted red. ``mask`` / ``candidates`` / ``thrown``: (N,) bool over the token grid."""
    out = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img.copy()
    shape = out.shape[:2]
    if candidates is not None:
        c = _upsample(candidates, grid, shape) & ~_upsample(mask, grid, shape)
        out[c] = 0.6 * out[c] + 0.4 * np.array([1.0, 0.0, 0.0])
    out[_upsample(mask, grid, shape)] = 0.5
    if thrown is not None:
        out[_upsample(thrown, grid, shape)] = 0.0
    return out
