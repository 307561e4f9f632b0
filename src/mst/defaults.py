"""Every config key with its default: the common sections, and the sections methods read (``Method.sections``).

``mst.config`` merges them with presets and overrides and validates the result."""
from __future__ import annotations

from typing import Any

COMMON: dict[str, Any] = {
    "seed": 0,
    "method": "mst",  # a registered method: mst | mae | simmim | finetune (plain DINO is mst with mst.mask=none)
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
        "alpha": "black",  # transparency: composite onto black | white | drop the alpha band
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
        "centering": "center",  # center (DINO: EMA of the teacher's mean output) | sinkhorn (DINOv2: Sinkhorn-Knopp)
        "sinkhorn_iters": 3,  # DINOv2's number of normalisations
        "koleo_weight": 0.0,  # KoLeo on the student's global-view CLS tokens (DINOv2: 0.1; 0: off)
        "momentum_teacher": 0.996,  # cosine to 1 over training
        "freeze_last_layer": 1,  # epochs during which the prototypes do not move
    },
    "mst": {  # MST's mask and decoder (eq. 5-11)
        "mask": "attention",  # a registered strategy: none | random | attention | attmask | amt (throws: no decoder)
        "mask_num": 8,  # attention: the lowest 1/num tokens are candidates
        "mask_p": 0.1,  # probability of masking a candidate (random: any token)
        "importance": "teacher",  # what importance-driven strategies read: teacher (its CLS attention) | none
        "mask_ratio": 0.45,  # attmask: share of tokens masked; amt: share masked (AMT's MAE reference)
        "throw_ratio": 0.40,  # amt: share of the global views' tokens thrown (needs mst.decoder=none; AMT's MAE ref.)
        "replacement": "learned",  # learned | bert (80 % [MASK] / 10 % random token / 10 % unchanged)
        "decoder": "cnn",  # an image decoder (cnn | linear) or none
        "decoder_channels": "auto",  # cnn widths, one per 2x upsampling (auto: log2(patch) of 256, 128, 64, ...)
        "restore_target": "image",  # image (whole view, eq. 9) | masked (masked tokens' pixels only)
        "ce_weight": 1.0,  # lambda1 of eq. 11
        "restore_weight": 0.6,  # lambda2 of eq. 11
    },
    "mim": {  # masked image modelling, shared by MAE and SimMIM
        "mask": "patches",  # patches (MAE) | blocks (SimMIM) | random | attmask (needs mim.importance) | ...
        "mask_ratio": 0.75,  # share of tokens (patches) or mask units (blocks) masked, in [0, 1)
        "mask_patch_size": None,  # blocks: mask unit side in pixels, a multiple of model.patch_size (null: patch)
        "mask_num": 8,  # attention (MST's, SimMIM only: varying counts): the lowest 1/num tokens are candidates
        "mask_p": 0.1,  # attention: probability of masking a candidate; random: any token
        "norm_pix_loss": True,  # target = per-patch normalised pixels
        "importance": None,  # encoder (no-grad pass) | maps (AMT's, amt.enabled) | none; null: maps with AMT, else none
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
        "mask_ratio": None,  # null: the method's reference (its amt_reference: MAE 0.45, SimMIM 0.44 of the units)
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
