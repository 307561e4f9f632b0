"""De-colourisation (Beyond Masking's "de-colourised"): the encoder sees one channel, a R + b G + c B with
a, b, c ~ U(0, decolor_max) per image (2/3 in the reference, which draws them once per batch and does not make
them sum to 1), and reconstructs the colour view. Meaningless for 1-channel data, which is refused. The encoder
then has a 1-channel patch embedding; evaluation, fine-tuning and export adapt it to the data's channels with
timm's ``adapt_input_conv`` (the weight repeated over the channels and scaled by 1/C: a colour image then gives
what its channel mean gave, the mix the weights saw on average)."""
from __future__ import annotations

import torch

from mst.degradations.base import DEGRADATIONS, Degradation, Degraded, uniform
from mst.settings import make_spec


class Decolorize(Degradation):
    settings = {"decolor_max": make_spec(2 / 3, "decolorize: channel weights ~ U(0, decolor_max)")}

    def __init__(self, high: float = 2 / 3) -> None:
        if not high > 0:
            raise ValueError(f"degrade.decolor_max={high} must be > 0")
        self.high = float(high)

    @classmethod
    def from_config(cls, section):
        return cls(section["decolor_max"])

    def input_channels(self, channels: int) -> int:
        return 1

    def check(self, channels, size, patch):
        if channels < 2:
            raise ValueError("mim.degradation='decolorize' mixes colour channels into one, but data.channels=1: "
                             "de-colourising grey images does nothing (use a colour dataset, data.channels=3)")

    def mix(self, n: int, channels: int, generator, device) -> torch.Tensor:
        """(n, C) channel weights, each ~ U(0, decolor_max)."""
        return uniform(n * channels, 0.0, self.high, generator, device).reshape(n, channels)

    def __call__(self, images, generator):
        b, c = images.shape[:2]
        weights = self.mix(b, c, generator, images.device).to(images.dtype)
        grey = (images * weights[:, :, None, None]).sum(dim=1, keepdim=True)
        return Degraded(input=grey, target=images)


DEGRADATIONS.register("decolorize", Decolorize)
