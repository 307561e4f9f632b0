"""Decoders (a registry, :data:`DECODERS`): cnn (MST), linear (SimMIM), transformer (MAE)."""
from mst.models.decoders.base import DECODERS, build_decoder, decoder_kind
from mst.models.decoders.cnn import GlobalImageDecoder
from mst.models.decoders.linear import LinearPixelDecoder
from mst.models.decoders.transformer import MAEDecoder

__all__ = ["DECODERS", "GlobalImageDecoder", "LinearPixelDecoder", "MAEDecoder", "build_decoder", "decoder_kind"]
