"""A dense-prediction probe on frozen patch tokens (a small stand-in for the paper's detection/segmentation
transfer, which needs COCO/ADE20K and a detector).

Canvases are built by pasting labelled items at random places on black; each pixel's label is the class + 1 of
the item whose *foreground* covers it (0 = background). Fashion-MNIST items are pasted by their foreground (pixels
above :data:`FOREGROUND`); the images of a labelled image folder (class subfolders) are resized to square items and
pasted whole, each as the data module reads it: 8-bit grey / RGB files as 8-bit items, 16-bit / float TIFF, DICOM
and multiband files as float items at full precision (as pretraining reads them; nothing is quantised to 8 bits).
A linear classifier per patch token, upsampled bilinearly to pixels and trained with per-pixel cross-entropy, then
measures how much spatial/semantic information the patch tokens carry (mIoU, pixel accuracy).
"""
from __future__ import annotations

import math
from pathlib import Path
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mst.eval.features import (
    Log,
    default_device,
    extract_features,
    load_eval_backbone,
    normalize_images,
    with_data,
)

__all__ = ["FOREGROUND", "make_dense_set", "folder_items", "DenseProbe", "confusion_matrix", "scores_from_confusion",
           "miou", "train_dense_probe", "run_dense"]

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
    threshold: float | None = FOREGROUND,
    return_items: bool = False,
):
    """Paste items on black canvases: (canvases (n, S, S) or (n, S, S, C) of the items' dtype, label maps int64
    (n, S, S)).

    ``images``: uint8 or float32 (N, H, W) or (N, H, W, C) (float: an image folder's 16-bit / float / multiband
    items, 1.0 = full scale). Each canvas gets U{lo..hi} items (inclusive), each a uniformly drawn image placed
    wholly inside the canvas at a uniform position; all draws come from ``np.random.default_rng(seed)``, so a seed
    fixes the set (whatever the dtype). Only an item's foreground pixels (> threshold of full scale: 255 for uint8,
    1.0 for float, in any channel; ``threshold=None``: every pixel, for photos) are pasted, into the image *and*
    the label map (class + 1), so a later item overwrites an earlier one exactly where it has foreground and image
    and labels always agree. ``return_items`` adds, per canvas, the list of (item index, top, left) in paste order.
    """
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int64)
    if images.dtype not in (np.uint8, np.float32) or images.ndim not in (3, 4):
        raise ValueError(f"make_dense_set needs uint8 or float32 (N, H, W) or (N, H, W, C) images, got "
                         f"{images.dtype} {images.shape}")
    n_img, ih, iw = images.shape[:3]
    if n_img == 0 or len(labels) != n_img:
        raise ValueError(f"make_dense_set needs at least one item and one label per item, got {n_img} images and "
                         f"{len(labels)} labels")
    if canvas < max(ih, iw):
        raise ValueError(f"canvas {canvas} is smaller than the items ({ih}x{iw})")
    lo, hi = items_per_canvas
    if not 1 <= lo <= hi:
        raise ValueError(f"items_per_canvas must be (lo, hi) with 1 <= lo <= hi, got {items_per_canvas}")
    rng = np.random.default_rng(seed)
    out = np.zeros((n_samples, canvas, canvas, *images.shape[3:]), images.dtype)
    maps = np.zeros((n_samples, canvas, canvas), np.int64)
    placed: list[list[tuple[int, int, int]]] = []
    limit = None if threshold is None else threshold * (255.0 if images.dtype == np.uint8 else 1.0)
    for i in range(n_samples):
        k = int(rng.integers(lo, hi + 1))
        idx = rng.integers(0, n_img, size=k)
        tops = rng.integers(0, canvas - ih + 1, size=k)
        lefts = rng.integers(0, canvas - iw + 1, size=k)
        items = []
        for j, t, l in zip(idx.tolist(), tops.tolist(), lefts.tolist()):
            item = images[j]
            if limit is None:
                fg = np.ones((ih, iw), bool)
            else:
                fg = item > limit if item.ndim == 2 else (item > limit).any(axis=-1)
            out[i, t : t + ih, l : l + iw][fg] = item[fg]
            maps[i, t : t + ih, l : l + iw][fg] = labels[j] + 1
            items.append((j, t, l))
        placed.append(items)
    return (out, maps, placed) if return_items else (out, maps)


def _fit_item(img, size: int, path: str = "") -> np.ndarray:
    """An image of the data module -> a (size, size) or (size, size, C) item: the largest centred square, resized.

    A PIL image (an 8-bit grey / RGB file) -> uint8, resized by PIL (bicubic), as before. A float32 (C, H, W)
    tensor (16-bit / float TIFF, DICOM, multiband: :func:`mst.data.load_image`) -> float32 at full precision: the
    centred square cropped and resized with tensor ops (bicubic, antialiased, as the pretraining's single view
    resizes float data), never quantised to 8 bits nor clipped. ``path`` names the file in errors."""
    from PIL import Image, ImageOps

    if isinstance(img, Image.Image):
        return np.asarray(ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC), dtype=np.uint8)
    if not torch.is_tensor(img) or img.ndim != 3:
        raise TypeError(f"the dense probe takes PIL images or (C, H, W) tensors, got {type(img).__name__}")
    from mst.data import DataError

    x = img.detach().to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"image {path or '(unnamed)'} holds NaN or infinite values: the dense probe cannot paste it; "
                        "fill them (e.g. nodata -> 0) or remove the file from the folder")
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[None, :, top : top + side, left : left + side]
    if side != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    item = x[0].permute(1, 2, 0).numpy()
    return np.ascontiguousarray(item[..., 0] if item.shape[-1] == 1 else item)


def _sample_path(ds, i: int) -> str:
    """The file behind sample ``i`` of a (possibly subset) image-folder dataset, for error messages."""
    while isinstance(ds, torch.utils.data.Subset):
        ds, i = ds.dataset, int(ds.indices[i])
    samples = getattr(ds, "samples", None)
    return str(samples[i][0]) if samples is not None and 0 <= i < len(samples) else f"sample {i}"


def _canvas_tensor(canvases: np.ndarray, mean, std, channels: int) -> torch.Tensor:
    """Canvases -> float (n, C, S, S) normalised with the data's mean/std. uint8 canvases (every item 8-bit) go
    through :func:`~mst.eval.features.normalize_images` as always; float32 canvases (full scale 1.0, as the data
    module's tensors) are normalised as they are, with no 8-bit step."""
    if canvases.dtype == np.uint8:
        return normalize_images(canvases, mean, std, channels)
    x = torch.from_numpy(np.ascontiguousarray(canvases, dtype=np.float32))
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[1] != channels:
        if x.shape[1] != 1:
            raise ValueError(f"{x.shape[1]}-band canvases for a {channels}-channel backbone")
        x = x.expand(-1, channels, -1, -1)
    m = torch.tensor([float(v) for v in mean], dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor([float(v) for v in std], dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous()


def folder_items(
    data_cfg: dict,
    size: int,
    pool: int | None = 1000,
    seed: int = 0,
    log: Log = print,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Items for dense canvases from a labelled image folder: ({"train": (images, labels), "test": (...)},
    class names). Images are read with :func:`mst.data.build_dataset` (``data_cfg['channels']`` channels), centre
    cropped to a square and resized to ``size`` (:func:`_fit_item`): (N, size, size) or (N, size, size, C), uint8
    when every item is an 8-bit grey / RGB file, else float32 for both splits (8-bit items / 255, float items
    at full precision, as pretraining scales them; multiband files need this). Each split keeps a
    fixed random ``pool`` of its images (seeded; None: all). Test items come from the data module's test split
    (test/, else val/, else the held-out share of a folder without split subfolders), labels matched by class
    name; if the data module gives such a folder no test split, its images are split in two disjoint halves.
    """
    from mst.data import DataError, build_dataset, subset_indices

    data = dict(data_cfg, subset=None)
    root = data.get("root")
    if not root:
        raise DataError("the dense probe on an image folder needs data.root (pass --data DIR)")
    train = build_dataset(data, "train")
    classes = [str(c) for c in train.classes]
    train_y = np.asarray(train.targets, dtype=np.int64)
    try:  # test/ or val/; a folder without either: the data module's held-out share, where it has one
        test = build_dataset(data, "test")
    except DataError:
        if any((Path(root) / s).is_dir() for s in ("test", "val")):
            raise
        test = None
    if test is not None:
        index = {c: i for i, c in enumerate(classes)}
        missing = [str(c) for c in test.classes if str(c) not in index]
        if missing:
            raise DataError(f"the test split of {root} has classes the train split lacks: {', '.join(missing)}")
        test_y = np.asarray([index[str(test.classes[t])] for t in test.targets], dtype=np.int64)
        picks = {"train": (train, subset_indices(len(train), pool, seed)),
                 "test": (test, subset_indices(len(test), pool, seed + 1))}
        labels = {"train": train_y, "test": test_y}
    else:
        if len(train) < 2:
            raise DataError(f"{root} holds {len(train)} image(s): the dense probe needs one to train and one to test")
        order = np.random.default_rng(seed).permutation(len(train))
        half = len(order) // 2
        tr, te = np.sort(order[half:]), np.sort(order[:half])
        if pool is not None:
            tr, te = tr[subset_indices(len(tr), pool, seed)], te[subset_indices(len(te), pool, seed + 1)]
        log(f"dense probe: {root} has no test/ or val/ split; canvases of {len(tr)} images train the probe and "
            f"canvases of {len(te)} others test it")
        picks = {"train": (train, tr), "test": (train, te)}
        labels = {"train": train_y, "test": train_y}
    fitted = {}
    for split, (ds, idx) in picks.items():
        if len(idx) == 0:
            raise DataError(f"the {split} split of {root} holds no images for the dense probe")
        fitted[split] = [_fit_item(ds[int(i)][0], size, _sample_path(ds, int(i))) for i in idx]
    eight_bit = all(a.dtype == np.uint8 for items in fitted.values() for a in items)
    out = {}
    for split, (_, idx) in picks.items():
        items = fitted[split] if eight_bit else [a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a
                                                 for a in fitted[split]]
        out[split] = (np.stack(items), labels[split][idx])
    return out, classes


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
    canvas: int | None = None,
    items_per_canvas: tuple[int, int] = (1, 3),
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device | None = None,
    random_init: bool = False,
    log: Log = print,
    data: dict | None = None,
    item_size: int | None = None,
    item_pool: int | None = 1000,
) -> dict:
    """Dense probe of a checkpoint (for ``mst dense``). Returns {"miou", "pixel_acc", "per_class_iou" (index 0 =
    background), "classes", ...}.

    The data: ``data`` (a data config section, e.g. {"name": "image_folder", "root": ..., "channels": 3, "mean":
    [...], "std": [...]}) updates the checkpoint's data section, as ``data`` of :func:`mst.eval.knn.run_knn`
    does; without it, ``root`` replaces its data.root (as a path ``data`` of ``run_knn`` does). Then:

    - an ``image_folder`` (class subfolders, optionally train/ and test/ or val/): canvases of ``canvas`` pixels
      (default: the checkpoint's image size, augment.global_size) on which 1-3 of the folder's own images, resized
      to ``item_size`` (default canvas // 2) squares, are pasted whole (16-bit / float / multiband files at full
      precision, per file, as pretraining reads them); a pixel's label is its image's class + 1
      (0 = the black background). Train canvases use the train split's images, test canvases the test split's
      (test/, val/, or the held-out images of a folder without split subfolders; see :func:`folder_items`);
    - Fashion-MNIST (``root``, or the checkpoint's data.root; the system copy for a checkpoint pretrained on an
      unlabelled folder when neither ``data`` nor ``root`` is given): items pasted by their foreground on
      ``canvas`` (default 56) pixel canvases, as always. Unlabelled data passed in are refused (DataError).

    Canvases are normalised with the data's mean/std (the checkpoint's unless ``data`` sets others of the
    checkpoint's channel count) at the checkpoint's channel count. Patch tokens are extracted once (n *
    (canvas/patch)^2 * D floats each split).
    """
    from mst.data.fashion_mnist import CLASSES, load_fashion_mnist

    dev = default_device(device)
    backbone, cfg = load_eval_backbone(ckpt, which, dev, random_init, seed)
    patch = backbone.patch_size
    channels = int(cfg["data"]["channels"])  # what the backbone's patch embedding takes
    if data is not None:
        d = dict(with_data(cfg, dict(data))["data"])
    elif root is not None:
        d = dict(with_data(cfg, root)["data"])
    else:
        d = dict(cfg["data"])
    mean, std = d["mean"], d["std"]
    if len(mean) != channels or len(std) != channels:
        log(f"dense probe: data mean/std have {len(mean)} values but the backbone takes {channels}-channel images; "
            "using the checkpoint's")
        mean, std = cfg["data"]["mean"], cfg["data"]["std"]
    on_folder = d["name"] == "image_folder"
    if d["name"] == "folder" and (data is not None or root is not None):
        from mst.data import DataError

        raise DataError(f"the images at {d.get('root')} are unlabelled (data.name=folder): the dense probe needs a "
                        "labelled folder (class subfolders, optionally under train/ val/ test/) or Fashion-MNIST")
    if canvas is None:
        canvas = int(cfg["model"]["img_size"]) if on_folder else 56
    if canvas % patch:
        raise ValueError(f"canvas size {canvas} is not divisible by the patch size {patch}")
    if on_folder:
        size = int(item_size) if item_size is not None else max(1, canvas // 2)
        items, names = folder_items(dict(d, channels=channels), size, item_pool, seed, log)
        threshold = None
        source = f"image folder {d['root']} ({len(names)} classes, {size}px items)"
    else:
        fm_root = d["root"] if d["name"] == "fashion_mnist" else None
        items = {split: load_fashion_mnist(fm_root, split) for split in ("train", "test")}
        names, threshold = list(CLASSES), FOREGROUND
        source = "Fashion-MNIST"
    num_classes = len(names) + 1
    tokens, maps = {}, {}
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images, labels = items[split]
        canv, lab = make_dense_set(images, labels, n, canvas, items_per_canvas, s, threshold)
        x = _canvas_tensor(canv, mean, std, channels)
        tokens[split], _ = extract_features(backbone, x, "patches", batch_size, dev)
        maps[split] = torch.from_numpy(lab)
    grid = (canvas // patch, canvas // patch)
    log(f"dense probe: {n_train} train / {n_test} test canvases of {canvas}px from {source}, grid {grid}, "
        f"{backbone.which} backbone")
    res = train_dense_probe(tokens["train"], maps["train"], tokens["test"], maps["test"], grid, num_classes,
                            epochs, lr, batch_size, dev, seed, log)
    res.pop("probe")
    log(f"mIoU {res['miou']:.2f} %  pixel accuracy {res['pixel_acc']:.2f} %")
    res.update(classes=["background", *names], which=backbone.which, data=d["name"] if on_folder else "fashion_mnist",
               canvas=canvas, n_train=n_train, n_test=n_test, checkpoint=str(ckpt))
    if on_folder:
        res.update(root=str(d["root"]), item_size=size, train_items=len(items["train"][0]),
                   test_items=len(items["test"][0]))
    return res
