"""mst: Masked Self-supervised Transformer (MST, Li et al., NeurIPS 2021) pretraining for timm ViTs."""

__version__ = "0.1.0"
