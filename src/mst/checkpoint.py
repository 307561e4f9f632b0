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
    """A checkpoint (run directory or file), its config's old key names read as their new ones and keys newer than
    it at their defaults (a run written before a rename resumes, evaluates and exports)."""
    from mst.config_renames import upgrade

    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt, truncated or not a torch file: name it
        raise RuntimeError(f"cannot read checkpoint {path}: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("config"), dict):
        upgrade(state["config"], str(path), fill=True)
    return state


def method_checkpoint(method, **extra: Any) -> dict[str, Any]:
    """What every checkpoint holds about a method: its config, its state, and where its backbones are
    (``backbones``: name -> state-dict prefix of the timm weights; ``default_backbone``), plus ``extra``."""
    return {
        "config": method.cfg,
        "method": method.state_dict(),
        "backbones": {name: f"{prefix}.vit." for name, prefix in method.backbones.items()},
        "default_backbone": method.default_backbone,
        **method.checkpoint_info(),
        **extra,
    }


def backbone_names(ckpt: dict) -> tuple[list[str], str]:
    """(names of the backbones a checkpoint holds, the default one): e.g. (["student", "teacher"], "teacher") for MST,
    (["encoder"], "encoder") for MAE / SimMIM."""
    if "backbones" not in ckpt or "method" not in ckpt:
        raise RuntimeError("this checkpoint has no 'backbones' / 'method' entries: it was not written by mst's "
                           "trainer (or by an older version of it, before methods)")
    return sorted(ckpt["backbones"]), ckpt["default_backbone"]


def backbone_state(ckpt: dict, which: str | None = None) -> dict[str, torch.Tensor]:
    """The timm-layout weights of backbone ``which`` (default: the checkpoint's default) of a loaded checkpoint:
    no head, decoder or [MASK] token; a fine-tuned classifier's ``head.*`` is left out too. A patch embedding of
    fewer channels than the data's is adapted to them (:func:`adapt_input_channels`)."""
    which = resolve_which(ckpt, which)
    prefix = ckpt["backbones"][which]
    state = {k[len(prefix):]: v for k, v in ckpt["method"].items() if k.startswith(prefix) and
             not k[len(prefix):].startswith("head.")}
    return adapt_input_channels(state, int(ckpt["config"]["data"]["channels"]))


def adapt_input_channels(state: dict[str, torch.Tensor], channels: int) -> dict[str, torch.Tensor]:
    """A patch embedding trained on fewer channels than the data have (Beyond Masking's de-colourised input: 1)
    adapted with timm's ``adapt_input_conv``: the weight repeated over the channels and scaled by 1/C."""
    key = "patch_embed.proj.weight"
    if key in state and state[key].shape[1] != channels:
        from timm.models import adapt_input_conv

        state = {**state, key: adapt_input_conv(channels, state[key], base_chans=int(state[key].shape[1]))}
    return state


def resolve_which(ckpt: dict, which: str | None) -> str:
    """``which`` checked against the checkpoint's backbones; None -> its default (teacher for MST, encoder for MIM)."""
    names, default = backbone_names(ckpt)
    which = which or default
    if which not in names:
        from mst.registry import ConfigError

        raise ConfigError(f"this checkpoint ({ckpt['config']['method']}) holds the backbone(s) {', '.join(names)}, "
                         f"not {which!r}")
    return which


def load_backbone(path: str | Path, which: str | None = None, device: str | torch.device = "cpu"):
    """Rebuild a pretrained backbone from a checkpoint: returns (backbone in eval mode, config dict). The backbone's
    ``which`` attribute names the one loaded (e.g. "teacher")."""
    from mst.models.backbones import create_backbone

    ckpt = load_checkpoint(path)
    cfg = ckpt["config"]
    state = backbone_state(ckpt, which)
    model = create_backbone(cfg["model"], in_chans=int(cfg["data"]["channels"]))
    missing, unexpected = model.vit.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"the backbone in {resolve_checkpoint(path)} does not fit model.arch={cfg['model']['arch']} "
                           f"(missing {missing[:4]}, unexpected {unexpected[:4]})")
    model.which = resolve_which(ckpt, which)
    return model.to(device).eval(), cfg

