"""Beyond Masking's degradations (Jiao et al., arXiv 2203.14313): instead of (or besides) masking, degrade the
image and reconstruct the clean one. A degradation takes a batch of clean normalised views and returns a
:class:`Degraded`: the encoder's input, the clean target, and what the loss needs beyond a per-token comparison
(a geometric mapping from the target's frame into the input's, or a loss of its own, as zoom-in's).

Register one with ``DEGRADATIONS.register(name, cls)``; ``cls.from_config(section)`` reads the ``degrade`` section;
select it with ``mim.degradation`` (MAE).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from mst.registry import ConfigError, Registry
from mst.settings import Spec, declare


@dataclass
class Degraded:
    input: torch.Tensor  # (B, C_in, H, W) what the encoder sees (before masking)
    target: torch.Tensor  # (B, C, H, W) the clean image the reconstruction is compared with, in its own frame
    to_input_frame: Callable[[torch.Tensor], torch.Tensor] | None = None  # target frame -> input frame (zoom-out)
    # a loss of its own: (prediction as an image (B, C, S, S) on the input's grid, hidden tokens (B, N), patch,
    # norm_pix) -> scalar; None: the per-token loss of mst.methods.mae.degraded_loss
    loss: Callable[[torch.Tensor, torch.Tensor, int, bool], torch.Tensor] | None = None


class Degradation(abc.ABC):
    """``input_channels(c)``: how many channels the encoder takes for c-channel data (de-colourise: 1).
    ``settings``: the keys this degradation reads from the shared ``degrade`` config section, each with its
    :class:`~mst.settings.Spec` (``make_spec(default, doc)``), registered when the class is defined."""

    settings: ClassVar[dict[str, Spec]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        declare("degrade", cls.__dict__.get("settings", {}), f"{cls.__module__}.{cls.__qualname__}")

    @classmethod
    def from_config(cls, section: dict) -> "Degradation":
        return cls()

    def input_channels(self, channels: int) -> int:
        return channels

    def check(self, channels: int, size: int, patch: int) -> None:
        """Raise ValueError naming the setting when the degradation cannot work on such data."""

    def view_size(self, size: int) -> int:
        """The side of the clean view the pipeline crops for an encoder input of ``size`` px (zoom-in: larger)."""
        return size

    @abc.abstractmethod
    def __call__(self, images: torch.Tensor, generator: torch.Generator | None) -> Degraded:
        """Degrade a batch of clean normalised views (B, C, H, W)."""


class NoDegradation(Degradation):
    def __call__(self, images, generator):
        return Degraded(input=images, target=images)


DEGRADATIONS: Registry[type[Degradation]] = Registry("degradation", "mim.degradation")
DEGRADATIONS.register("none", NoDegradation)


def build_degradation(name: str, section: dict) -> Degradation:
    cls = DEGRADATIONS.get(name, "mim.degradation")
    try:
        return cls.from_config(section)
    except KeyError as e:
        raise ConfigError(f"degradation {name!r} needs the config key degrade.{e.args[0]}") from None
    except ValueError as e:  # the constructor's check, which names the key
        raise ConfigError(str(e)) from None


def uniform(n: int, low: float, high: float, generator, device) -> torch.Tensor:
    """(n,) uniform draws in [low, high) on the generator's device, moved to ``device``."""
    dev = generator.device if generator is not None else device
    return (low + (high - low) * torch.rand(n, generator=generator, device=dev)).to(device)
