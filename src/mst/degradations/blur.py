"""Blur (Beyond Masking's "blurred"). The reference's blur layer cannot run (a 1x1 convolution with 7 output
channels where a 7x7 kernel was meant); this is what it intended: a per-image Gaussian blur of ``blur_kernel``
pixels (7 in the reference) with sigma ~ U(blur_sigma), depthwise, reflect padding. A normalised kernel keeps the
mean of a constant image. Target: the sharp view."""
from __future__ import annotations

from mst.data.image_ops import gaussian_blur
from mst.degradations.base import DEGRADATIONS, Degradation, Degraded, uniform
from mst.settings import make_spec


class Blur(Degradation):
    settings = {"blur_kernel": make_spec(7, "blur: odd kernel side in px (>= 3)"),
                "blur_sigma": make_spec([0.5, 2.0], "blur: sigma range [low, high]")}

    def __init__(self, kernel: int = 7, sigma: tuple[float, float] = (0.5, 2.0)) -> None:
        if kernel < 3 or kernel % 2 == 0:
            raise ValueError(f"degrade.blur_kernel={kernel} must be an odd size >= 3")
        if len(sigma) != 2:
            raise ValueError(f"degrade.blur_sigma={list(sigma)} must be [low, high]")
        lo, hi = (float(v) for v in sigma)
        if not 0 < lo <= hi:
            raise ValueError(f"degrade.blur_sigma={list(sigma)} must be [low, high] with 0 < low <= high")
        self.kernel, self.sigma = int(kernel), (lo, hi)

    @classmethod
    def from_config(cls, section):
        return cls(int(section["blur_kernel"]), tuple(section["blur_sigma"]))

    def check(self, channels, size, patch):
        if self.kernel // 2 >= size:
            raise ValueError(f"degrade.blur_kernel={self.kernel} is too large for {size} px views")

    def __call__(self, images, generator):
        sigma = uniform(len(images), *self.sigma, generator, images.device)
        return Degraded(input=gaussian_blur(images, sigma, self.kernel), target=images)


DEGRADATIONS.register("blur", Blur)
