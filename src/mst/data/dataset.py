"""Dataset construction from the ``data`` config, reproducible per-sample augmentation, and collation.

:class:`AugmentedDataset` reseeds torch's CPU generator (and Python's ``random``) from (seed, epoch, index)
for each sample, so a sample's crops do not depend on DataLoader worker count or order and a resumed run
sees the same augmentations as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import torch

from .fashion_mnist import DEFAULT_ROOT, ArrayDataset, FashionMNIST
from .folders import DataError, ImageFolderDataset
from .multicrop import MultiCropTransform
from .settings import DataSettings  # noqa: F401  (declares the data section typed() reads)
from mst.settings import typed

DATASET_NAMES = ("fashion_mnist", "folder", "image_folder")


class SubsetDataset(torch.utils.data.Subset):
    """A fixed subset that still exposes the base dataset's ``classes`` and ``targets``."""

    @property
    def classes(self) -> list[str]:
        return list(getattr(self.dataset, "classes", []))

    @property
    def targets(self) -> np.ndarray:
        return np.asarray(self.dataset.targets)[np.asarray(self.indices, dtype=np.int64)]


def subset_indices(n: int, size: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a fixed random ``size`` of ``n`` items (the first ``size`` of a permutation drawn by numpy's
    default_rng(seed)), or all of them. The one subset rule of pretraining and evaluation alike."""
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[: int(size)])


def balanced_subset_indices(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``size`` items with the same count of each class: ``size // C`` per class, one more for
    the first ``size % C`` classes (in class order); within a class a fixed random choice by default_rng(seed).
    For low-label fine-tuning (e.g. 1000 labels = 100 per Fashion-MNIST class)."""
    labels = np.asarray(labels)
    classes = np.unique(labels[labels >= 0])
    if size > len(labels):
        raise DataError(f"a balanced subset of {size} images was asked for, but the split has only {len(labels)}")
    if size < len(classes):
        raise DataError(f"a balanced subset of {size} images cannot hold one image of each of the {len(classes)} "
                        "classes")
    rng = np.random.default_rng(seed)
    base, extra = divmod(int(size), len(classes))
    chosen = []
    for k, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        want = base + (1 if k < extra else 0)
        if want > len(members):
            raise DataError(f"class {c} has only {len(members)} images, fewer than the {want} a balanced subset of "
                            f"{size} needs")
        chosen.append(members[rng.permutation(len(members))[:want]])
    return np.sort(np.concatenate(chosen))


def _apply_small_policy(ds, keep: np.ndarray, min_size: int, small: str) -> np.ndarray:
    """The small-image policy on the chosen items of a held-out split (the split itself is drawn from every file,
    so training and evaluation, which crop at different sizes, hold out the same images)."""
    from .folders import BadFileWarning, _check_size
    from .readers import read_header

    if small == "upscale" or not min_size:
        return keep
    kept, dropped = [], []
    for i in keep:
        path = ds.samples[int(i)][0]
        h = read_header(path)
        if min(h.width, h.height) >= min_size:
            kept.append(int(i))
        elif small == "error":
            _check_size(path, (h.width, h.height), min_size)
        else:
            dropped.append(str(path))
    if dropped:
        import warnings

        warnings.warn(f"skipped {len(dropped)} images smaller than {min_size} px (data.small_images=skip), e.g. "
                      f"{dropped[0]}", BadFileWarning, stacklevel=3)
    return np.asarray(kept, dtype=np.int64)


SPLIT_DIRS = ("train", "val", "test")
HOLDOUT_SEED = 0  # the held-out test split of a folder without one does not move with data.subset_seed


def split_layout(root: str | Path) -> tuple[Path, Path | None, tuple[str, ...]]:
    """Where a folder's splits are: (the train split's folder, the test split's folder or None, top-level names the
    train split must skip). ``test/`` is the test split, else ``val/``; the train split is ``train/`` when it exists,
    else the root itself without its ``val/`` and ``test/``. No test folder: a labelled folder holds out a share of
    its train split (``data.holdout``)."""
    root = Path(root)
    test = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if (root / "train").is_dir():
        return root / "train", test, ()
    return root, test, tuple(s for s in ("val", "test") if (root / s).is_dir())


def has_test_split(root: str | Path) -> bool:
    """Whether a folder has its own test split (test/ or val/); without one a labelled folder holds one out."""
    return split_layout(root)[1] is not None


def holdout_indices(labels: np.ndarray, share: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of a held-out ``share`` of each class (at least one image of a class with two or more), a
    fixed random choice by default_rng(seed): the test split of a labelled folder that has no val/ or test/."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = min(len(members) - 1, max(1, int(round(share * len(members))))) if len(members) > 1 else 0
        chosen.append(members[rng.permutation(len(members))[:n]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


class RelabelledSubset(SubsetDataset):
    """The items of some classes of a labelled dataset, their labels renumbered 0..K-1 (``data.classes``)."""

    def __init__(self, ds, indices, remap: dict[int, int], names: list[str]) -> None:
        super().__init__(ds, indices)
        self.remap, self.names = remap, names

    @property
    def classes(self) -> list[str]:
        return list(self.names)

    @property
    def targets(self) -> np.ndarray:
        return np.array([self.remap[int(t)] for t in super().targets], dtype=np.int64)

    def __getitem__(self, i: int):
        img, label = super().__getitem__(i)
        return img, self.remap[int(label)]


def keep_classes(ds, classes: list[int]):
    """``data.classes``: only the items of ``classes`` (label indices), relabelled 0..K-1 in the order given, their
    names kept (e.g. Fashion-MNIST's classes 5-9 as a domain of their own: Sandal ... Ankle boot = 0 ... 4)."""
    labels = np.asarray(ds.targets)
    names = list(getattr(ds, "classes", []) or [])
    n = len(names) if names else int(labels.max()) + 1
    bad = [c for c in classes if not 0 <= int(c) < n]
    if bad or len(set(classes)) != len(classes) or not classes:
        raise DataError(f"data.classes={list(classes)} must be distinct label indices of the {n} classes (0..{n - 1})")
    remap = {int(c): i for i, c in enumerate(classes)}
    idx = np.flatnonzero(np.isin(labels, list(remap)))
    kept = [names[c] if names else str(c) for c in classes]
    if isinstance(ds, ArrayDataset):  # arrays stay arrays (the tensor backend reads them whole)
        out = ArrayDataset(ds.images[idx], np.array([remap[int(l)] for l in labels[idx]], np.int64), ds.channels)
        out.classes = kept
        return out
    return RelabelledSubset(ds, idx.tolist(), remap, kept)


def build_dataset(data_cfg: dict, split: str | None = None, min_size: int = 0):
    """Base dataset of (PIL image, label) pairs for ``data_cfg['name']``.

    Folder datasets use ``root/<split>`` if that exists (``val`` stands in for ``test``), else ``root`` for the
    train split; a labelled folder with no split subfolders holds out ``data.holdout`` of each class as its test
    split (and trains on the rest). ``subset: N``
    keeps a fixed random N images (numpy default_rng(0), sorted), identical across runs and processes.
    ``min_size`` (folders only) rejects images whose shorter side is below it, e.g. the global crop size.
    ``val_share`` > 0 carves that share of each class out of the train split (after the subset): ``train`` is the
    rest and ``train_val`` the carved images, where a recipe is chosen without touching the test split. Keys
    ``data_cfg`` lacks take their declared defaults (:class:`mst.data.settings.DataSettings`).
    """
    data_cfg = typed("data", data_cfg)
    name = data_cfg["name"]
    split = split if split is not None else data_cfg["split"]
    carved_split = split == "train_val"
    split = "train" if carved_split else split
    channels = int(data_cfg["channels"])
    if name == "fashion_mnist":
        ds = FashionMNIST(data_cfg["root"] or DEFAULT_ROOT, split=split, channels=channels)
    elif name in ("folder", "image_folder"):
        if data_cfg["root"] is None:
            raise DataError(f"data.root must be set for data.name={name} (or pass --data DIR)")
        train_dir, test_dir, skip = split_layout(data_cfg["root"])
        held_out = name == "image_folder" and test_dir is None
        if split in ("test", "val") and test_dir is None and not held_out:
            raise DataError(f"data directory {data_cfg['root']} has no 'test' or 'val' subfolder for split={split!r}")
        small = data_cfg["small_images"]
        ds = ImageFolderDataset(
            train_dir if split == "train" or held_out else test_dir,
            labelled=(name == "image_folder"),
            channels=channels,
            bad_files=data_cfg["bad_files"],
            min_size=min_size,
            alpha=data_cfg["alpha"],
            small="upscale" if held_out else small,  # a held-out split applies the policy after it is drawn
            exclude=skip if split == "train" else (),
        )
        if held_out:  # no val/ or test/: a fixed share of each class is the test split, the rest the train split
            test = holdout_indices(ds.targets, float(data_cfg["holdout"]), HOLDOUT_SEED)
            keep = test if split in ("test", "val") else np.setdiff1d(np.arange(len(ds)), test)
            ds = SubsetDataset(ds, _apply_small_policy(ds, keep, min_size, small).tolist())
    else:
        raise DataError(f"data.name={name!r} is not one of {', '.join(DATASET_NAMES)}")
    if data_cfg["classes"]:
        ds = keep_classes(ds, [int(c) for c in data_cfg["classes"]])
    subset = data_cfg["subset"]
    if subset is not None:
        if int(subset) < 1:
            raise DataError(f"data.subset={subset} must be a positive number of images (or null)")
        if int(subset) > len(ds):
            raise DataError(f"data.subset={subset} is larger than the {len(ds)} images of the {split} split of "
                            f"{data_cfg['root'] or name}; lower it or set data.subset=null")
        if data_cfg["balanced"]:
            idx = balanced_subset_indices(np.asarray(ds.targets), int(subset), int(data_cfg["subset_seed"]))
        else:
            idx = subset_indices(len(ds), int(subset), int(data_cfg["subset_seed"]))
        ds = SubsetDataset(ds, idx.tolist())
    share = float(data_cfg["val_share"])
    if carved_split and share <= 0:
        raise DataError("split 'train_val' needs data.val_share > 0 (the share of the training labels held out)")
    if share > 0 and split == "train":
        carved = holdout_indices(np.asarray(ds.targets), share, int(data_cfg["subset_seed"]))
        keep = carved if carved_split else np.setdiff1d(np.arange(len(ds)), carved)
        ds = SubsetDataset(ds, keep.tolist())
    return ds


def absolute_indices(ds) -> np.ndarray:
    """The positions in the innermost dataset of every item of (nested) subsets ``ds``."""
    idx = np.arange(len(ds))
    while isinstance(ds, torch.utils.data.Subset):
        idx = np.asarray(ds.indices, dtype=np.int64)[idx]
        ds = ds.dataset
    return idx


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed depending only on (seed, epoch, index), stable across processes and Python versions."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class AugmentedDataset(torch.utils.data.Dataset):
    """``transform(base[i])`` with randomness fixed by (seed, epoch, i); call :meth:`set_epoch` each epoch.

    The CPU generator is reseeded inside ``torch.random.fork_rng(devices=[])`` and Python's ``random`` state
    is saved and restored, so the caller's RNG streams are untouched. Only the CPU generator is seeded
    (``torch.default_generator``), not ``torch.manual_seed``, which would also reseed CUDA generators that
    ``fork_rng(devices=[])`` does not restore.
    """

    def __init__(self, base: torch.utils.data.Dataset, transform, seed: int) -> None:
        self.base, self.transform, self.seed = base, transform, int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, label = self.base[i]
        s = sample_seed(self.seed, self.epoch, int(i))
        py_state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(s)
                random.seed(s)
                out = self.transform(img)
        finally:
            random.setstate(py_state)
        return out, label

    @property
    def classes(self) -> list[str]:
        return list(getattr(self.base, "classes", []))


def collate_crops(batch: list[tuple[list[torch.Tensor], int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """[(crops, label)] -> ([views stacked over the batch: (B, C, H, W) each], labels int64 (B,))."""
    if not batch:
        raise ValueError("collate_crops got an empty batch")
    n_views = len(batch[0][0])
    if any(len(crops) != n_views for crops, _ in batch):
        raise ValueError(f"samples have different numbers of crops: {sorted({len(c) for c, _ in batch})}")
    views = [torch.stack([crops[v] for crops, _ in batch]) for v in range(n_views)]
    labels = torch.tensor([int(label) for _, label in batch], dtype=torch.int64)
    return views, labels


def build_pretrain_dataset(cfg: dict, split: str | None = None) -> AugmentedDataset:
    """Base dataset + multi-crop transform + per-sample seeding, all from a full config."""
    base = build_dataset(cfg["data"], split=split, min_size=int(cfg["model"]["img_size"]))
    d = cfg["data"]
    transform = MultiCropTransform({**cfg["augment"], "global_size": int(cfg["model"]["img_size"])}, d["mean"], d["std"], int(d["channels"]))
    return AugmentedDataset(base, transform, seed=int(cfg["seed"]))


__all__ = [
    "ArrayDataset", "AugmentedDataset", "DATASET_NAMES", "DataError", "SubsetDataset", "balanced_subset_indices",
    "build_dataset", "build_pretrain_dataset", "collate_crops", "sample_seed", "subset_indices",
]
