"""Checkpoints: atomic writes, safe loads (``weights_only=True``), and loading a backbone back for evaluation."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_NAME = "checkpoint.pt"


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory or a checkpoint file -> the checkpoint file (clear error if there is none)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (pass a run directory or a checkpoint .pt file)")
    return path


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same directory, fsync, then rename: a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = resolve_checkpoint(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt, truncated or not a torch file: name it
        raise RuntimeError(f"cannot read checkpoint {path}: {e}") from e


def backbone_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Encoder state dict -> the timm ViT's own keys (drops head, decoder and [MASK] token)."""
    prefix = "backbone.vit."
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def load_backbone(path: str | Path, which: str = "teacher", device: str | torch.device = "cpu"):
    """Rebuild the pretrained ViT from a checkpoint: returns (ViTBackbone in eval mode, config dict)."""
    from mst.models.backbone import create_backbone

    if which not in ("teacher", "student"):
        raise ValueError(f"which={which!r} must be 'teacher' or 'student'")
    ckpt = load_checkpoint(path)
    cfg = ckpt["config"]
    model = create_backbone(cfg["model"], in_chans=int(cfg["data"]["channels"]))
    model.vit.load_state_dict(backbone_state(ckpt[which]))
    return model.to(device).eval(), cfg
