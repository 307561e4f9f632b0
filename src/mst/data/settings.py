"""The ``data`` and ``augment`` sections: where the images come from and how views are made of them."""
from __future__ import annotations

from dataclasses import dataclass

from mst.settings import (AT_LEAST_1, NON_NEGATIVE, PROBABILITY, SCALE, SIGMA, Each, ListOf, Range, Rule, Settings,
                          setting)

ALPHA_POLICIES = ("black", "white", "drop", "keep")  # data.alpha: composite onto black / white, drop, keep as a band
SMALL_POLICIES = ("upscale", "skip", "error")  # data.small_images


@dataclass(frozen=True)
class DataSettings(Settings, section="data"):
    name: str = setting("auto", "fashion_mnist | folder (unlabelled, any nesting) | image_folder (class subfolders) | "
                        "auto (IDX files -> fashion_mnist; class subfolders -> image_folder; else folder)",
                        choices=("auto", "fashion_mnist", "folder", "image_folder"))
    root: str | None = setting(None, "the folder (None: /usr/share/datasets/fashion-mnist for fashion_mnist)",
                               kind=str, resumable=True)
    split: str = setting("train", "which split trains")
    subset: int | None = setting(None, "a fixed random subset of that many images (seeded)", kind=int,
                                 range=AT_LEAST_1)
    balanced: bool = setting(False, "subset: the same number of images per class (labelled data only)")
    subset_seed: int = setting(0, "which fixed subset")
    channels: int | str = setting("auto", "the files' band count (grey 1, colour 3, multiband N); 1 <-> 3 convert, "
                                  "else error", kind=int, range=AT_LEAST_1)
    bad_files: str = setting("error", "an unreadable file: error | skip", choices=("error", "skip"), resumable=True)
    small_images: str = setting("upscale", "images smaller than the crop: upscale (shorter side to it) | skip | "
                                "error", choices=SMALL_POLICIES)
    alpha: str = setting("black", "8-bit transparency: composite onto black | white | drop it | keep it as a band",
                         choices=ALPHA_POLICIES)
    classes: list | None = setting(None, "keep only these classes (label indices) of labelled data, relabelled "
                                   "0..K-1 in this order", kind=ListOf(int))
    holdout: float = setting(0.2, "a labelled folder with no val/ or test/: this share of each class is its test "
                             "split", range=Range(0, 1, lo_open=True, hi_open=True))
    val_share: float = setting(0.0, "> 0: this share of each class of the training (sub)set is held out to choose "
                               "a recipe", range=Range(0, 1, hi_open=True))
    num_workers: int = setting(0, "DataLoader worker processes", range=NON_NEGATIVE, resumable=True)
    mean: list | str = setting("auto", "per-band mean (auto: Fashion-MNIST's [0.2860]; a folder's measured on a "
                               "seeded sample of 256 images)", kind=ListOf(float))
    std: list | str = setting("auto", "per-band std (auto: as data.mean)", kind=ListOf(float),
                              range=Each(Range(0, lo_open=True)))


def _jitter(v: list) -> bool:
    return len(v) == 4 and all(x >= 0 for x in v) and v[3] <= 0.5


@dataclass(frozen=True)
class AugmentSettings(Settings, section="augment"):
    """Multi-crop methods (MST) use all of it; single-view methods one global crop (model.img_size) + flip."""

    local_size: int | str = setting("auto", "local crop side (auto: 3/7 of model.img_size, DINO's 96 of 224, a "
                                    "multiple of the patch)", kind=int, range=AT_LEAST_1)
    n_local: int = setting(6, "local crops per image", range=NON_NEGATIVE)
    global_scale: list = setting([0.4, 1.0], "global crops' share of the image [low, high]", range=SCALE)
    local_scale: list = setting([0.05, 0.4], "local crops' share of the image [low, high]", range=SCALE)
    flip_p: float = setting(0.5, "horizontal flip probability", range=PROBABILITY)
    color_jitter: list = setting([0.4, 0.4, 0.2, 0.1], "brightness, contrast, saturation, hue",
                                 range=Rule(_jitter, "be four numbers >= 0 (brightness, contrast, saturation, hue), "
                                            "hue <= 0.5"))
    color_jitter_p: float = setting(0.8, "probability of the colour jitter", range=PROBABILITY)
    grayscale_p: float = setting(0.2, "probability of greying a view", range=PROBABILITY)
    blur_p: list = setting([1.0, 0.1, 0.5], "blur probability: global 1, global 2, locals",
                           range=Each(PROBABILITY, n=3, what="global 1, global 2, locals"))
    blur_sigma: list = setting([0.1, 2.0], "Gaussian blur sigma [low, high]", range=SIGMA)
    solarize_p: float = setting(0.2, "solarisation probability (global 2 only)", range=PROBABILITY)
    backend: str = setting("pil", "pil (per image, DataLoader workers) | tensor (batched on the training device)",
                           choices=("pil", "tensor"))
    rand_augment: str | None = setting(None, "single view, pil backend: a timm RandAugment spec, e.g. "
                                       "rand-m9-mstd0.5-inc1", kind=str)
    crop: str = setting("rrc", "single view: rrc (RandomResizedCrop, global_scale) | pad (zero-pad by `pad` px, "
                        "random crop)", choices=("rrc", "pad"))
    pad: int = setting(2, "crop=pad: pixels of zero padding on each side", range=NON_NEGATIVE)
    eval_crop: float = setting(1.0, "evaluation: resize the shorter side to img_size / eval_crop, centre crop "
                               "img_size (0.875: DINO's and MAE's 256 -> 224; 1: the whole image)",
                               range=Range(0, 1, lo_open=True))
