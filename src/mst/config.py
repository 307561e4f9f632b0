"""Configuration: defaults, YAML presets and ``--set key=value`` overrides, validated against the registries.

A resolved config holds the common sections (``data``, ``augment``, ``model``, ``optim``, ``log``) and the sections
of its ``method`` only (e.g. ``dino`` + ``mst`` for MST, ``mim`` + ``mae`` + ``amt`` for MAE). A key in no section,
or a section the method does not use, is an error naming the closest valid keys, so a typo never silently falls
back to a default. Names of methods, backbones, mask strategies and decoders are checked against their registries.
"""
from __future__ import annotations

import copy
import difflib
import warnings
from pathlib import Path
from typing import Any

import yaml

from mst.registry import ConfigError

COMMON: dict[str, Any] = {
    "seed": 0,
    "method": "mst",  # a registered method: mst | mae | simmim | finetune (plain DINO is mst with mst.mask=none)
    "data": {
        "name": "fashion_mnist",  # fashion_mnist | folder (unlabelled, any nesting) | image_folder (class subdirs)
        "root": None,  # None -> /usr/share/datasets/fashion-mnist for fashion_mnist
        "split": "train",
        "subset": None,  # int: a fixed random subset of that many images (seeded)
        "balanced": False,  # subset: the same number of images per class (labelled data only)
        "subset_seed": 0,  # which fixed subset
        "channels": 1,  # images are converted to this many channels (1 or 3)
        "bad_files": "error",  # error | skip
        "num_workers": 0,
        "mean": [0.2860],
        "std": [0.3530],
    },
    "augment": {  # multi-crop methods (MST) use all of it; single-view methods one global crop + flip
        "global_size": 28,
        "local_size": 12,
        "n_local": 6,
        "global_scale": [0.4, 1.0],
        "local_scale": [0.05, 0.4],
        "flip_p": 0.5,
        "color_jitter": [0.4, 0.4, 0.2, 0.1],
        "color_jitter_p": 0.8,
        "grayscale_p": 0.2,
        "blur_p": [1.0, 0.1, 0.5],  # global 1, global 2, locals
        "blur_sigma": [0.1, 2.0],
        "solarize_p": 0.2,  # global 2 only
        "backend": "pil",  # pil (per image, DataLoader workers) | tensor (batched on the training device)
    },
    "model": {
        "arch": "vit_tiny",  # a registered backbone: vit_tiny | vit_small | vit_base | vit_large | swin_tiny
        "patch_size": 4,
        "img_size": 28,
        "depth": None,  # override the arch's depth (e.g. a shallower ViT for CPU runs)
        "embed_dim": None,  # override the arch's width (ViT only; a narrower ViT for CPU runs)
        "num_heads": None,  # override the arch's number of heads (must divide the width)
        "drop_path": 0.1,
        "pos_embed": "learned",  # learned | sincos (fixed 2-d sin-cos, MAE's encoder)
        "grad_checkpointing": False,
    },
    "optim": {
        "epochs": 100,
        "batch_size": 64,  # per process
        "base_lr": 5e-4,  # lr = base_lr * global_batch / 256
        "min_lr": 1e-6,
        "warmup_epochs": 10,
        "lr_schedule": "cosine",  # cosine (to min_lr) | multistep (x lr_gamma at each of lr_milestones, SimMIM)
        "lr_milestones": [],  # epochs, for multistep
        "lr_gamma": 0.1,
        "weight_decay": 0.04,
        "weight_decay_end": 0.4,  # cosine from weight_decay; equal to it = constant
        "betas": [0.9, 0.999],  # AdamW
        "clip_grad": 3.0,  # 0: no clipping
        "clip_mode": "param",  # param (each parameter's norm, DINO) | norm (the global norm, SimMIM)
        "amp": "auto",  # auto (bf16 on GPU when supported, else fp16; fp32 on CPU) | bf16 | fp16 | none
        "compile": False,
        "channels_last_decoder": True,  # measured faster on CPU (benchmarks/step_time.py)
    },
    "log": {
        "every": 10,  # steps between metric lines
        "progress": True,
        "tensorboard": True,
        "knn_every": 0,  # epochs between online evaluations (k-NN; fine-tuning: top-1) (0: off)
        "knn_train_subset": 5000,
        "knn_test_subset": 1000,
        "knn_k": 20,
        "checkpoint_every_steps": 0,  # 0: checkpoint at each epoch end only
    },
}

# Method sections: a method names the ones it reads (``Method.sections``); register more with register_section().
SECTIONS: dict[str, dict[str, Any]] = {
    "dino": {  # self-distillation (DINO; MST's eq. 1-2)
        "out_dim": 4096,
        "hidden_dim": 2048,
        "bottleneck_dim": 256,
        "nlayers": 3,
        "norm_last_layer": True,
        "use_bn": False,  # MST Table 6: BN in the projection head, statistics from the global views only
        "teacher_temp": 0.04,
        "warmup_teacher_temp": 0.04,
        "warmup_teacher_temp_epochs": 0,
        "student_temp": 0.1,
        "center_momentum": 0.9,
        "momentum_teacher": 0.996,  # cosine to 1 over training
        "freeze_last_layer": 1,  # epochs during which the prototypes do not move
    },
    "mst": {  # MST's mask and decoder (eq. 5-11)
        "mask": "attention",  # a registered strategy without throwing: none | random | attention
        "mask_num": 8,  # attention: the lowest 1/num tokens are candidates
        "mask_p": 0.1,  # probability of masking a candidate (random: any token)
        "replacement": "learned",  # learned | bert (80 % [MASK] / 10 % random token / 10 % unchanged)
        "decoder": "cnn",  # an image decoder (cnn | linear) or none
        "decoder_channels": [256, 128, 64, 32],  # cnn widths, one per 2x upsampling (the first log2(patch) used)
        "restore_target": "image",  # image (whole view, eq. 9) | masked (masked tokens' pixels only)
        "ce_weight": 1.0,  # lambda1 of eq. 11
        "restore_weight": 0.6,  # lambda2 of eq. 11
    },
    "mim": {  # masked image modelling, shared by MAE and SimMIM
        "mask": "patches",  # patches (MAE: a share of patches) | blocks (SimMIM: a share of mask units)
        "mask_ratio": 0.75,  # share of tokens (patches) or mask units (blocks) masked, in [0, 1)
        "mask_patch_size": None,  # blocks: mask unit side in pixels, a multiple of model.patch_size (null: patch)
        "norm_pix_loss": True,  # target = per-patch normalised pixels
        "degradation": "none",  # Beyond Masking (MAE): none | zoom_in | zoom_out | distort | blur | decolorize
    },
    "degrade": {  # the degradations' settings (Beyond Masking's reference values at 224 px)
        "zoom_in": 1.2857142857142858,  # 9/7: the input is the centre 224 of a 288 px field of view
        "ring_weight": 0.2,  # zoom_in: share of the loss on the border ring the input does not show
        "zoom_out": 1.4,  # 7/5: a 160 px image in a 224 px mirror-padded canvas
        "distort": [0.15, 0.25],  # fisheye strength range
        "blur_kernel": 7,
        "blur_sigma": [0.5, 2.0],
        "decolor_max": 0.6666666666666666,  # channel weights ~ U(0, 2/3)
    },
    "amt": {  # AMT: attention-driven masking and throwing, an option of MAE and SimMIM
        "enabled": False,
        "mask_ratio": None,  # null: the reference's for the method (MAE 0.45, SimMIM 0.44 of the units)
        "throw_ratio": None,  # null: MAE 0.40, SimMIM 0.26
        "start": 40,  # epoch from which masks follow the maps (plain mim.mask before); the first refresh
        "interval": 40,  # epochs between refreshes of the maps
        "order": "mask_first",  # mask_first (reference) | throw_first | throw_lowest
        "batch_size": 256,  # images per batch of the refresh pass
    },
    "mae": {  # MAE's decoder
        "decoder": "transformer",
        "decoder_dim": 512,
        "decoder_depth": 8,
        "decoder_heads": 16,
    },
    "simmim": {  # SimMIM's decoder
        "decoder": "linear",
    },
    "finetune": {  # supervised fine-tuning of a pretrained backbone (or from scratch), MAE / BEiT recipe
        "init": None,  # checkpoint (run directory or file) whose backbone starts the fine-tune; null = random init
        "init_backbone": None,  # which of its backbones (null: its default: MST's teacher, MIM's encoder)
        "num_classes": 10,
        "pool": "cls",  # cls (CLS token after the final norm) | avg (mean of patch tokens + fc_norm, as MAE)
        "layer_decay": 0.75,  # lr of block i (0-based) x decay^(depth - i); embeddings x decay^(depth + 1)
        "label_smoothing": 0.1,
        "mixup": 0.8,  # alpha (0: off)
        "cutmix": 1.0,  # alpha (0: off)
        "mixup_prob": 1.0,
        "mixup_switch_prob": 0.5,
        "reprob": 0.25,  # random erasing probability (timm, pixel mode)
    },
}

# keys that existed before methods had sections: an old preset gets told where its key went
RENAMED = {
    **{f"head.{k}": f"dino.{k}" for k in ("out_dim", "hidden_dim", "bottleneck_dim", "nlayers", "norm_last_layer",
                                          "use_bn")},
    **{f"loss.{k}": f"dino.{k}" for k in ("teacher_temp", "warmup_teacher_temp", "warmup_teacher_temp_epochs",
                                          "student_temp", "center_momentum")},
    "loss.ce_weight": "mst.ce_weight", "loss.restore_weight": "mst.restore_weight",
    "mask.strategy": "mst.mask", "mask.num": "mst.mask_num", "mask.p": "mst.mask_p",
    "mask.replacement": "mst.replacement", "decoder.enabled": "mst.decoder (cnn | none)",
    "decoder.channels": "mst.decoder_channels", "decoder.target": "mst.restore_target",
    "optim.momentum_teacher": "dino.momentum_teacher", "optim.freeze_last_layer": "dino.freeze_last_layer",
}


def register_section(name: str, defaults: dict[str, Any]) -> None:
    """A new config section (for a method registered outside this package)."""
    if name in COMMON:
        raise ValueError(f"{name!r} is a common config section")
    SECTIONS[name] = copy.deepcopy(defaults)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def method_class(name: str):
    from mst.methods import METHODS

    return METHODS.get(name)


def defaults_for(method: str) -> dict[str, Any]:
    """The default config of ``method``: the common sections and the method's own."""
    cfg = copy.deepcopy(COMMON)
    cfg["method"] = method
    for section in method_class(method).sections:
        if section not in SECTIONS:
            raise ConfigError(f"method {method!r} reads config section {section!r}, which is not registered")
        cfg[section] = copy.deepcopy(SECTIONS[section])
    return cfg


def _unknown(key: str, where: str, cfg: dict) -> ConfigError:
    section = key.split(".")[0]
    if key in RENAMED:
        return ConfigError(f"config key '{key}' in {where} was renamed: use {RENAMED[key]}")
    if section in SECTIONS and section not in cfg:
        users = [m for m, cls in _method_items() if section in cls.sections]
        return ConfigError(f"config section '{section}' (key '{key}' in {where}) is not used by method "
                           f"'{cfg['method']}'; it belongs to {', '.join(users) or 'no registered method'}")
    valid = sorted(_flatten(cfg)) + sorted(k for k, v in cfg.items() if isinstance(v, dict))
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    sections = sorted(k for k, v in cfg.items() if isinstance(v, dict))
    hint = f"; did you mean {', '.join(close)}?" if close else f"; valid sections: {', '.join(sections)}"
    return ConfigError(f"unknown config key '{key}' in {where}{hint}")


def _method_items():
    from mst.methods import METHODS

    return METHODS.items()


def _merge(base: dict, update: dict, where: str, root: dict, prefix: str = "") -> None:
    for k, v in update.items():
        key = f"{prefix}{k}"
        if k not in base:
            if isinstance(v, dict):  # an old section (head:, mask:): name the first key that moved
                key = next((f"{key}.{sub}" for sub in v if f"{key}.{sub}" in RENAMED), key)
            raise _unknown(key, where, root)
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"config key '{key}' in {where} must be a mapping, got {v!r}")
            _merge(base[k], v, where, root, key + ".")
        else:
            base[k] = _number(v) if isinstance(base[k], (int, float)) and not isinstance(base[k], bool) else v


def parse_value(text: str) -> Any:
    """Parse an override's value with YAML rules (numbers, bools, null, lists); '1e-3' is a number too."""
    value = yaml.safe_load(text) if text.strip() else ""
    return _number(value)


def _number(value: Any) -> Any:
    """YAML 1.1 reads '1e-3' (no dot) as a string; read it as the float everyone means."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key=value, e.g. optim.base_lr=1e-3")
    key, _, text = item.partition("=")
    return key.strip(), text


def apply_override(cfg: dict, item: str) -> None:
    key, text = _split_override(item)
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise _unknown(key, "--set", cfg)
        if i == len(parts) - 1:
            if isinstance(node[part], dict):
                raise ConfigError(f"--set {key}: '{key}' is a section; set one of its keys, e.g. {key}.{next(iter(node[part]))}")
            node[part] = parse_value(text)
        else:
            node = node[part]


def _read_yaml(path: str | Path, seen: tuple[Path, ...] = ()) -> dict:
    """A preset as a nested dict. ``base: other.yaml`` (relative to this file) is read first and this file's keys
    are laid over it, so a variant preset holds only what it changes."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (path.parent / str(base)).resolve()
    if base_path in seen:
        raise ConfigError(f"config file {path}: 'base: {base}' makes a loop")
    merged = _read_yaml(base_path, seen + (path.resolve(),))
    _lay_over(merged, data)
    return merged


def _lay_over(base: dict, top: dict) -> None:
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _lay_over(base[k], v)
        else:
            base[k] = v


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """Defaults of the method, then the YAML preset at ``path``, then each ``key=value`` override, validated.

    The method is the last ``method=`` override, else the preset's ``method``, else ``mst``."""
    data = _read_yaml(path) if path is not None else {}
    method = data.get("method", COMMON["method"])
    for item in overrides or []:
        key, text = _split_override(item)
        if key == "method":
            method = parse_value(text)
    cfg = defaults_for(str(method))
    _merge(cfg, data, str(path), cfg)
    for item in overrides or []:
        apply_override(cfg, item)
    validate(cfg)
    return cfg


def merge_dict(cfg: dict, update: dict, where: str = "config") -> dict:
    """Return a copy of ``cfg`` updated by the nested ``update`` (validated like a preset)."""
    out = copy.deepcopy(cfg)
    _merge(out, update, where, out)
    validate(out)
    return out


def choice(cfg: dict, key: str, options) -> None:
    """``key`` (dotted) must hold one of ``options``."""
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    if node not in options:
        raise ConfigError(f"{key}={node!r} is not one of {', '.join(map(str, options))}")


def validate(cfg: dict) -> None:
    """Common checks, then the method's own (``Method.validate``). Mutates nothing but ``log.knn_every`` on
    unlabelled data (switched off with a warning)."""
    from mst.models.backbones import BACKBONES

    d, a, m, o = cfg["data"], cfg["augment"], cfg["model"], cfg["optim"]
    choice(cfg, "data.bad_files", ("error", "skip"))
    choice(cfg, "data.channels", (1, 3))
    choice(cfg, "optim.amp", ("auto", "bf16", "fp16", "none"))
    choice(cfg, "optim.clip_mode", ("param", "norm"))
    choice(cfg, "optim.lr_schedule", ("cosine", "multistep"))
    choice(cfg, "augment.backend", ("pil", "tensor"))
    choice(cfg, "model.pos_embed", ("learned", "sincos"))
    BACKBONES.get(m["arch"])
    if len(d["mean"]) != d["channels"] or len(d["std"]) != d["channels"]:
        raise ConfigError(f"data.mean / data.std need {d['channels']} values (data.channels), "
                          f"got {d['mean']} / {d['std']}")
    multicrop = method_class(cfg["method"]).views == "multicrop"
    for size_key in ("global_size", "local_size") if multicrop else ("global_size",):
        if a[size_key] % m["patch_size"]:
            raise ConfigError(f"augment.{size_key}={a[size_key]} is not divisible by model.patch_size={m['patch_size']}")
    if m["img_size"] % m["patch_size"]:
        raise ConfigError(f"model.img_size={m['img_size']} is not divisible by model.patch_size={m['patch_size']}")
    if o["batch_size"] < 1 or o["epochs"] < 1:
        raise ConfigError("optim.batch_size and optim.epochs must be >= 1")
    if len(o["betas"]) != 2 or not all(0 <= b < 1 for b in o["betas"]):
        raise ConfigError(f"optim.betas={o['betas']} must be two numbers in [0, 1)")
    if len(a["blur_p"]) != 3:
        raise ConfigError("augment.blur_p needs 3 probabilities: global 1, global 2, locals")
    if d["balanced"] and d["name"] == "folder":
        raise ConfigError("data.balanced needs labels, but data.name=folder is unlabelled")
    if cfg["log"]["knn_every"] and d["name"] == "folder":
        warnings.warn("log.knn_every needs labels, but data.name=folder is unlabelled: online evaluation is "
                      "switched off (use data.name=image_folder with class subfolders to keep it)", stacklevel=2)
        cfg["log"]["knn_every"] = 0
    method_class(cfg["method"]).validate(cfg)


def save_config(cfg: dict, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))


