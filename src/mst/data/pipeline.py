"""From a dataset of (PIL image, label) to the :class:`~mst.data.batch.Batch` a method's step reads.

A method names the views it trains on (``Method.views``): ``multicrop`` (2 global + N local crops, MST/DINO) or
``single`` (one RandomResizedCrop + flip, MIM methods and fine-tuning, with the crop box and flip reported). The
config's ``augment.backend`` picks where augmentation runs: ``pil`` per image in DataLoader workers, seeded per
sample; ``tensor`` batched on the training device, seeded per step. Every sample also carries its dataset index.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from .batch import Batch
from .dataset import AugmentedDataset, collate_crops
from .tensor_multicrop import GPUMultiCrop, RawImageDataset, collate_raw
from .multicrop import MultiCropTransform
from .single_view import GPUSingleView, SingleViewTransform

VIEW_KINDS = ("multicrop", "single")


class IndexedDataset(Dataset):
    """``base[i] + (i,)``: a sample remembers where it came from (AMT's per-image maps)."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        return (*self.base[i], int(i))

    def __getitems__(self, indices: list[int]) -> list:
        if hasattr(self.base, "__getitems__"):  # the base fetches a whole batch at once
            return [(*sample, int(i)) for sample, i in zip(self.base.__getitems__(indices), indices)]
        return [self[i] for i in indices]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)


def _split_index(samples: list) -> tuple[list, torch.Tensor]:
    return [s[:-1] for s in samples], torch.tensor([s[-1] for s in samples], dtype=torch.int64)


# collate functions are module-level so DataLoader workers can pickle them (spawn start method: macOS, Windows)
def collate_indexed_raw(samples: list):
    rest, index = _split_index(samples)
    return collate_raw(rest), index


def collate_indexed_crops(samples: list):
    rest, index = _split_index(samples)
    return collate_crops(rest), index


def collate_indexed_single(samples: list):
    """[((view, box, flip), label, index)] -> (views, boxes, flips, labels, index), each stacked."""
    rest, index = _split_index(samples)
    views = torch.stack([v for (v, _, _), _ in rest])
    boxes = torch.stack([b for (_, b, _), _ in rest])
    flips = torch.stack([f for (_, _, f), _ in rest])
    labels = torch.tensor([int(label) for _, label in rest], dtype=torch.int64)
    return views, boxes, flips, labels, index


class ViewPipeline:
    """``dataset`` (for the sampler and DataLoader), ``collate`` (in the workers) and ``to_batch`` (on the
    training device; the tensor backend augments here with the step's generator)."""

    def __init__(self, dataset: Dataset, collate: Callable[[list], Any],
                 to_batch: Callable[[Any, torch.device, torch.Generator | None], Batch]) -> None:
        self.dataset, self.collate, self.to_batch = IndexedDataset(dataset), collate, to_batch

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


def _stats(cfg: dict) -> tuple[list, list, int]:
    d = cfg["data"]
    return d["mean"], d["std"], int(d["channels"])


def view_settings(cfg: dict, size: int | None = None) -> dict:
    """The augment section with ``global_size``: the global views' side (``size``, else ``model.img_size``), the
    one size the transforms crop to."""
    return {**dict(cfg["augment"]), "global_size": int(size if size is not None else cfg["model"]["img_size"])}


def build_pipeline(kind: str, cfg: dict, base: Dataset, size: int | None = None) -> ViewPipeline:
    """The view pipeline ``kind`` (multicrop | single) over ``base`` for the config's augment section and backend.
    ``size``: the single view's side when the method crops wider than its input (zoom-in); else the global size."""
    # the transforms take the augment section and the global views' side (model.img_size, or the wider view)
    a, seed, backend = view_settings(cfg, size), int(cfg["seed"]), cfg["augment"]["backend"]
    mean, std, channels = _stats(cfg)
    if kind not in VIEW_KINDS:
        raise ValueError(f"views={kind!r} is not one of {', '.join(VIEW_KINDS)}")
    if backend == "tensor":
        raw = RawImageDataset(base, channels)
        if kind == "multicrop":
            aug = GPUMultiCrop(a, mean, std, channels)

            def to_batch(loaded, device, gen):
                (images, labels), index = loaded
                images = images.to(device, non_blocking=True) if torch.is_tensor(images) else images
                return Batch(aug(images, generator=gen), labels.to(device), index.to(device))
        else:
            single = GPUSingleView(a["global_size"], a["global_scale"], a["flip_p"], mean, std, channels,
                                   a["crop"], int(a["pad"]))

            def to_batch(loaded, device, gen):
                (images, labels), index = loaded
                images = images.to(device, non_blocking=True) if torch.is_tensor(images) else images
                view, boxes, flips = single(images, generator=gen)
                return Batch([view], labels.to(device), index.to(device), boxes, flips)

        return ViewPipeline(raw, collate_indexed_raw, to_batch)

    if kind == "multicrop":
        ds = AugmentedDataset(base, MultiCropTransform(a, mean, std, channels), seed=seed)

        def to_batch(loaded, device, gen):
            (views, labels), index = loaded
            return Batch([v.to(device, non_blocking=True) for v in views], labels.to(device), index.to(device))

        return ViewPipeline(ds, collate_indexed_crops, to_batch)

    transform = SingleViewTransform(a["global_size"], a["global_scale"], a["flip_p"], mean, std, channels,
                                    rand_augment=a["rand_augment"], crop=a["crop"], pad=int(a["pad"]))
    ds = AugmentedDataset(base, transform, seed=seed)

    def to_batch(loaded, device, gen):
        views, boxes, flips, labels, index = loaded
        return Batch([views.to(device, non_blocking=True)], labels.to(device), index.to(device), boxes.to(device),
                     flips.to(device))

    return ViewPipeline(ds, collate_indexed_single, to_batch)
