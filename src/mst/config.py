"""Configuration: defaults, YAML presets and ``--set key=value`` overrides.

Every key a run can use is listed in :data:`DEFAULTS`; a preset or an override that names any other key is an
error naming the closest valid keys, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "data": {
        "name": "fashion_mnist",  # fashion_mnist | folder (unlabelled, any nesting) | image_folder (class subdirs)
        "root": None,  # None -> /usr/share/datasets/fashion-mnist for fashion_mnist
        "split": "train",
        "subset": None,  # int: a fixed random subset of that many images (seeded)
        "channels": 1,  # images are converted to this many channels (1 or 3)
        "bad_files": "error",  # error | skip
        "num_workers": 0,
        "mean": [0.2860],
        "std": [0.3530],
    },
    "augment": {
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
        "arch": "vit_tiny",  # vit_tiny | vit_small | vit_base | swin_tiny
        "patch_size": 4,
        "img_size": 28,
        "depth": None,  # override the arch's depth (e.g. a shallower ViT for CPU runs)
        "embed_dim": None,  # override the arch's width (ViT only; a narrower ViT for CPU runs)
        "num_heads": None,  # override the arch's number of heads (must divide the width)
        "drop_path": 0.1,
        "grad_checkpointing": False,
    },
    "head": {
        "out_dim": 4096,
        "hidden_dim": 2048,
        "bottleneck_dim": 256,
        "nlayers": 3,
        "norm_last_layer": True,
        "use_bn": False,  # Table 6: BN in the projection head, statistics from the global views only
    },
    "loss": {
        "teacher_temp": 0.04,
        "warmup_teacher_temp": 0.04,
        "warmup_teacher_temp_epochs": 0,
        "student_temp": 0.1,
        "center_momentum": 0.9,
        "ce_weight": 1.0,  # lambda1 of eq. 11
        "restore_weight": 0.6,  # lambda2 of eq. 11
    },
    "mask": {
        "strategy": "attention",  # none | random | attention
        "num": 8,  # attention: the lowest 1/num tokens are candidates
        "p": 0.1,  # probability of masking a candidate (random: any token)
        "replacement": "learned",  # learned | bert (80 % [MASK] / 10 % random token / 10 % unchanged)
    },
    "decoder": {
        "enabled": True,
        "channels": [256, 128, 64, 32],  # conv widths, one per 2x upsampling stage (the first log2(patch) are used)
        "target": "image",  # image (whole view, eq. 9) | masked (masked tokens' pixels only)
    },
    "optim": {
        "epochs": 100,
        "batch_size": 64,  # per process
        "base_lr": 5e-4,  # lr = base_lr * global_batch / 256
        "min_lr": 1e-6,
        "warmup_epochs": 10,
        "weight_decay": 0.04,
        "weight_decay_end": 0.4,
        "momentum_teacher": 0.996,
        "clip_grad": 3.0,
        "freeze_last_layer": 1,
        "amp": "auto",  # auto (bf16 on GPU when supported, else fp16; fp32 on CPU) | bf16 | fp16 | none
        "compile": False,
        "channels_last_decoder": True,  # measured faster on CPU (benchmarks/step_time.py)
    },
    "log": {
        "every": 10,  # steps between metric lines
        "progress": True,
        "tensorboard": True,
        "knn_every": 0,  # epochs between online k-NN evaluations (0: off)
        "knn_train_subset": 5000,
        "knn_test_subset": 1000,
        "knn_k": 20,
        "checkpoint_every_steps": 0,  # 0: checkpoint at each epoch end only
    },
}


class ConfigError(ValueError):
    """A config file or override names an unknown key or an invalid value."""


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


VALID_KEYS = sorted(_flatten(DEFAULTS))
_SECTIONS = {k for k, v in DEFAULTS.items() if isinstance(v, dict)}


def _unknown(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, VALID_KEYS + sorted(_SECTIONS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; valid sections: {', '.join(sorted(_SECTIONS))}"
    return ConfigError(f"unknown config key '{key}' in {where}{hint}")


def _merge(base: dict, update: dict, where: str, prefix: str = "") -> None:
    for k, v in update.items():
        key = f"{prefix}{k}"
        if k not in base:
            raise _unknown(key, where)
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"config key '{key}' in {where} must be a mapping, got {v!r}")
            _merge(base[k], v, where, key + ".")
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


def apply_override(cfg: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key=value, e.g. optim.lr=1e-3")
    key, _, text = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise _unknown(key, "--set")
        if i == len(parts) - 1:
            if isinstance(node[part], dict):
                raise ConfigError(f"--set {key}: '{key}' is a section; set one of its keys, e.g. {key}.{next(iter(node[part]))}")
            node[part] = parse_value(text)
        else:
            node = node[part]


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """Defaults, then the YAML preset at ``path``, then each ``key=value`` override, validated."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at top level")
        _merge(cfg, data, str(path))
    for item in overrides or []:
        apply_override(cfg, item)
    validate(cfg)
    return cfg


def merge_dict(cfg: dict, update: dict, where: str = "config") -> dict:
    """Return a copy of ``cfg`` updated by the nested ``update`` (validated like a preset)."""
    out = copy.deepcopy(cfg)
    _merge(out, update, where)
    validate(out)
    return out


def _choice(cfg: dict, key: str, options: tuple) -> None:
    section, name = key.split(".")
    if cfg[section][name] not in options:
        raise ConfigError(f"{key}={cfg[section][name]!r} is not one of {', '.join(map(str, options))}")


def validate(cfg: dict) -> None:
    _choice(cfg, "data.bad_files", ("error", "skip"))
    _choice(cfg, "data.channels", (1, 3))
    _choice(cfg, "mask.strategy", ("none", "random", "attention"))
    _choice(cfg, "mask.replacement", ("learned", "bert"))
    _choice(cfg, "decoder.target", ("image", "masked"))
    _choice(cfg, "optim.amp", ("auto", "bf16", "fp16", "none"))
    _choice(cfg, "augment.backend", ("pil", "tensor"))
    _choice(cfg, "model.arch", ("vit_tiny", "vit_small", "vit_base", "swin_tiny"))
    if len(cfg["data"]["mean"]) != cfg["data"]["channels"] or len(cfg["data"]["std"]) != cfg["data"]["channels"]:
        raise ConfigError(
            f"data.mean / data.std need {cfg['data']['channels']} values (data.channels), "
            f"got {cfg['data']['mean']} / {cfg['data']['std']}"
        )
    m = cfg["model"]
    for size_key in ("global_size", "local_size"):
        size = cfg["augment"][size_key]
        if size % m["patch_size"]:
            raise ConfigError(
                f"augment.{size_key}={size} is not divisible by model.patch_size={m['patch_size']}"
            )
    if m["img_size"] % m["patch_size"]:
        raise ConfigError(f"model.img_size={m['img_size']} is not divisible by model.patch_size={m['patch_size']}")
    if not (0.0 <= cfg["mask"]["p"] <= 1.0):
        raise ConfigError(f"mask.p={cfg['mask']['p']} must lie in [0, 1]")
    if int(cfg["mask"]["num"]) < 1:
        raise ConfigError(f"mask.num={cfg['mask']['num']} must be >= 1")
    if cfg["optim"]["batch_size"] < 1 or cfg["optim"]["epochs"] < 1:
        raise ConfigError("optim.batch_size and optim.epochs must be >= 1")
    if cfg["log"]["knn_every"] and cfg["data"]["name"] == "folder":
        raise ConfigError("log.knn_every needs labels, but data.name=folder is unlabelled: set log.knn_every=0 "
                          "or use data.name=image_folder (class subfolders)")
    if len(cfg["augment"]["blur_p"]) != 3:
        raise ConfigError("augment.blur_p needs 3 probabilities: global 1, global 2, locals")


def save_config(cfg: dict, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))
