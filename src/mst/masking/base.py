"""What every mask strategy returns, and the registry that ``mask.strategy`` selects from.

A strategy maps (batch size, token grid, optional per-token importance, generator) to a :class:`MaskResult`:

* ``mask`` marks tokens the method hides and (for MIM) reconstructs: MST and SimMIM replace them with [MASK]
  before the position embeddings; MAE leaves them out of the encoder and puts its decoder's mask token there;
* ``keep`` (optional; None = every token not masked) marks the *visible* tokens. Tokens neither masked nor kept
  are *thrown* (AMT): they leave the encoder, the decoder and the loss. A strategy that throws says so with
  ``throws = True``, so a method that cannot drop tokens (MST, Swin) refuses it when the config is read.

Register a strategy class with ``MASKS.register(name, cls)``; ``cls.from_config(section, patch_size)`` builds it
from the resolved ``mask`` section (:class:`mst.masking.settings.MaskSettings`) and the backbone's patch size. A
key of its own is declared on the class (``settings``), so a new strategy with a new setting is one file.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import torch

from mst.masking.settings import MaskSettings  # noqa: F401  (declares the mask section)
from mst.registry import ConfigError, Registry
from mst.settings import Spec, declare


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
    tokens are neither masked nor kept (``keep`` is given and smaller than the unmasked tokens). ``settings``: keys
    of its own in the ``mask`` section, each with its :class:`~mst.settings.Spec`, declared when the class is."""

    needs_importance = False
    throws = False
    settings: ClassVar[dict[str, Spec]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        declare("mask", cls.__dict__.get("settings", {}), f"{cls.__module__}.{cls.__qualname__}")

    @classmethod
    def from_config(cls, section, patch_size: int) -> "MaskStrategy":
        """Build from the resolved ``mask`` section (read the keys the strategy needs)."""
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


def build_mask_strategy(name: str, section, patch_size: int, key: str = "mask.strategy") -> MaskStrategy:
    """``MASKS[name].from_config(section, patch_size)``; ``key`` names the setting in errors, and a key the strategy
    reads but nobody declared is a clear error too (declare it in the strategy's ``settings``)."""
    cls = MASKS.get(name, key)
    try:
        return cls.from_config(section, patch_size)
    except KeyError as e:
        raise ConfigError(f"mask strategy {name!r} reads mask.{e.args[0]}, which no strategy declares (the mask "
                          f"section has {', '.join(sorted(section.keys()))}): declare it in {cls.__name__}.settings, "
                          f"or choose another {key}") from None
