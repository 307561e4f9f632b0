"""torch.distributed set-up (torchrun env vars; NCCL on GPU, gloo on CPU) and a resumable sharded sampler."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE > 1); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device in (None, "auto") else str(device).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_flags(flags: list[bool], device: torch.device) -> list[bool]:
    """True on any rank -> True on all (so every rank stops or checkpoints at the same step)."""
    t = torch.tensor([float(f) for f in flags], device=device)
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def average_across_ranks(metrics: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of each scalar over all processes (what the logs show is the global batch's value)."""
    if not is_dist():
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([float(metrics[k]) for k in keys], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, (t / dist.get_world_size()).tolist()))


def check_same_length(n: int, device: torch.device) -> None:
    """Every process must see the same number of images (else their epochs differ and DDP deadlocks)."""
    if not is_dist():
        return
    t = torch.tensor([n, -n], device=device, dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if t[0].item() != -t[1].item():
        raise RuntimeError(f"processes see different dataset sizes ({-t[1].item()} to {t[0].item()} images): "
                           "the data folder must be the same on every node (and bad_files=skip must skip alike)")


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


class ResumableSampler(Sampler[int]):
    """Like DistributedSampler (shuffle per epoch from ``seed + epoch``, pad to a multiple of the world size,
    each rank takes every world_size-th index, whole batches only), plus ``start_batch`` to resume mid-epoch."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        if n < batch_size * world_size:
            raise ValueError(
                f"the dataset has {n} images, fewer than one global batch ({batch_size} x {world_size} processes); "
                f"lower optim.batch_size or add images"
            )
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world_size
        self.seed, self.epoch, self.start_batch = seed, 0, 0
        self.batches_per_epoch = n // (batch_size * world_size)  # drop_last, as DINO does

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g)
        mine = order[self.rank :: self.world][: self.batches_per_epoch * self.batch_size]
        return iter(mine[self.start_batch * self.batch_size :].tolist())

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size
