"""Continued pretraining from existing weights (``model.init``): loading them into every backbone of a method
(:func:`init_backbones`), layer-wise lr decay and freezing the first layers of the backbone being trained, both off
by default and method-agnostic (they read ``Method.backbones``).

Layer ids follow the fine-tuning recipe (timm's ``param_groups_layer_decay``, MAE / BEiT): the patch embedding,
CLS / register tokens and position embeddings are layer 0, block i is layer i + 1, the final norm goes with the
last block; the lr of layer l is ``layer_decay ** (depth + 1 - l)`` times the base lr; heads, decoders and the
[MASK] token keep the base lr. ``optim.freeze_blocks = N`` holds layers 0..N still (0: the patch embedding and
tokens only) for the first ``optim.freeze_epochs`` epochs, or the whole run when that is 0 (those parameters then
leave the optimizer and the backward pass).
"""
from __future__ import annotations

import torch


def layer_id(name: str, depth: int) -> int:
    """The layer of a timm ViT parameter (see the module docstring)."""
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.startswith(("patch_embed", "cls_token", "pos_embed", "reg_token")):
        return 0
    return depth  # norm / fc_norm: with the last block


def _backbone_layers(method) -> dict[int, tuple[int, int]]:
    """id(parameter) -> (layer id, depth) for every backbone of ``method``."""
    out = {}
    for prefix in method.backbones.values():
        vit = method.get_submodule(prefix).vit
        depth = len(vit.blocks)
        for name, p in vit.named_parameters():
            out[id(p)] = (layer_id(name, depth), depth)
    return out


def freeze_for_run(method, freeze_blocks: int) -> int:
    """``requires_grad = False`` on layers 0..``freeze_blocks`` of every backbone; returns how many tensors."""
    n = 0
    for prefix in method.backbones.values():
        vit = method.get_submodule(prefix).vit
        for name, p in vit.named_parameters():
            if layer_id(name, len(vit.blocks)) <= freeze_blocks and p.requires_grad:
                p.requires_grad_(False)
                n += 1
    return n


def continued_groups(method, groups: list[dict], layer_decay: float = 1.0, freeze_blocks: int = -1,
                     freeze_epochs: int = 0) -> list[dict]:
    """``groups`` (from ``Method.param_groups``) split by lr scale; with ``freeze_epochs`` > 0 the parameters of
    layers 0..``freeze_blocks`` get ``frozen_until`` (their lr is 0 until that epoch: :func:`mst.engine.optim.
    set_lr_wd`). Unchanged when neither control is on."""
    timed = freeze_blocks >= 0 and freeze_epochs > 0
    if layer_decay == 1.0 and not timed:
        return groups
    layers = _backbone_layers(method)
    out: list[dict] = []
    for g in groups:
        buckets: dict[tuple[float, bool], list[torch.Tensor]] = {}
        for p in g["params"]:
            lid, depth = layers.get(id(p), (None, 0))
            scale = 1.0 if lid is None else float(layer_decay) ** (depth + 1 - lid)
            frozen = timed and lid is not None and lid <= freeze_blocks
            buckets.setdefault((scale, frozen), []).append(p)
        for (scale, frozen), params in buckets.items():
            group = {k: v for k, v in g.items() if k != "params"}
            group.update(params=params, lr_scale=g.get("lr_scale", 1.0) * scale)
            if frozen:
                group["frozen_until"] = int(freeze_epochs)
            out.append(group)
    return out


def init_backbones(method, source_text: str) -> dict:
    """Load ``model.init`` into every backbone of ``method`` (MST / DINO: student and teacher; MAE / SimMIM: the
    encoder), fitted to it by timm's tools; returns what the checkpoint records: the source, its sha256, the timm
    architecture and the adaptations."""
    from mst.sources import fit_state, load_source

    source = load_source(source_text)
    notes: list[str] = []
    for prefix in method.backbones.values():
        vit = method.get_submodule(prefix).vit
        state, notes = fit_state(source, vit)
        vit.load_state_dict(state, strict=True)
    return {"source": source_text, "sha256": source.sha256, "timm_name": source.timm_name, "adaptations": notes}
