"""Mask strategies (a registry, :data:`MASKS`) and [MASK] token replacement. Importing the package registers the
built-in strategies: none, random, attention (MST), patches (MAE), blocks (SimMIM), amt (AMT), attmask (AttMask-High)."""
from mst.masking.base import MASKS, MaskResult, MaskStrategy, build_mask_strategy
from mst.masking.bernoulli import NoMask, RandomMask
from mst.masking.attention import AttentionGuidedMask, low_attention_candidates
from mst.masking.ratio import BlockMask, PatchRatioMask
from mst.masking.replace import replace_tokens
from mst.masking.amt import AMTMask, AMTSpec, crop_maps, normalised_head_mean
from mst.masking.attmask import AttMaskHigh, top_attended

__all__ = [
    "AMTMask", "AMTSpec", "AttMaskHigh", "crop_maps", "MASKS", "AttentionGuidedMask", "BlockMask", "MaskResult", "MaskStrategy", "NoMask", "PatchRatioMask",
    "RandomMask", "build_mask_strategy", "low_attention_candidates", "normalised_head_mean", "replace_tokens",
    "top_attended",
]
