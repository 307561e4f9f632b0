"""Models: the timm ViT backbone with masking hooks, the DINO head, the global image decoder."""
