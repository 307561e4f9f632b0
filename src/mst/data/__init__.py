"""Data: Fashion-MNIST, image folders, multi-crop and single-view augmentation, the batch a method reads."""
from .dataset import (
    DATASET_NAMES,
    AugmentedDataset,
    SubsetDataset,
    balanced_subset_indices,
    build_dataset,
    build_pretrain_dataset,
    collate_crops,
    sample_seed,
    subset_indices,
)
from .fashion_mnist import CLASSES, DEFAULT_ROOT, ArrayDataset, FashionMNIST, load_fashion_mnist, read_idx
from .folders import BadFileWarning, DataError, ImageFolderDataset, load_image, to_channels
from .multicrop import EvalTransform, MultiCropTransform, blur_kernel_size
from .batch import Batch
from .formats import FORMATS, Format, extensions
from .pipeline import VIEW_KINDS, ViewPipeline, build_pipeline
from .single_view import GPUSingleView, SingleViewTransform

__all__ = [
    "Batch", "GPUSingleView", "SingleViewTransform", "VIEW_KINDS", "ViewPipeline", "build_pipeline",
    "CLASSES", "DATASET_NAMES", "DEFAULT_ROOT", "EXTENSIONS", "FORMATS", "Format", "extensions", "ArrayDataset",
    "AugmentedDataset", "BadFileWarning",
    "DataError", "EvalTransform", "FashionMNIST", "ImageFolderDataset", "MultiCropTransform", "SubsetDataset",
    "balanced_subset_indices", "blur_kernel_size", "build_dataset", "build_pretrain_dataset", "collate_crops", "load_fashion_mnist",
    "load_image", "read_idx", "sample_seed", "subset_indices", "to_channels",
]


def __getattr__(name: str):
    """``EXTENSIONS``: the registered formats' extensions now (a registered format is in it), not a copied list."""
    if name == "EXTENSIONS":
        return extensions()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
