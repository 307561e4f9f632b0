"""What every mask strategy returns, and the registry that ``mst.mask`` / ``mim.mask`` select from.

A strategy maps (batch size, token grid, optional per-token importance, generator) to a :class:`MaskResult`:

* ``mask`` marks tokens the method hides and (for MIM) reconstructs: MST and SimMIM replace them with [MASK]
  before the position embeddings; MAE leaves them out of the encoder and puts its decoder's mask token there;
* ``keep`` (optional; None = every token not masked) marks the *visible* tokens. Tokens neither masked nor kept
  are *thrown* (AMT): they leave the encoder, the decoder and the loss. A strategy that throws says so with
  ``throws = True``, so a method that cannot drop tokens (MST, Swin) refuses it when the config is read.

Register a strategy class with ``MASKS.register(name, cls)``; ``cls.from_config(section, patch_size)`` builds it
from the config section of the method using it (``mst`` or ``mim``) and the backbone's patch size.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
import torch

from mst.registry import ConfigError, Registry


@dataclass
class MaskResult:
    mask: torch.Tensor  # (B, N) bool: True = hidden ([MASK] / reconstructed)
    keep: torch.Tensor | None = None  # (B, N) bool: True = visible; None = every token not masked
    candidates: torch.Tensor | None = None  # (B, N) bool: tokens that were allowed to be masked (for figures)

    @property
    def thrown(self) -> torch.Tensor:
        """(B, N) bool: tokens that neither enter the encoder nor are reconstructed."""
        if self.keep is None:
            return torch.zeros_like(self.mask)
        return ~self.keep & ~self.mask


class MaskStrategy(abc.ABC):
    """Base class. ``needs_importance``: the method must pass a (B, N) importance (attention); ``throws``: some
    tokens are neither masked nor kept (``keep`` is given and smaller than the unmasked tokens)."""

    needs_importance = False
    throws = False

    @classmethod
    def from_config(cls, section: dict, patch_size: int) -> "MaskStrategy":
        """Build from a method's config section (read the keys the strategy needs)."""
        return cls()

    @abc.abstractmethod
    def __call__(
        self, batch: int, grid: tuple[int, int], importance: torch.Tensor | None, generator: torch.Generator | None
    ) -> MaskResult | None:
        """The mask for ``batch`` images on a ``grid`` of tokens, or None for "no masking"."""


def check_ratio(ratio) -> float:
    """A share of tokens or units to mask, as a float in [0, 1) (a ValueError otherwise)."""
    if not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"mask ratio {ratio} must lie in [0, 1)")
    return float(ratio)


def check_importance(importance: torch.Tensor | None, batch: int, n: int, missing: str) -> None:
    """A strategy that reads attention got one value per token of each image (``missing``: the error without)."""
    if importance is None:
        raise ValueError(missing)
    if importance.shape != (batch, n):
        raise ValueError(f"importance shape {tuple(importance.shape)} != ({batch}, {n})")


def gen_device(generator: torch.Generator | None, fallback) -> torch.device:
    """Random numbers are drawn on the generator's device (so a CPU generator gives the same draws everywhere)."""
    return generator.device if generator is not None else torch.device(fallback)


MASKS: Registry[type[MaskStrategy]] = Registry("mask strategy", "mask")


def build_mask_strategy(name: str, section: dict, patch_size: int, key: str = "mask") -> MaskStrategy:
    """``MASKS[name].from_config(section, patch_size)``; ``key`` (e.g. "mst.mask") names the setting in errors, and a
    key the strategy needs but ``section`` lacks is a clear error too."""
    cls = MASKS.get(name, key)
    try:
        return cls.from_config(section, patch_size)
    except KeyError as e:
        raise ConfigError(f"mask strategy {name!r} needs the config key {e.args[0]!r}, which this method's section "
                          f"does not have ({', '.join(sorted(section))}): choose another {key}") from None
