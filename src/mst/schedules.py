"""Per-iteration schedules (DINO style): linear warm-up then cosine, precomputed as arrays."""
from __future__ import annotations

import numpy as np


def cosine_schedule(
    base: float, final: float, epochs: int, iters_per_epoch: int, warmup_epochs: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """Value at every iteration: linear from ``warmup_start`` to ``base`` over ``warmup_epochs``, then a half
    cosine from ``base`` to ``final``. Length ``epochs * iters_per_epoch``."""
    total = epochs * iters_per_epoch
    warm = min(warmup_epochs * iters_per_epoch, total)
    warmup = np.linspace(warmup_start, base, warm, endpoint=False) if warm > 0 else np.array([])
    rest = total - warm
    t = np.arange(rest)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * t / max(rest, 1)))
    sched = np.concatenate([warmup, cosine])
    assert len(sched) == total
    return sched


def multistep_schedule(base: float, milestones: list[int], gamma: float, epochs: int, iters_per_epoch: int,
                       warmup_epochs: int = 0, warmup_start: float = 0.0) -> np.ndarray:
    """Linear warm-up to ``base``, then ``base * gamma ** (number of milestone epochs passed)`` (SimMIM ViT-B)."""
    total = epochs * iters_per_epoch
    warm = min(warmup_epochs * iters_per_epoch, total)
    it = np.arange(total)
    passed = np.searchsorted(np.asarray(sorted(milestones), dtype=np.int64) * iters_per_epoch, it, side="right")
    sched = base * float(gamma) ** passed
    if warm > 0:
        sched[:warm] = np.linspace(warmup_start, base, warm, endpoint=False)
    return sched


def build_schedules(cfg: dict, iters_per_epoch: int, world_size: int) -> dict[str, np.ndarray]:
    """lr (scaled by the global batch / 256) and weight decay, per iteration (methods add their own, e.g. the
    teacher momentum)."""
    o = cfg["optim"]
    global_batch = int(o["batch_size"]) * world_size
    lr = float(o["base_lr"]) * global_batch / 256.0
    epochs, warm = int(o["epochs"]), int(o["warmup_epochs"])
    if o["lr_schedule"] == "multistep":
        lrs = multistep_schedule(lr, list(o["lr_milestones"]), float(o["lr_gamma"]), epochs, iters_per_epoch, warm)
    else:
        lrs = cosine_schedule(lr, float(o["min_lr"]), epochs, iters_per_epoch, warm)
    return {
        "lr": lrs,
        "wd": cosine_schedule(float(o["weight_decay"]), float(o["weight_decay_end"]), epochs, iters_per_epoch),
    }
