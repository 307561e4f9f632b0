"""The decoder registry. Two kinds, told apart by ``takes``:

* ``"all_tokens"``: every patch token (B, N, D) on an (h, w) grid -> an image (B, C, H, W). MST's CNN (``cnn``) and
  SimMIM's per-token linear map (``linear``).
* ``"visible_tokens"``: the encoder's CLS and visible tokens plus where they sit -> per-token pixel predictions at
  the positions to decode. MAE's transformer (``transformer``).

``DECODERS.register(name, factory)`` with ``factory(section, embed_dim, patch_size, in_chans, grid) -> nn.Module``;
``section`` is the config section of the method using it (``mst`` or ``mae``).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from mst.registry import ConfigError, Registry

DECODERS: Registry[Callable[..., nn.Module]] = Registry("decoder", "decoder")


def build_decoder(name: str, section: dict, embed_dim: int, patch_size: int, in_chans: int,
                  grid: tuple[int, int], key: str = "decoder") -> nn.Module:
    factory = DECODERS.get(name, key)
    try:
        return factory(section, embed_dim, patch_size, in_chans, grid)
    except KeyError as e:
        raise ConfigError(f"decoder {name!r} needs the config key {e.args[0]!r}, which this method's section does "
                          f"not have ({', '.join(sorted(section))})") from None


def decoder_kind(name: str, key: str = "decoder") -> str:
    """``takes`` of a registered decoder (an attribute of its factory)."""
    return getattr(DECODERS.get(name, key), "takes", "all_tokens")
