"""Mask strategies and token replacement."""
from mst.masking.replace import replace_tokens
from mst.masking.strategies import (
    AttentionGuidedMask,
    MaskResult,
    MaskStrategy,
    NoMask,
    RandomMask,
    build_mask_strategy,
    low_attention_candidates,
    register,
)

__all__ = [
    "AttentionGuidedMask", "MaskResult", "MaskStrategy", "NoMask", "RandomMask", "build_mask_strategy",
    "low_attention_candidates", "register", "replace_tokens",
]
