"""Weighted k-NN classification on frozen features (the DINO/MST k-NN protocol).

Features are L2-normalised; each of a test point's k most cosine-similar training points votes exp(sim / T) for
its own label; the class with the largest total wins (ties: the lower class index). It needs no training, so it
is the cheapest signal of representation quality and is also what the trainer's online evaluation calls.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from mst.eval.features import (
    Log,
    default_device,
    extract_features,
    load_eval_backbone,
    load_eval_split,
    random_init_backbone,
    with_data,
)

__all__ = ["knn_classify", "knn_accuracy", "raw_pixel_knn", "run_knn", "random_init_backbone", "clipped_ks",
           "load_subset_split", "split_size"]


def clipped_ks(ks: Sequence[int], bank: int, what: str = "k-NN") -> list[int]:
    """The ks larger than a training bank of ``bank`` images, with a warning naming them: such a k is clipped to
    the bank size (every bank image votes), so k=100 and k=200 of a 60-image bank report the same vote."""
    clipped = sorted({int(k) for k in ks if int(k) > bank})
    if clipped:
        ks_text = ", ".join(map(str, clipped))
        warnings.warn(
            f"{what}: k={ks_text} {'exceeds' if len(clipped) == 1 else 'exceed'} the training bank ({bank} images) "
            f"and {'was' if len(clipped) == 1 else 'were'} clipped to k={bank}: every bank image votes, so the result "
            f"is that of k={bank} (use a smaller k or a larger bank)",
            UserWarning,
            stacklevel=3,
        )
    return clipped


def split_size(source) -> int:
    """Number of images of a loaded eval split (an (images, labels) pair or a Dataset)."""
    return len(source[0]) if isinstance(source, tuple) else len(source)


def load_subset_split(cfg: dict, split: str, subset: int | None, seed: int, option: str,
                      balanced: bool = False):
    """:func:`load_eval_split` that refuses a subset larger than the split instead of silently using the whole
    split: a :class:`~mst.data.DataError` names ``option`` (e.g. "--train-subset"), the request and the split's
    size."""
    from mst.data import DataError

    if subset is not None and int(subset) < 1:
        raise DataError(f"{option} {subset}: must be a positive number of images (or left out: the whole split)")
    where = f"the {split} split of {cfg['data']['name']}" + (f" at {cfg['data']['root']}" if cfg["data"].get("root")
                                                               else "")
    try:
        source = load_eval_split(cfg, split, subset, seed, balanced=balanced)
    except DataError as e:
        if subset is None or "balanced subset" not in str(e):
            raise
        raise DataError(f"{option} {subset} (balanced) cannot be drawn from {where}: {e}") from e
    n = split_size(source)
    if subset is not None and int(subset) > n:
        raise DataError(f"{option} {subset} asks for more images than {where} holds ({n} images): pass "
                        f"{option} {n} or less, or leave it out to use the whole split")
    return source


@torch.no_grad()
def knn_classify(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    ks: Sequence[int] = (10, 20, 100, 200),
    T: float = 0.07,
    num_classes: int | None = None,
    batch_size: int = 1024,
) -> dict[int, torch.Tensor]:
    """Predicted labels (on test_feats' device) for each k in ``ks``.

    k larger than the training set is clipped to its size (every training point then votes). Test points are
    processed ``batch_size`` at a time so the similarity matrix never exceeds batch_size x N_train.
    """
    if train_feats.ndim != 2 or test_feats.ndim != 2:
        raise ValueError(f"features must be 2-d, got {tuple(train_feats.shape)} and {tuple(test_feats.shape)}")
    if len(train_feats) != len(train_labels):
        raise ValueError(f"{len(train_feats)} training features but {len(train_labels)} labels")
    if len(train_feats) == 0:
        raise ValueError("k-NN needs at least one training point")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {list(ks)}")
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    device = test_feats.device
    train = F.normalize(train_feats.float().to(device), dim=1)
    test = F.normalize(test_feats.float(), dim=1)
    labels = train_labels.long().to(device)
    c = int(num_classes) if num_classes is not None else int(labels.max()) + 1
    kmax = min(max(ks), len(train))
    preds: dict[int, list[torch.Tensor]] = {int(k): [] for k in ks}
    for i in range(0, len(test), batch_size):
        sim = test[i : i + batch_size] @ train.T  # (b, N_train)
        top_sim, top_idx = sim.topk(kmax, dim=1)  # sorted, most similar first
        # exp((s - s_max) / T): the same ranking of class totals as exp(s / T), without overflow for small T
        weights = ((top_sim - top_sim[:, :1]) / T).exp()
        top_labels = labels[top_idx]
        for k in preds:
            kk = min(k, kmax)
            votes = torch.zeros(len(sim), c, device=device)
            votes.scatter_add_(1, top_labels[:, :kk], weights[:, :kk])
            preds[k].append(votes.argmax(dim=1))
    empty = torch.zeros(0, dtype=torch.long, device=device)
    return {k: (torch.cat(v) if v else empty) for k, v in preds.items()}


def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    ks: Sequence[int] = (10, 20, 100, 200),
    T: float = 0.07,
    num_classes: int | None = None,
    batch_size: int = 1024,
) -> dict[int, float]:
    """Top-1 accuracy in percent for each k."""
    if len(test_feats) != len(test_labels):
        raise ValueError(f"{len(test_feats)} test features but {len(test_labels)} labels")
    if num_classes is None:
        num_classes = int(max(int(train_labels.max()), int(test_labels.max()) if len(test_labels) else 0)) + 1
    preds = knn_classify(train_feats, train_labels, test_feats, ks, T, num_classes, batch_size)
    target = test_labels.long().to(test_feats.device)
    n = max(len(target), 1)
    return {k: 100.0 * float((p == target).sum()) / n for k, p in preds.items()}


def run_knn(
    ckpt: str | Path,
    data: dict | str | Path | None = None,
    which: str | None = None,
    ks: Sequence[int] = (10, 20, 100, 200),
    T: float = 0.07,
    train_subset: int | None = None,
    test_subset: int | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    kind: str = "cls",
    random_init: bool = False,
    seed: int = 0,
    log: Log = print,
    balanced: bool = False,
) -> dict:
    """k-NN evaluation of a checkpoint on its dataset's train/test splits (for ``mst knn``).

    ``data``: None uses the checkpoint's data config; a dict replaces keys of it (e.g. {"root": ...}); a path is a
    Fashion-MNIST root. ``random_init`` evaluates a fresh backbone of the same architecture (the baseline).
    Subsets are fixed random subsets drawn with ``seed``; ``balanced``: the training bank has the same count per
    class (as ``mst finetune --train-subset`` draws its labels, seed 0). Returns {"top1": {k: %}, ...metadata}.
    """
    dev = default_device(device)
    backbone, cfg = load_eval_backbone(ckpt, which, dev, random_init, seed)
    cfg = with_data(cfg, data)
    what = backbone.which
    log(f"k-NN: {what} backbone from {ckpt}, data {cfg['data']['name']} ({cfg['data']['root'] or 'default root'})")
    train = load_subset_split(cfg, "train", train_subset, seed, "--train-subset", balanced=balanced)
    test = load_subset_split(cfg, "test", test_subset, seed + 1, "--test-subset")
    clipped = clipped_ks(ks, split_size(train))
    train_f, train_y = extract_features(backbone, train, kind, batch_size, dev)
    test_f, test_y = extract_features(backbone, test, kind, batch_size, dev)
    assert train_y is not None and test_y is not None
    log(f"features: train {tuple(train_f.shape)}, test {tuple(test_f.shape)}")
    acc = knn_accuracy(train_f.to(dev), train_y.to(dev), test_f.to(dev), test_y.to(dev), ks, T)
    for k, a in acc.items():
        log(f"k={k:<4d} top-1 {a:.2f} %" + (f"  (clipped to the bank: k={len(train_f)})" if k in clipped else ""))
    return {
        "top1": acc,
        "which": what,
        "kind": kind,
        "T": T,
        "n_train": len(train_f),
        "n_test": len(test_f),
        "clipped_k": clipped,
        "checkpoint": str(ckpt),
    }


def raw_pixel_knn(
    ckpt: str | Path,
    data: dict | str | Path | None = None,
    ks: Sequence[int] = (10, 20, 100, 200),
    T: float = 0.07,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    log: Log = print,
    balanced: bool = False,
) -> dict[int, float]:
    """The same k-NN on raw normalised pixels (the checkpoint's eval resolution): the floor any learnt feature
    should beat. Uses the same subsets as :func:`run_knn` with the same ``seed``, refused and warned about alike."""
    from mst.checkpoint import load_checkpoint

    cfg = with_data(load_checkpoint(ckpt)["config"], data)

    def flat(split: str, subset: int | None, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        source = load_subset_split(cfg, split, subset, s, f"--{split}-subset", balanced=balanced and split == "train")
        if isinstance(source, tuple):
            x, y = source
        else:
            items = [source[i] for i in range(len(source))]
            x, y = torch.stack([a for a, _ in items]), torch.tensor([b for _, b in items])
        return x.flatten(1).float(), y

    train_x, train_y = flat("train", train_subset, seed)
    test_x, test_y = flat("test", test_subset, seed + 1)
    clipped_ks(ks, len(train_x), "raw-pixel k-NN")
    acc = knn_accuracy(train_x, train_y, test_x, test_y, ks, T)
    for k, a in acc.items():
        log(f"raw pixels k={k:<4d} top-1 {a:.2f} %")
    return acc
