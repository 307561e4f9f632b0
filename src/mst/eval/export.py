"""Export a pretrained backbone for use outside this package.

The weights are written in timm's own key layout as safetensors (no pickle, loads anywhere), next to a JSON file
naming the timm model and the kwargs that recreate it, so ``timm.create_model`` rebuilds the exact network
offline. :func:`detection_state_dict` re-prefixes the same weights for detection/segmentation frameworks.
"""
from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file

from mst.eval.features import Log
from mst.models.backbones import timm_spec

__all__ = ["export_backbone", "classifier_names", "load_exported", "timm_call", "timm_overlay", "detection_state_dict",
           "save_detection_checkpoint"]
MAX_PRINTED_NAMES = 32  # more class names than this stay in the JSON (and load_exported) but out of the printed call


def _json_path(weights: str | Path) -> Path:
    """model.safetensors -> model.json (the metadata written next to the weights)."""
    return Path(weights).with_suffix(".json")


def export_backbone(
    ckpt: str | Path, out_path: str | Path, which: str | None = None, log: Log = print
) -> tuple[Path, Path]:
    """Write ``which``'s ViT weights (timm keys: cls_token, pos_embed, patch_embed.proj.weight, blocks.N...,
    norm.weight; no head, decoder or [MASK] token) to ``out_path`` (.safetensors) and metadata to the same
    name with suffix .json: {"model_name", "model_kwargs", "source_checkpoint", "which", "epoch", "mean",
    "std", "pretrained_cfg_overlay", "timm_call"} (the last is the line that loads it, :func:`timm_call`). ``which`` defaults to the checkpoint's default backbone: the teacher for MST/DINO (the better encoder,
    as DINO releases it), the encoder for MAE / SimMIM. A fine-tuned checkpoint is exported whole, as a timm
    classifier (head included; "model_kwargs" then hold num_classes and global_pool) and its JSON also holds
    "class_names" (the fine-tune's classes in label order: logit i is class_names[i]; see :func:`classifier_names`).
    Returns both paths."""
    from mst.checkpoint import backbone_state, load_checkpoint, resolve_checkpoint, resolve_which

    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise ValueError(f"export path {out_path} must end in .safetensors")
    ckpt_file = resolve_checkpoint(ckpt)
    state = load_checkpoint(ckpt_file)
    cfg = state["config"]
    which = resolve_which(state, which)
    name, kwargs = timm_spec(cfg["model"], int(cfg["data"]["channels"]))
    clf = state.get("classifier")
    if clf is not None:  # the whole classifier, in timm's layout
        prefix = clf["prefix"]
        weights = {k[len(prefix):]: v for k, v in state["method"].items() if k.startswith(prefix)}
        kwargs.update(num_classes=int(clf["num_classes"]))
        if clf.get("global_pool"):  # a ViT's token / avg pooling (a CNN keeps its own)
            kwargs["global_pool"] = clf["global_pool"]
        class_names = classifier_names(state, ckpt_file)
        if class_names is None:
            log(f"warning: {ckpt_file} does not name its {clf['num_classes']} classes (written before class names "
                "were stored, and its data cannot be read here): the JSON has \"class_names\": null")
    else:
        weights = backbone_state(state, which)
    weights = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    if not weights:
        raise RuntimeError(f"checkpoint {ckpt_file} holds no backbone weights under '{which}'")
    meta = {
        "model_name": name,
        "model_kwargs": kwargs,
        "source_checkpoint": str(ckpt_file.resolve()),
        "which": which,
        "epoch": state.get("epoch"),
        "mean": list(cfg["data"]["mean"]),
        "std": list(cfg["data"]["std"]),
        "crop_pct": float(cfg["augment"]["eval_crop"]),  # the evaluation's centre crop (1: whole image)
        "img_size": int(cfg["model"]["img_size"]),
    }
    if clf is not None:
        meta["class_names"] = class_names
    meta["pretrained_cfg_overlay"] = timm_overlay(meta)
    meta["timm_call"] = timm_call(meta, out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out_path), metadata={"format": "pt", "model_name": name})
    json_path = _json_path(out_path)
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    what = f"classifier ({kwargs['num_classes']} classes)" if clf is not None else f"{which} backbone"
    log(f"exported the {what} ({len(weights)} tensors, timm '{name}') to {out_path} and {json_path}")
    return out_path, json_path


def classifier_names(state: dict, ckpt_file: str | Path | None = None) -> list[str] | None:
    """Class names of a fine-tuned checkpoint, in label order: those stored in its ``classifier`` entry (every
    ``mst finetune`` checkpoint holds them); for an older checkpoint, the ``class_names`` of the run's
    finetune.json, Fashion-MNIST's classes, or the class subfolders of its image folder if still readable;
    else None."""
    clf = state.get("classifier") or {}
    n = int(clf.get("num_classes", 0))
    names = clf.get("class_names")
    if names:
        return [str(c) for c in names]
    if ckpt_file is not None:
        summary = Path(ckpt_file).parent / "finetune.json"
        try:
            names = json.loads(summary.read_text()).get("class_names")
        except (OSError, ValueError, AttributeError):
            names = None
        if names and len(names) == n:
            return [str(c) for c in names]
    data = state["config"]["data"]
    try:
        if data["name"] == "fashion_mnist":
            from mst.data import CLASSES

            names = list(CLASSES)
        else:
            from mst.data import build_dataset

            names = list(getattr(build_dataset(dict(data, subset=None)), "classes", None) or [])
    except Exception:  # noqa: BLE001 - the data may be gone; the export itself does not need them
        return None
    return [str(c) for c in names] if names and len(names) == n else None


def timm_overlay(meta: dict, file: str | Path | None = None, names: bool = True) -> dict:
    """The ``pretrained_cfg_overlay`` an export needs in timm: ``num_classes`` (timm drops a saved head whose class
    count differs from the pretrained config's, 1000 for the ViT names), ``input_size`` (channels and size), the
    data's ``mean`` / ``std`` and the evaluation's ``crop_pct`` (what ``timm.data.resolve_model_data_config``
    returns), and for a classifier its ``label_names``; ``file`` first when given."""
    kwargs = meta["model_kwargs"]
    size = int(kwargs.get("img_size") or meta["img_size"])  # a CNN's kwargs hold no size
    overlay: dict = {} if file is None else {"file": str(file)}
    overlay.update(num_classes=int(kwargs.get("num_classes", 0)), input_size=(int(kwargs["in_chans"]), size, size),
                   mean=tuple(meta["mean"]), std=tuple(meta["std"]))
    if meta.get("crop_pct") is not None:
        overlay["crop_pct"] = float(meta["crop_pct"])
    if names and meta.get("class_names"):
        overlay["label_names"] = tuple(meta["class_names"])
    return overlay


def timm_call(meta: dict, weights: str | Path) -> str:
    """The one line of Python that rebuilds the export in timm, as ``mst export`` prints it (``import timm`` first);
    :func:`load_exported` makes the same call. Class names beyond :data:`MAX_PRINTED_NAMES` are left out of the
    printed line (they stay in the JSON); they do not change the logits."""
    names = len(meta.get("class_names") or ()) <= MAX_PRINTED_NAMES
    overlay = timm_overlay(meta, weights, names=names)
    args = ", ".join(f"{k}={v!r}" for k, v in overlay.items())
    kwargs = ", ".join(f"{k}={v!r}" for k, v in meta["model_kwargs"].items())
    return (f"timm.create_model({meta['model_name']!r}, pretrained=True, pretrained_cfg_overlay=dict({args}), "
            f"{kwargs})")


def load_exported(path: str | Path, json_path: str | Path | None = None) -> torch.nn.Module:
    """Rebuild the exported ViT with timm (offline) in eval mode.

    Equivalent to ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path), **kwargs)``
    with name/kwargs from the JSON; the overlay also states the input size, channel count, mean/std and
    num_classes (0 for a backbone, the classes of an exported classifier), so timm neither warns about channel
    adaptation nor drops a classifier, and ``timm.data.resolve_data_config`` returns the training normalisation.
    An exported classifier's class names become the pretrained cfg's ``label_names`` (timm's field for them:
    ``model.pretrained_cfg["label_names"]``).
    """
    path = Path(path)
    meta = json.loads((Path(json_path) if json_path is not None else _json_path(path)).read_text())
    model = timm.create_model(meta["model_name"], pretrained=True, pretrained_cfg_overlay=timm_overlay(meta, path),
                              **meta["model_kwargs"])
    return model.eval()


def detection_state_dict(weights: str | Path | dict[str, torch.Tensor], prefix: str = "backbone.") -> dict:
    """The exported (timm-layout) weights with ``prefix`` prepended to every key.

    ``backbone.`` is where detectors keep their backbone: an MMDetection/MMEngine model state dict stores it as
    ``backbone.<name>``, and ``init_cfg=dict(type="Pretrained", prefix="backbone.", checkpoint=...)`` on a backbone
    keeps exactly the keys starting with the prefix and strips it. detectron2's ViTDet wraps the ViT one level
    deeper: use ``prefix="backbone.net."``. Only the prefix changes; a framework whose ViT names its parameters
    differently from timm (e.g. mmpretrain's ``layers.N.ln1``) needs its own key converter on top.
    """
    if not isinstance(weights, dict):
        weights = load_file(str(weights))
    return {prefix + k: v for k, v in weights.items()}


def save_detection_checkpoint(
    weights: str | Path | dict[str, torch.Tensor], out_path: str | Path, prefix: str = "backbone.", log: Log = print
) -> Path:
    """Save :func:`detection_state_dict` as a bare state dict with ``torch.save`` (.pth): both MMEngine's
    checkpoint loader and detectron2's Checkpointer accept a file that is just the state dict."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sd = detection_state_dict(weights, prefix)
    torch.save(sd, out_path)
    log(f"wrote {len(sd)} tensors with prefix '{prefix}' to {out_path}")
    return out_path
