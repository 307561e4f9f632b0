"""Data: Fashion-MNIST, image folders, multi-crop augmentation."""
from .dataset import (
    DATASET_NAMES,
    AugmentedDataset,
    SubsetDataset,
    build_dataset,
    build_pretrain_dataset,
    collate_crops,
    sample_seed,
    subset_indices,
)
from .fashion_mnist import CLASSES, DEFAULT_ROOT, ArrayDataset, FashionMNIST, load_fashion_mnist, read_idx
from .folders import EXTENSIONS, BadFileWarning, DataError, ImageFolderDataset, load_image, to_channels
from .multicrop import EvalTransform, MultiCropTransform, blur_kernel_size

__all__ = [
    "CLASSES", "DATASET_NAMES", "DEFAULT_ROOT", "EXTENSIONS", "ArrayDataset", "AugmentedDataset", "BadFileWarning",
    "DataError", "EvalTransform", "FashionMNIST", "ImageFolderDataset", "MultiCropTransform", "SubsetDataset",
    "blur_kernel_size", "build_dataset", "build_pretrain_dataset", "collate_crops", "load_fashion_mnist",
    "load_image", "read_idx", "sample_seed", "subset_indices", "to_channels",
]
