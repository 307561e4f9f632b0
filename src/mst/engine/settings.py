"""The engine's sections: ``optim`` (what every method's optimisation shares) and ``log``."""
from __future__ import annotations

from dataclasses import dataclass

from mst.settings import AT_LEAST_1, NON_NEGATIVE, POSITIVE, RATIO, Each, ListOf, Range, Settings, setting


@dataclass(frozen=True)
class OptimSettings(Settings, section="optim"):
    epochs: int | str = setting(100, "training epochs (auto: about 1500 steps of the data)", kind=int, auto=True,
                                range=AT_LEAST_1)
    layer_decay: float = setting(1.0, "pretraining from model.init: lr x decay^(depth + 1 - layer) per backbone "
                                 "layer (1: off)", range=Range(0, 1, lo_open=True))
    freeze_blocks: int = setting(-1, "pretraining from model.init: hold the patch embedding and the first N blocks "
                                 "(-1: off)", range=Range(-1))
    freeze_epochs: int = setting(0, "... for the first K epochs (0: the whole run)", range=NON_NEGATIVE)
    batch_size: int | str = setting(64, "images per process (auto: capped by the images)", kind=int, auto=True,
                                    range=AT_LEAST_1)
    base_lr: float | str = setting(5e-4, "lr = base_lr * global_batch / 256 (auto: the method's small-budget lr)",
                                   kind=float, auto=True, range=POSITIVE)
    min_lr: float = setting(1e-6, "the cosine schedule's end", range=NON_NEGATIVE)
    warmup_epochs: int = setting(10, "linear warm-up epochs", range=NON_NEGATIVE)
    lr_schedule: str = setting("cosine", "cosine (to min_lr) | multistep (x lr_gamma at each of lr_milestones, "
                               "SimMIM)", choices=("cosine", "multistep"))
    lr_milestones: list = setting([], "epochs, for multistep", kind=ListOf(int), range=Each(NON_NEGATIVE))
    lr_gamma: float = setting(0.1, "multistep factor", range=POSITIVE)
    weight_decay: float = setting(0.04, "AdamW weight decay (start of its cosine)", range=NON_NEGATIVE)
    weight_decay_end: float = setting(0.4, "cosine from weight_decay; equal to it = constant", range=NON_NEGATIVE)
    betas: list = setting([0.9, 0.999], "AdamW betas", range=Each(RATIO, n=2))
    clip_grad: float = setting(3.0, "gradient clipping (0: none)", range=NON_NEGATIVE)
    clip_mode: str = setting("param", "param (each parameter's norm, DINO) | norm (the global norm, SimMIM)",
                             choices=("param", "norm"))
    amp: str = setting("auto", "auto (GPU: bf16 when supported, else fp16; CPU: fp32) | bf16 (also on CPU) | fp16 | "
                       "none", auto=False, choices=("auto", "bf16", "fp16", "none"), resumable=True)
    compile: bool = setting(False, "torch.compile the method", resumable=True)
    channels_last_decoder: bool = setting(True, "channels-last CNN decoder (measured faster on CPU)",
                                          resumable=True)


@dataclass(frozen=True)
class LogSettings(Settings, section="log"):
    every: int = setting(10, "steps between metric lines", range=AT_LEAST_1, resumable=True)
    progress: bool = setting(True, "a progress bar", resumable=True)
    tensorboard: bool = setting(True, "TensorBoard events beside metrics.jsonl", resumable=True)
    knn_every: int = setting(0, "epochs between online evaluations (k-NN; fine-tuning: top-1) (0: off)",
                             range=NON_NEGATIVE, resumable=True)
    knn_train_subset: int | None = setting(5000, "online k-NN: training images (null: the whole split)",
                                           nullable=True, range=AT_LEAST_1, resumable=True)
    knn_test_subset: int | None = setting(1000, "online k-NN: test images (null: the whole split)", nullable=True,
                                          range=AT_LEAST_1, resumable=True)
    knn_k: int = setting(20, "online k-NN neighbours", range=AT_LEAST_1, resumable=True)
    checkpoint_every_steps: int = setting(0, "0: checkpoint at each epoch end only", range=NON_NEGATIVE,
                                          resumable=True)
