"""Linear probe on a frozen backbone: DINO's (MST's appendix E) or MAE's protocol.

``probe="dino"``: a single ``nn.Linear`` (no BatchNorm, no extra feature normalisation) trained with SGD
(momentum 0.9, weight decay 0, lr = base_lr * batch / 256, cosine decay to 0).
``probe="mae"``: BatchNorm without affine parameters (eps 1e-6) before the linear layer (weights N(0, 0.01)
truncated), LARS (timm's, trust coefficient 0.001, adapted on the weight matrix only), weight decay 0, lr = base_lr
* batch / 256 with a linear warm-up over the first 1/9 of the epochs (MAE: 10 of 90) then half-cosine; on the CLS
token or the mean of the patch tokens (``kind="avgpool"``). With LARS a step is relative to the weight's norm
(lr x 0.001 x |w|), so the batch does not set the step size: MAE's absolute lr (0.1 x 16384 / 256 = 6.4) is the one
that carries over to smaller batches, and is the default (:data:`MAE_PROBE_LR`).

Two paths:

- ``augment=False``: features are extracted once and the probe trains on them (fast; the CPU default);
- ``augment=True``: each epoch the frozen backbone runs on freshly augmented images (RandomResizedCrop + flip,
  per sample), as in the paper; test features never change, so they are extracted once.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from mst.eval.features import (
    Log,
    backbone_features,
    default_device,
    extract_features,
    load_eval_backbone,
    with_data,
)
from mst.models.backbone import ViTBackbone

__all__ = ["train_linear_probe", "run_linear", "random_resized_crop_flip", "topk_accuracy"]

Pair = tuple[torch.Tensor, torch.Tensor]


def random_resized_crop_flip(
    x: torch.Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A different RandomResizedCrop + horizontal flip for every image of a batch, output at the input size.

    Crop boxes follow torchvision's rule (area fraction ~ U(scale), log-uniform aspect ratio, 10 tries, then the
    whole image); the crop is resampled bilinearly with one ``grid_sample`` so it runs on the batch's device.
    """
    b, _, h, w = x.shape
    tries = 10
    g = generator
    area = torch.empty(b, tries).uniform_(scale[0], scale[1], generator=g) * (h * w)
    log_r = torch.empty(b, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    cw = torch.sqrt(area * log_r.exp())
    ch = torch.sqrt(area / log_r.exp())
    ok = (cw <= w) & (ch <= h)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((b,), -1))
    rows = torch.arange(b)
    cw = torch.where(first >= 0, cw[rows, first.clamp(min=0)], torch.full((b,), float(w)))
    ch = torch.where(first >= 0, ch[rows, first.clamp(min=0)], torch.full((b,), float(h)))
    left = torch.rand(b, generator=g) * (w - cw)
    top = torch.rand(b, generator=g) * (h - ch)
    flip = torch.where(torch.rand(b, generator=g) < flip_p, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cw / w * flip
    theta[:, 0, 2] = 2 * (left + cw / 2) / w - 1
    theta[:, 1, 1] = ch / h
    theta[:, 1, 2] = 2 * (top + ch / 2) / h - 1
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[float]:
    """Top-k accuracies in percent; k is clipped to the number of classes (top-5 of 3 classes = 100 %)."""
    out = []
    for k in ks:
        kk = min(k, logits.shape[1])
        hit = (logits.topk(kk, dim=1).indices == target[:, None]).any(dim=1)
        out.append(100.0 * int(hit.sum()) / len(target) if len(target) else 0.0)  # counts: 70.0, not 69.99999
    return out


def _as_pair(data: Pair | Dataset) -> Pair | None:
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return data[0], torch.as_tensor(data[1]).long()
    return None


def train_linear_probe(
    train: Pair | Dataset,
    test: Pair | Dataset,
    backbone: ViTBackbone | None = None,
    kind: str = "cls",
    augment: bool = False,
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    num_classes: int | None = None,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    eval_every: int = 1,
    device: str | torch.device | None = None,
    seed: int = 0,
    log: Log = print,
    probe: str = "dino",
) -> dict:
    """Train a linear classifier on frozen features and report test top-1/top-5 (percent).

    Without a ``backbone``, ``train`` and ``test`` are precomputed (features (N, F), labels) pairs. With one, they
    are (images (N, C, H, W), labels) pairs or Datasets of (image tensor, label); features of kind ``kind`` are
    extracted here, once (``augment=False``) or per epoch from augmented images (``augment=True``, train only).
    ``lr`` is the base learning rate for batch 256 (DINO sweeps it per model; on final-norm ViT features, ~unit
    scale, 0.1 converged fastest of 1e-3..1 in short Fashion-MNIST runs).
    Returns {"history": [{epoch, loss, top1, top5}], "top1", "top5" (last evaluation), "best_top1",
    "best_top5", "best_epoch", "num_features", "num_classes", "classifier": the trained nn.Linear (on CPU)}.
    """
    if augment and backbone is None:
        raise ValueError("augment=True needs the backbone (features are recomputed from augmented images)")
    dev = default_device(device)
    gen = torch.Generator().manual_seed(seed)
    train_ds: Dataset | None = None
    if backbone is not None:
        backbone = backbone.to(dev).eval()  # frozen: every forward below runs under no_grad
        test_f, test_y = extract_features(backbone, test, kind, batch_size, dev)
        if test_y is None:
            raise ValueError("the test set has no labels")
        if augment:
            pair = _as_pair(train)
            train_ds = TensorDataset(*pair) if pair is not None else train  # type: ignore[assignment]
            train_f = train_y = None
        else:
            train_f, train_y = extract_features(backbone, train, kind, batch_size, dev)
            if train_y is None:
                raise ValueError("the training set has no labels")
    else:
        train_pair, test_pair = _as_pair(train), _as_pair(test)
        if train_pair is None or test_pair is None:
            raise ValueError("without a backbone, train and test must be (features, labels) tensor pairs")
        (train_f, train_y), (test_f, test_y) = train_pair, test_pair

    if train_f is not None:
        assert train_y is not None
        n_train, n_feat = len(train_f), train_f.shape[1]
        train_f, train_y = train_f.to(dev), train_y.to(dev)
        all_labels = torch.cat([train_y.cpu(), test_y.cpu()])
    else:
        n_train = len(train_ds)  # type: ignore[arg-type]
        with torch.no_grad():
            probe_x = next(iter(DataLoader(train_ds, batch_size=1)))[0].to(dev)
            n_feat = backbone_features(backbone, probe_x, kind).shape[1]  # type: ignore[arg-type]
        pair = _as_pair(train)  # a Dataset's labels are not scanned: the test labels must cover every class
        all_labels = torch.cat([test_y.cpu(), pair[1]]) if pair is not None else test_y.cpu()
    if num_classes is None:
        num_classes = int(all_labels.max()) + 1
    if num_classes < 2:
        raise ValueError("a linear probe needs at least 2 classes")
    test_f, test_y = test_f.to(dev), test_y.to(dev)

    torch.manual_seed(seed)
    eff_lr = lr * batch_size / 256
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    clf, opt, sched = _probe(probe, n_feat, num_classes, eff_lr, momentum, weight_decay, epochs, steps_per_epoch)
    clf = clf.to(dev)
    log(f"linear probe ({probe}): {n_train} train / {len(test_f)} test, {n_feat} features ({kind}), "
        f"{num_classes} classes, lr {eff_lr:.4g}, {epochs} epochs{', augmented' if augment else ''}")

    history: list[dict] = []
    for epoch in range(1, epochs + 1):
        clf.train()
        total, count = 0.0, 0
        for feats, y in _epoch_batches(train_f, train_y, train_ds, backbone, kind, batch_size, crop_scale, gen, dev):
            if len(y) < 2 and probe == "mae":
                continue  # BatchNorm cannot normalise a batch of one (a last, ragged batch)
            loss = F.cross_entropy(clf(feats), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(y)
            count += len(y)
        if epoch % eval_every == 0 or epoch == epochs:
            clf.eval()
            with torch.no_grad():
                logits = torch.cat([clf(test_f[i : i + 4096]) for i in range(0, len(test_f), 4096)])
            top1, top5 = topk_accuracy(logits, test_y)
            history.append({"epoch": epoch, "loss": total / max(count, 1), "top1": top1, "top5": top5})
            log(f"epoch {epoch:3d}/{epochs}: loss {total / max(count, 1):.4f}  top-1 {top1:.2f} %  top-5 {top5:.2f} %")

    best = max(history, key=lambda r: r["top1"])
    return {
        "history": history,
        "top1": history[-1]["top1"],
        "top5": history[-1]["top5"],
        "best_top1": best["top1"],
        "best_top5": best["top5"],
        "best_epoch": best["epoch"],
        "num_features": int(n_feat),
        "num_classes": int(num_classes),
        "classifier": clf.cpu(),
    }


PROBES = ("dino", "mae")
MAE_PROBE_LR = 6.4  # MAE's linear-probe lr: blr 0.1 x batch 16384 / 256


def _probe(probe: str, n_feat: int, num_classes: int, lr: float, momentum: float, weight_decay: float, epochs: int,
           steps_per_epoch: int):
    """(classifier, optimizer, per-step lr scheduler) of a probe protocol (see the module docstring)."""
    total = epochs * steps_per_epoch
    if probe == "dino":
        clf = nn.Linear(n_feat, num_classes)
        nn.init.normal_(clf.weight, std=0.01)
        nn.init.zeros_(clf.bias)
        opt = torch.optim.SGD(clf.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        return clf, opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=0.0)
    if probe != "mae":
        raise ValueError(f"probe={probe!r} is not one of {', '.join(PROBES)}")
    from timm.optim import Lars

    linear = nn.Linear(n_feat, num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    clf = nn.Sequential(nn.BatchNorm1d(n_feat, affine=False, eps=1e-6), linear)
    opt = Lars([{"params": [linear.weight], "always_adapt": True, "weight_decay": weight_decay},
                {"params": [linear.bias], "always_adapt": False, "weight_decay": 0.0}],
               lr=lr, momentum=momentum, trust_coeff=0.001)
    warm = max(1, round(total / 9))

    def factor(step: int) -> float:
        if step < warm:
            return step / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return clf, opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _epoch_batches(train_f, train_y, train_ds, backbone, kind, batch_size, crop_scale, gen, dev):
    """One epoch of shuffled (features, labels) batches: sliced from precomputed features, or computed now
    from augmented images by the frozen backbone."""
    if train_f is not None:
        order = torch.randperm(len(train_f), generator=gen).to(dev)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            yield train_f[idx], train_y[idx]
        return
    loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=gen)
    for x, y in loader:
        x = random_resized_crop_flip(x.to(dev), scale=crop_scale, generator=gen)
        with torch.no_grad():
            feats = backbone_features(backbone, x, kind).float()
        yield feats, torch.as_tensor(y).long().to(dev)


def run_linear(
    ckpt: str | Path,
    data: dict | str | Path | None = None,
    which: str | None = None,
    kind: str = "cls",
    augment: bool = False,
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 256,
    train_subset: int | None = None,
    test_subset: int | None = None,
    device: str | torch.device | None = None,
    random_init: bool = False,
    seed: int = 0,
    save_path: str | Path | None = None,
    log: Log = print,
    probe: str = "dino",
) -> dict:
    """Linear evaluation of a checkpoint (for ``mst linear``); ``data`` as in :func:`mst.eval.knn.run_knn`;
    ``probe``: "dino" or "mae" (see the module docstring).

    Returns the JSON-serialisable part of :func:`train_linear_probe`'s result; ``save_path`` also writes the
    classifier's state_dict there (torch.save). A subset larger than its split raises :class:`~mst.data.DataError`.
    """
    dev = default_device(device)
    backbone, cfg = load_eval_backbone(ckpt, which, dev, random_init, seed)
    cfg = with_data(cfg, data)
    from mst.eval.knn import load_subset_split

    train = load_subset_split(cfg, "train", train_subset, seed, "--train-subset")
    test = load_subset_split(cfg, "test", test_subset, seed + 1, "--test-subset")
    res = train_linear_probe(
        train, test, backbone=backbone, kind=kind, augment=augment, epochs=epochs, lr=lr,
        batch_size=batch_size, device=dev, seed=seed, log=log, probe=probe,
    )
    clf = res.pop("classifier")
    if save_path is not None:
        Path(save_path).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": clf.state_dict(), "kind": kind, "probe": probe, "which": backbone.which,
                    "checkpoint": str(ckpt)}, save_path)
        log(f"classifier saved to {save_path}")
    res.update(which=backbone.which, kind=kind, probe=probe, augment=augment, checkpoint=str(ckpt))
    return res
