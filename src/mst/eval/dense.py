"""A dense-prediction probe on frozen patch tokens (a small stand-in for the paper's detection/segmentation
transfer, which needs COCO/ADE20K and a detector).

Canvases are built by pasting Fashion-MNIST items at random places; each pixel's label is the class + 1 of the
item whose *foreground* covers it (0 = background). A linear classifier per patch token, upsampled bilinearly to
pixels and trained with per-pixel cross-entropy, then measures how much spatial/semantic information the patch
tokens carry (mIoU, pixel accuracy).
"""
from __future__ import annotations

import math
from pathlib import Path
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mst.eval.features import Log, default_device, extract_features, load_eval_backbone, normalize_images

__all__ = ["FOREGROUND", "make_dense_set", "DenseProbe", "confusion_matrix", "scores_from_confusion", "miou",
           "train_dense_probe", "run_dense"]

# A pixel belongs to an item when its intensity is above 10 % of full scale (> 25.5, i.e. >= 26 for uint8):
# Fashion-MNIST backgrounds are exactly 0 and the faint anti-aliased rims below this carry no class evidence.
FOREGROUND = 0.1


def make_dense_set(
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    n_samples: int,
    canvas: int = 56,
    items_per_canvas: tuple[int, int] = (1, 3),
    seed: int = 0,
    threshold: float = FOREGROUND,
    return_items: bool = False,
):
    """Paste items on black canvases: (canvases uint8 (n, S, S), label maps int64 (n, S, S)).

    Each canvas gets U{lo..hi} items (inclusive), each a uniformly drawn image placed wholly inside the canvas at
    a uniform position; all draws come from ``np.random.default_rng(seed)``, so a seed fixes the set. Only an
    item's foreground pixels (> threshold * 255) are pasted, into the image *and* the label map, so a later item
    overwrites an earlier one exactly where it has foreground and image and labels always agree.
    ``return_items`` adds, per canvas, the list of (item index, top, left) in paste order.
    """
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int64)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"make_dense_set needs uint8 (N, H, W) images, got {images.dtype} {images.shape}")
    n_img, ih, iw = images.shape
    if canvas < max(ih, iw):
        raise ValueError(f"canvas {canvas} is smaller than the items ({ih}x{iw})")
    lo, hi = items_per_canvas
    if not 1 <= lo <= hi:
        raise ValueError(f"items_per_canvas must be (lo, hi) with 1 <= lo <= hi, got {items_per_canvas}")
    rng = np.random.default_rng(seed)
    out = np.zeros((n_samples, canvas, canvas), np.uint8)
    maps = np.zeros((n_samples, canvas, canvas), np.int64)
    placed: list[list[tuple[int, int, int]]] = []
    limit = threshold * 255.0
    for i in range(n_samples):
        k = int(rng.integers(lo, hi + 1))
        idx = rng.integers(0, n_img, size=k)
        tops = rng.integers(0, canvas - ih + 1, size=k)
        lefts = rng.integers(0, canvas - iw + 1, size=k)
        items = []
        for j, t, l in zip(idx.tolist(), tops.tolist(), lefts.tolist()):
            item = images[j]
            fg = item > limit
            out[i, t : t + ih, l : l + iw][fg] = item[fg]
            maps[i, t : t + ih, l : l + iw][fg] = labels[j] + 1
            items.append((j, t, l))
        placed.append(items)
    return (out, maps, placed) if return_items else (out, maps)


class DenseProbe(nn.Module):
    """A linear classifier applied to every patch token; logits are bilinearly upsampled to the pixel grid."""

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(embed_dim, num_classes)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int], out_size: tuple[int, int]) -> torch.Tensor:
        """tokens (B, N, D) on an (h, w) grid -> logits (B, num_classes, H, W)."""
        b, n, _ = tokens.shape
        h, w = grid
        if n != h * w:
            raise ValueError(f"{n} tokens do not fill a {h}x{w} grid")
        logits = self.linear(tokens).transpose(1, 2).reshape(b, -1, h, w)
        return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts; rows = target class, columns = predicted class."""
    p, t = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
    if p.shape != t.shape:
        raise ValueError(f"prediction and target sizes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    for name, v in (("prediction", p), ("target", t)):
        if v.numel() and (int(v.min()) < 0 or int(v.max()) >= num_classes):
            raise ValueError(f"{name} holds labels outside 0..{num_classes - 1}")
    idx = t * num_classes + p
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores_from_confusion(conf: torch.Tensor) -> dict:
    """IoU per class = TP / (TP + FP + FN). mIoU averages over the classes present in the target *or* the
    prediction (union > 0); a class absent from both has an undefined IoU (None in per_class_iou) and is left out.
    Background (class 0) counts like any other class. Pixel accuracy = correct pixels / all pixels."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    valid = union > 0
    total = conf.sum()
    return {
        "miou": 100.0 * float(iou[valid].mean()) if valid.any() else float("nan"),
        "pixel_acc": 100.0 * float(tp.sum() / total) if total > 0 else float("nan"),
        "per_class_iou": [100.0 * float(v) if ok else None for v, ok in zip(iou, valid)],
    }


def miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict:
    """mIoU (%), pixel accuracy (%) and per-class IoU (%) of integer label maps; see
    :func:`scores_from_confusion` for which classes are averaged."""
    return scores_from_confusion(confusion_matrix(torch.as_tensor(pred), torch.as_tensor(target), num_classes))


def train_dense_probe(
    train_tokens: torch.Tensor,
    train_maps: torch.Tensor,
    test_tokens: torch.Tensor,
    test_maps: torch.Tensor,
    grid: tuple[int, int],
    num_classes: int,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    seed: int = 0,
    log: Log = print,
) -> dict:
    """Train :class:`DenseProbe` on precomputed tokens (N, h*w, D) against label maps (N, H, W) with Adam and a
    cosine schedule; return the test scores (see :func:`scores_from_confusion`) and the probe."""
    dev = default_device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    out_size = tuple(train_maps.shape[-2:])
    probe = DenseProbe(train_tokens.shape[-1], num_classes).to(dev)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    steps = epochs * max(1, math.ceil(len(train_tokens) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for epoch in range(1, epochs + 1):
        probe.train()
        order = torch.randperm(len(train_tokens), generator=gen)
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            logits = probe(train_tokens[idx].to(dev), grid, out_size)
            loss = F.cross_entropy(logits, train_maps[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        log(f"dense probe epoch {epoch:3d}/{epochs}: loss {total / len(order):.4f}")
    probe.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    with torch.no_grad():
        for i in range(0, len(test_tokens), batch_size):
            pred = probe(test_tokens[i : i + batch_size].to(dev), grid, out_size).argmax(1)
            conf += confusion_matrix(pred, test_maps[i : i + batch_size], num_classes)
    res = scores_from_confusion(conf)
    res["probe"] = probe.cpu()
    return res


def run_dense(
    ckpt: str | Path,
    root: str | Path | None = None,
    which: str | None = None,
    n_train: int = 1000,
    n_test: int = 200,
    canvas: int = 56,
    items_per_canvas: tuple[int, int] = (1, 3),
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device | None = None,
    random_init: bool = False,
    log: Log = print,
) -> dict:
    """Dense probe of a checkpoint (for ``mst dense``): canvases from Fashion-MNIST train items for training and
    test items for testing (``root``: the Fashion-MNIST directory; default the checkpoint's data.root when it
    trained on Fashion-MNIST, else the system copy). Patch tokens are extracted once (n * (canvas/patch)^2 * D
    floats each split). Returns {"miou", "pixel_acc", "per_class_iou" (index 0 = background), ...}."""
    from mst.data.fashion_mnist import CLASSES, load_fashion_mnist

    dev = default_device(device)
    backbone, cfg = load_eval_backbone(ckpt, which, dev, random_init, seed)
    patch = backbone.patch_size
    if canvas % patch:
        raise ValueError(f"canvas size {canvas} is not divisible by the patch size {patch}")
    if root is None and cfg["data"]["name"] == "fashion_mnist":
        root = cfg["data"]["root"]
    num_classes = len(CLASSES) + 1
    d = cfg["data"]
    tokens, maps = {}, {}
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images, labels = load_fashion_mnist(root, split)
        canv, lab = make_dense_set(images, labels, n, canvas, items_per_canvas, s)
        x = normalize_images(canv, d["mean"], d["std"], d["channels"])
        tokens[split], _ = extract_features(backbone, x, "patches", batch_size, dev)
        maps[split] = torch.from_numpy(lab)
    grid = (canvas // patch, canvas // patch)
    log(f"dense probe: {n_train} train / {n_test} test canvases of {canvas}px, grid {grid}, "
        f"{backbone.which} backbone")
    res = train_dense_probe(tokens["train"], maps["train"], tokens["test"], maps["test"], grid, num_classes,
                            epochs, lr, batch_size, dev, seed, log)
    res.pop("probe")
    log(f"mIoU {res['miou']:.2f} %  pixel accuracy {res['pixel_acc']:.2f} %")
    res.update(classes=["background", *CLASSES], which=backbone.which,
               canvas=canvas, n_train=n_train, n_test=n_test, checkpoint=str(ckpt))
    return res
