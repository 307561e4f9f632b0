"""Frozen-backbone feature extraction and the data/model plumbing every evaluation shares.

All probes (k-NN, linear, dense) read features through :func:`extract_features` so "which tokens, after which
norm" is decided in one place. Images arrive as normalised float tensors (B, C, H, W); helpers here turn
Fashion-MNIST uint8 arrays or the config's image-folder datasets into such tensors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from mst.data.dataset import balanced_subset_indices, subset_indices

from mst.models.backbone import ViTBackbone
from mst.models.backbones import create_backbone

FeatureKind = Literal["cls", "avgpool", "last4", "last4_avgpool", "patches"]
KINDS: tuple[str, ...] = ("cls", "avgpool", "last4", "last4_avgpool", "patches")
Source = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | Dataset | DataLoader | Iterable
Log = Callable[[str], None]


# ----------------------------------------------------------------------------------------------- images


def normalize_images(
    images: np.ndarray | torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    channels: int | None = None,
    size: int | None = None,
) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float (N, C, H, W) normalised with the training mean/std.

    Gray images are repeated to ``channels`` (default: len(mean)); ``size`` resizes (bilinear) when the model was
    trained at another resolution.
    """
    x = torch.as_tensor(np.asarray(images))
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {x.dtype}")
    x = x.float().div_(255.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    channels = int(channels or len(mean))
    if x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 3 and channels == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous()


class _Transformed(Dataset):
    """(PIL, label) dataset -> (normalised tensor, label) through the data module's eval transform."""

    def __init__(self, base: Dataset, transform: Callable) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        img, label = self.base[i]
        return self.transform(img), label


def load_eval_split(
    cfg: dict, split: str, subset: int | None = None, seed: int = 0, root: str | Path | None = None,
    require_labels: bool = True, balanced: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | Dataset:
    """Labelled eval images for a checkpoint's config.

    Fashion-MNIST comes back as in-memory tensors (images (N, C, S, S), labels); an ``image_folder`` config as a
    Dataset of (tensor, label) built by the data module (``build_dataset`` + ``EvalTransform``); an unlabelled
    ``folder`` only with ``require_labels=False`` (labels -1, for figures). S is ``augment.global_size``.
    ``balanced``: the subset has the same count per class, drawn as ``mst finetune --train-subset`` draws its
    labels (so a k-NN bank can hold exactly the fine-tune's labelled images).
    """
    data = dict(cfg["data"])
    if root is not None:
        data["root"] = str(root)
    size = int(cfg["model"]["img_size"])
    if data["name"] == "fashion_mnist":
        from mst.data.fashion_mnist import load_fashion_mnist

        images, labels = load_fashion_mnist(data["root"], "train" if split == "train_val" else split)
        if data.get("classes"):  # data.classes: those classes only, renumbered as build_dataset does
            kept = [int(c) for c in data["classes"]]
            sel = np.flatnonzero(np.isin(labels, kept))
            remap = np.full(int(labels.max()) + 1, -1, np.int64)
            remap[kept] = np.arange(len(kept))
            images, labels = images[sel], remap[labels[sel]]
        if split == "train_val":  # the training labels held out to choose a recipe (data.val_share)
            from mst.data.dataset import absolute_indices, build_dataset

            idx = absolute_indices(build_dataset(data, "train_val"))
        else:
            idx = _subset(labels, subset, seed, balanced)
        x = normalize_images(images[idx], data["mean"], data["std"], data["channels"], size)
        return x, torch.as_tensor(labels[idx], dtype=torch.long)
    if data["name"] == "image_folder" or (data["name"] == "folder" and not require_labels):
        from mst.data import EvalTransform, build_dataset

        if split != "train_val":  # the pretraining subset never shrinks an evaluation split (it defines train_val)
            data.update(split=split, subset=None)
        base = build_dataset(data, split)
        idx = _subset(np.asarray(base.targets), subset, seed, balanced)
        crop = float(cfg["augment"]["eval_crop"])
        ds = _Transformed(base, EvalTransform(size, data["mean"], data["std"], data["channels"], crop))
        return Subset(ds, idx.tolist()) if len(idx) < len(base) else ds
    from mst.data import DataError

    raise DataError(f"the images at {data.get('root')} (data.name={data['name']}) have no labels to evaluate on: pass "
                    "--data with a labelled folder (class subfolders, optionally under train/ val/ test/)")


def _subset(labels: np.ndarray, subset: int | None, seed: int, balanced: bool) -> np.ndarray:
    if balanced and subset is not None:
        return balanced_subset_indices(np.asarray(labels), int(subset), seed)
    return subset_indices(len(labels), subset, seed)


def with_data(cfg: dict, data: dict | str | Path | None) -> dict:
    """The checkpoint config with its data section adjusted for evaluation: a dict updates ``data.*``; a path
    replaces ``data.root`` and its kind is detected (class subfolders -> image_folder, IDX files -> fashion_mnist,
    else an unlabelled folder). The checkpoint's channels, statistics and image size stay."""
    if data is None:
        return cfg
    cfg = {**cfg, "data": dict(cfg["data"])}
    if not isinstance(data, dict):
        from mst.data.inspect import detect_kind

        data = {"root": str(data), "name": detect_kind(data)[0]}
    cfg["data"].update(data)
    for key in ("alpha", "small_images", "holdout"):  # keys a checkpoint of an older version does not hold
        cfg["data"].setdefault(key, {"alpha": "black", "small_images": "upscale", "holdout": 0.2}[key])
    return cfg


# ----------------------------------------------------------------------------------------------- models


def random_init_backbone(cfg: dict, seed: int = 0) -> ViTBackbone:
    """A freshly initialised backbone of the checkpoint's architecture: the 'no pretraining' baseline."""
    with torch.random.fork_rng(devices=[]):  # CPU generator only: the caller's RNG streams are left untouched
        torch.default_generator.manual_seed(seed)
        model = create_backbone(cfg["model"], in_chans=int(cfg["data"]["channels"]))
    model.which = "random-init"
    return model.eval()


def load_eval_backbone(
    ckpt: str | Path, which: str | None = None, device: str | torch.device = "cpu", random_init: bool = False,
    seed: int = 0,
) -> tuple[ViTBackbone, dict]:
    """(backbone in eval mode, config) from a checkpoint; ``random_init`` keeps the config but not the weights.
    ``which``: a backbone of the checkpoint (teacher / student for MST, encoder for MIM); None: its default."""
    from mst.checkpoint import load_backbone, load_checkpoint

    if random_init:
        cfg = load_checkpoint(ckpt)["config"]
        return random_init_backbone(cfg, seed).to(device), cfg
    return load_backbone(ckpt, which, device)


def default_device(device: str | torch.device | None = None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ----------------------------------------------------------------------------------------------- features


def _batches(source: Source, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Uniform (images, labels-or-None) batches from a tensor, a (images, labels) pair, a Dataset or a loader."""
    if isinstance(source, torch.Tensor):
        for i in range(0, len(source), batch_size):
            yield source[i : i + batch_size], None
        return
    if isinstance(source, (tuple, list)) and len(source) == 2 and isinstance(source[0], torch.Tensor):
        images, labels = source
        for i in range(0, len(images), batch_size):
            yield images[i : i + batch_size], torch.as_tensor(labels[i : i + batch_size])
        return
    if isinstance(source, Dataset):
        source = DataLoader(source, batch_size=batch_size, shuffle=False)
    for batch in source:
        if isinstance(batch, torch.Tensor):
            yield batch, None
        else:
            yield batch[0], torch.as_tensor(batch[1])


def _num_blocks(backbone: ViTBackbone, n: int) -> int:
    """Last-n features of a ViT shallower than n use all of its blocks (a depth-2 CPU model has only 2)."""
    return min(n, len(backbone.vit.blocks))


def backbone_features(backbone: ViTBackbone, x: torch.Tensor, kind: str = "cls", n_last: int = 4) -> torch.Tensor:
    """Features of one batch (no grad handling here: callers decide).

    cls: final-norm CLS (B, D). avgpool: mean of the final-norm patch tokens (B, D). last4: CLS of each of the last ``n_last`` blocks, each through the final norm,
    concatenated (B, n*D). last4_avgpool: last4 plus the mean of the last block's normed patch tokens
    (B, (n+1)*D). patches: final-norm patch tokens (B, N, D).
    """
    if kind in ("cls", "avgpool", "patches"):
        out = backbone(x)
        return {"cls": out.cls, "avgpool": out.patches.mean(dim=1), "patches": out.patches}[kind]
    if kind not in KINDS:
        raise ValueError(f"feature kind {kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(backbone, ViTBackbone):
        raise ValueError(f"feature kind {kind!r} needs a ViT (a CLS token per block); use kind='cls' for Swin")
    backbone.embed(x[:1])  # same divisibility check and message as the backbone's own forward
    inter = backbone.vit.forward_intermediates(
        x, indices=_num_blocks(backbone, n_last), return_prefix_tokens=True, norm=True,
        output_fmt="NLC", intermediates_only=True,
    )
    feats = [prefix[:, 0] for _, prefix in inter]
    if kind == "last4_avgpool":
        feats.append(inter[-1][0].mean(dim=1))
    return torch.cat(feats, dim=-1)


@torch.no_grad()
def extract_features(
    backbone: ViTBackbone,
    source: Source,
    kind: str = "cls",
    batch_size: int = 256,
    device: str | torch.device | None = None,
    n_last: int = 4,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the frozen backbone over ``source`` in eval mode: (features float32 on CPU, labels or None).

    ``source`` may be an image tensor (N, C, H, W), an (images, labels) pair, a Dataset / DataLoader yielding
    (image, label). ``device`` (default: the backbone's) is where batches go; the backbone is not moved. The
    backbone's train/eval mode is restored afterwards (safe inside a training loop). "patches" of a whole
    dataset are large (N * tokens * D floats): extract them for small sets only.
    """
    if kind not in KINDS:
        raise ValueError(f"feature kind {kind!r} is not one of {', '.join(KINDS)}")
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    try:
        for x, y in _batches(source, batch_size):
            f = backbone_features(backbone, x.to(device, non_blocking=True), kind, n_last)
            feats.append(f.float().cpu())
            if y is not None:
                labels.append(y.long().cpu())
    finally:
        backbone.train(was_training)
    if not feats:
        raise ValueError("no images to extract features from (empty dataset)")
    return torch.cat(feats), (torch.cat(labels) if labels else None)
