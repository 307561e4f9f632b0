"""Every config key with its default: the common sections here, and the registry of the sections methods read
(``Method.sections``), which their owners declare beside their code (``Method.defaults``, ``Degradation.defaults``).

``mst.config`` merges them with presets and overrides and validates the result."""
from __future__ import annotations

import copy
from typing import Any

COMMON: dict[str, Any] = {
    "seed": 0,
    "method": "mst",  # a registered method: mst | dino (mst, no mask, no decoder) | mae | simmim | finetune
    "data": {
        # auto: what data.root holds (IDX files -> fashion_mnist; class subfolders -> image_folder; else folder)
        "name": "auto",  # fashion_mnist | folder (unlabelled, any nesting) | image_folder (class subdirs) | auto
        "root": None,  # None -> /usr/share/datasets/fashion-mnist for fashion_mnist
        "split": "train",
        "subset": None,  # int: a fixed random subset of that many images (seeded)
        "balanced": False,  # subset: the same number of images per class (labelled data only)
        "subset_seed": 0,  # which fixed subset
        "channels": "auto",  # auto: the files' band count (grey 1, colour 3, multiband N); 1 <-> 3 convert, else error
        "bad_files": "error",  # error | skip
        "small_images": "upscale",  # images smaller than the crop: upscale (shorter side to it) | skip | error
        "alpha": "black",  # 8-bit transparency: composite onto black | white | drop it | keep it as a band
        "classes": None,  # keep only these classes (label indices) of labelled data, relabelled 0..K-1 in this order
        "holdout": 0.2,  # a labelled folder with no val/ or test/: this share of each class is its test split
        "val_share": 0.0,  # > 0: this share of each class of the training (sub)set is held out to choose a recipe
        "num_workers": 0,
        "mean": "auto",  # auto: Fashion-MNIST's [0.2860]; a folder's measured on a seeded sample of 256 images
        "std": "auto",
    },
    "augment": {  # multi-crop methods (MST) use all of it; single-view methods one global crop + flip
        "global_size": "auto",  # follows model.img_size (the one size key); a different value is an error
        "local_size": "auto",  # auto: 3/7 of the global crop (DINO's 96 of 224), a multiple of the patch
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
        "rand_augment": None,  # single view, pil backend: a timm RandAugment spec, e.g. rand-m9-mstd0.5-inc1
        "crop": "rrc",  # single view: rrc (RandomResizedCrop, global_scale) | pad (zero-pad by `pad` px, random crop)
        "pad": 2,  # crop=pad: pixels of zero padding on each side (the light shift of small-image fine-tuning)
        # evaluation: resize the shorter side to global_size / eval_crop, centre crop global_size (0.875: 256 -> 224,
        # DINO's and MAE's ImageNet protocol; 1: the whole image, e.g. Fashion-MNIST's 28 px)
        "eval_crop": 1.0,
    },
    "model": {
        "arch": "vit_tiny",  # a registered backbone: vit_tiny | vit_small | vit_base | vit_large | beit_base | swin_tiny
        "patch_size": "auto",  # auto: 16 from 160 px, 8 from 48 px, else 4
        "img_size": "auto",  # auto: 28 for Fashion-MNIST; a folder's median shorter side, capped (CPU 64, GPU 224)
        "depth": None,  # override the arch's depth (e.g. a shallower ViT for CPU runs)
        "embed_dim": None,  # override the arch's width (ViT only; a narrower ViT for CPU runs)
        "num_heads": None,  # override the arch's number of heads (must divide the width)
        "drop_path": 0.1,
        "pos_embed": "learned",  # learned | sincos (fixed 2-d sin-cos, MAE's encoder)
        "grad_checkpointing": False,
        "init": None,  # start from existing weights: timm:NAME | timm:NAME=FILE | an mst run, checkpoint or export
    },
    "optim": {
        "epochs": 100,
        "layer_decay": 1.0,  # pretraining from model.init: lr x decay^(depth + 1 - layer) per backbone layer (1: off)
        "freeze_blocks": -1,  # pretraining from model.init: hold the patch embedding and the first N blocks (-1: off)
        "freeze_epochs": 0,  # ... for the first K epochs (0: the whole run)
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
        "amp": "auto",  # auto (GPU: bf16 when supported, else fp16; CPU: fp32) | bf16 (also on CPU) | fp16 | none
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

# Method sections: each is declared by its owner, next to the code that reads it (``Method.defaults``: a method's
# own sections, e.g. MST's ``dino`` and ``mst``; ``Degradation.defaults``: one degradation's keys of the shared
# ``degrade`` section), and registered here when the owner's class is defined. A section (or a key of a shared
# one) declared twice with different defaults is an error: one key, one default.
SECTIONS: dict[str, dict[str, Any]] = {}
_OWNERS: dict[str, str] = {}  # section or "section.key" -> who declared it


def add_section(name: str, defaults: dict[str, Any], owner: str) -> None:
    """Register ``owner``'s section ``name`` (every key with its default). Declaring it again is fine with the same
    defaults (a subclass re-declaring its parent's) or from the same owner (a re-run notebook cell: its new
    defaults replace the old); another owner with other defaults is an error."""
    if name in COMMON:
        raise ValueError(f"{owner} declares {name!r}, a common config section")
    first = _OWNERS.get(name, owner)
    if name in SECTIONS and SECTIONS[name] != defaults and first != owner:
        raise ValueError(f"config section {name!r} is declared by {first} and, with other defaults, by {owner}")
    SECTIONS[name] = copy.deepcopy(defaults)
    _OWNERS[name] = first


def add_section_keys(name: str, defaults: dict[str, Any], owner: str) -> None:
    """Add ``owner``'s keys to the shared section ``name`` (created if new). A key declared before must come with
    the same default or from the same owner (the rule of :func:`add_section`); nothing is added when one clashes."""
    section = SECTIONS.get(name, {})
    for key, value in defaults.items():
        first = _OWNERS.get(f"{name}.{key}", owner)
        if key in section and section[key] != value and first != owner:
            raise ValueError(f"config key {name}.{key} is declared by {first} and, with another default, by {owner}")
    section = SECTIONS.setdefault(name, {})
    for key, value in defaults.items():
        section[key] = copy.deepcopy(value)
        _OWNERS.setdefault(f"{name}.{key}", owner)


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
