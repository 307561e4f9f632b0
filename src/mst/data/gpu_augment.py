"""Kept for old imports: the batched tensor image ops moved to :mod:`mst.data.image_ops` and the tensor multi-crop
(:class:`GPUMultiCrop` and its loading helpers) to :mod:`mst.data.tensor_multicrop`. New code imports from those."""
from __future__ import annotations

from .image_ops import (
    GRAY_WEIGHTS,
    RATIO,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    crop_resize,
    eight_bit,
    float_images,
    gaussian_blur,
    gaussian_kernels,
    normalize,
    prepare_images,
    sample_crop_boxes,
    to_gray,
)
from .tensor_multicrop import SOLARIZE_THRESHOLD, GPUMultiCrop, RawImageDataset, collate_raw, pil_to_uint8

__all__ = [
    "GPUMultiCrop", "RawImageDataset", "adjust_brightness", "adjust_contrast", "adjust_hue", "adjust_saturation",
    "collate_raw", "crop_resize", "eight_bit", "float_images", "gaussian_blur", "gaussian_kernels", "normalize",
    "pil_to_uint8", "prepare_images", "sample_crop_boxes", "to_gray", "GRAY_WEIGHTS", "RATIO", "SOLARIZE_THRESHOLD",
]
