"""Values that come from the data: every key whose value is ``auto`` after the preset and ``--set`` is resolved here,
once, before validation, and each choice is reported (:class:`Choice`) so the CLI can say what it inferred and how
to override it. A preset or ``--set`` pins any of them.

One key sets the image size, ``model.img_size`` (``augment.global_size`` is its old name): ``model.patch_size``
suits it, ``augment.local_size`` is 3/7 of it (DINO's 96 of 224) and MST's
decoder has one width per 2x upsampling of the patch.

>>> from mst.config import load_config
>>> cfg = load_config(overrides=["model.img_size=56"])  # Fashion-MNIST (no --data): 1 channel, its statistics
>>> cfg["model"]["img_size"], cfg["augment"]["local_size"], cfg["model"]["patch_size"]
(56, 24, 8)
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from mst.config_checks import AUTO
from mst.registry import ConfigError

FASHION_MNIST_STATS = ([0.2860], [0.3530])
CPU_MAX_SIZE, GPU_MAX_SIZE = 64, 224  # an inferred image size is capped by the device (steps in minutes on a CPU)
STEPS = 1500  # optim.epochs=auto: about this many steps (the CPU demo's budget: minutes on a laptop)
BATCH = {"CPU": 32, "GPU": 128}  # optim.batch_size=auto, per process


@dataclass(frozen=True)
class Choice:
    """One resolved value: the key, the value, why it was chosen, how to override it."""

    key: str
    value: object
    why: str

    def line(self) -> str:
        if self.key.startswith("("):  # a count, not a key
            return f"  {self.key[1:-1]}: {self.value}    ({self.why})"
        how = f"{self.key} FILE" if self.key.startswith("--") else f"--set {self.key}=..."
        return f"  {self.key} = {self.value}    ({self.why}; {how})"


def is_auto(*values) -> bool:
    """Whether any of ``values`` is still "auto" (to be derived from the data)."""
    return any(isinstance(v, str) and v == AUTO for v in values)


def preferred_patch(size: int) -> int:
    """16 px from 160 px up (ViT-S/16 at 224: 14x14 tokens), 8 px from 48 px, else 4 px (28 px: 7x7); below 16 px
    the power of two that still gives 4x4 tokens (8 px: 2), not a 2x2 grid."""
    if size >= 16:
        return 16 if size >= 160 else 8 if size >= 48 else 4
    return 1 << max(0, (max(size, 1) // 4).bit_length() - 1)


def patch_for(size: int) -> int:
    """The preferred patch for a pinned ``size``, or the largest power of two below it that divides ``size``."""
    want = preferred_patch(size)
    while want > 1 and size % want:
        want //= 2
    return want


def local_for(global_size: int, patch: int) -> int:
    """3/7 of the global crop (DINO's 96 of 224, 12 of 28), a multiple of the patch."""
    return max(patch, int(round(global_size * 3 / 7 / patch)) * patch)


def decoder_widths(patch: int) -> list[int]:
    """MST's CNN decoder: one width per 2x upsampling (log2(patch) of them), halving from 256, at least 16."""
    n = max(1, math.ceil(math.log2(max(patch, 2))))
    return [max(16, 256 >> i) for i in range(n)]


def _device_cap() -> tuple[int, str]:
    import torch

    return (GPU_MAX_SIZE, "GPU") if torch.cuda.is_available() else (CPU_MAX_SIZE, "CPU")


def _resolve_name(cfg: dict, out: list[Choice]) -> str:
    from mst.data.inspect import detect_kind
    from mst.methods import METHODS

    d = cfg["data"]
    if not is_auto(d["name"]):
        return d["name"]
    if d["root"] is None:
        d["name"] = "fashion_mnist"
        out.append(Choice("data.name", "fashion_mnist", "no --data / data.root: Fashion-MNIST from the Debian package"))
    else:
        labels = METHODS.get(cfg["method"], "method").needs_labels  # pretraining takes no classes on a guess
        d["name"], why = detect_kind(d["root"], labels=labels)
        out.append(Choice("data.name", d["name"], f"{d['root']} holds {why}"))
    return d["name"]


def _sizes(cfg: dict, median: int | None, out: list[Choice]) -> None:
    m, a = cfg["model"], cfg["augment"]
    if not is_auto(m["img_size"]):
        pass  # pinned by a preset or --set
    elif median is None:  # Fashion-MNIST
        m["img_size"] = 28
        out.append(Choice("model.img_size", 28, "Fashion-MNIST's 28 px"))
    else:
        cap, device = _device_cap()
        size = min(median, cap)
        patch = int(m["patch_size"]) if not is_auto(m["patch_size"]) else preferred_patch(size)
        size = max(2 * patch, size // patch * patch)  # a multiple of the patch: 150 px -> 144 at patch 8
        m["img_size"] = size
        out.append(Choice("model.img_size", size, f"the images' median shorter side {median} px, at most {cap} on "
                                                  f"this {device}, a multiple of the patch"))
    if is_auto(m["patch_size"]) and str(m["arch"]).startswith("swin"):
        m["patch_size"] = 4  # Swin's patch embedding is 4 px (its stages downsample to 32)
    if is_auto(m["patch_size"]):
        size = int(m["img_size"])
        m["patch_size"] = patch_for(size)
        grid = size // m["patch_size"]
        odd = (f"; {preferred_patch(size)} px does not divide {size} px, so the largest power of two that does"
               if m["patch_size"] < preferred_patch(size) else "")
        out.append(Choice("model.patch_size", m["patch_size"], f"{grid}x{grid} tokens at {size} px{odd}"))
        if median is not None and median < 16:
            out.append(Choice("(small images)", f"{median} px", f"a {m['patch_size']} px patch keeps {grid}x{grid} "
                                                                "tokens; --set model.img_size=32 upscales them to "
                                                                "8x8 tokens of 4 px instead"))
    if is_auto(a["local_size"]):
        a["local_size"] = local_for(int(m["img_size"]), int(m["patch_size"]))
        from mst.methods import METHODS

        if cfg.get("method") in METHODS and METHODS.get(cfg["method"]).views == "multicrop":
            out.append(Choice("augment.local_size", a["local_size"], "3/7 of the global crop, as DINO's 96 of 224"))
    if "mst" in cfg and is_auto(cfg["mst"]["decoder_channels"]):
        stride = 32 if str(m["arch"]).startswith("swin") else int(m["patch_size"])  # the tokens' stride in pixels
        cfg["mst"]["decoder_channels"] = decoder_widths(stride)
        if cfg["mst"]["decoder"] == "cnn" and median is not None:
            out.append(Choice("mst.decoder_channels", cfg["mst"]["decoder_channels"],
                              f"one width per 2x upsampling of {m['patch_size']} px patches"))


def _folder_data(cfg: dict, out: list[Choice]) -> int:
    """Channels, statistics and the notes of a folder; returns the images' median shorter side."""
    from mst.data.dataset import split_layout
    from mst.data.inspect import measure_stats, scan_folder

    d = cfg["data"]
    root, _, skip = split_layout(d["root"])  # the train split (statistics never see test images)
    scan = scan_folder(root, seed=int(d["subset_seed"]), exclude=skip, alpha=d["alpha"])
    bands = ", ".join(f"{n} file{'s' if n != 1 else ''} with {b} band{'s' if b != 1 else ''}"
                      for b, n in sorted(scan.bands.items()))
    sampled = f" (headers of {scan.sampled} of {scan.n_files})" if scan.sampled < scan.n_files else ""
    if is_auto(d["channels"]):
        d["channels"] = scan.channels()
        out.append(Choice("data.channels", d["channels"], f"{bands}{sampled}"))
    c = int(d["channels"])
    if c == 3 and scan.bands.get(1):
        out.append(Choice("(grey files)", scan.bands[1], "grey images repeated to 3 channels to join the colour ones"))
    if c == 1 and scan.bands.get(3):
        out.append(Choice("(colour files)", scan.bands[3], "colour images turned grey (ITU-R 601-2 luma) because "
                                                           "data.channels=1"))
    if scan.alpha:
        out.append(Choice("data.alpha", d["alpha"], _alpha_why(scan, d["alpha"], c)))
    if scan.high_bit:
        out.append(Choice("(16-bit / float files)", scan.high_bit, "TIFF and DICOM keep full precision (uint16 / "
                                                                    "65535, floats as stored); 16-bit PNGs are read "
                                                                    "in 8 bits"))
    if is_auto(d["mean"]) or is_auto(d["std"]):
        mean, std, n = measure_stats(scan.files, c, seed=int(d["subset_seed"]), alpha=d["alpha"])
        if is_auto(d["mean"]):
            d["mean"] = mean
        if is_auto(d["std"]):
            d["std"] = std
        out.append(Choice("data.mean", d["mean"], f"measured on {n} images"))
        out.append(Choice("data.std", d["std"], f"measured on {n} images"))
    out.append(Choice("(images)", scan.n_files, f"under {root}"))
    cfg["_scan"] = scan
    return scan.median_side()


def _alpha_why(scan, policy: str, channels: int) -> str:
    """What happens to the alpha bands of a folder, and for TIFFs (whose 4th sample tifffile tags as alpha) how to
    keep it as data."""
    n = f"{scan.alpha} files with transparency"
    kept = {b + 1 for b in scan.bands} & {channels} and policy != "keep"
    if policy == "keep" or kept:
        return f"{n}: the alpha band kept as a band (data.channels={channels})"
    what = "alpha band dropped" if policy == "drop" else f"composited onto {policy}"
    tiff = (f"; {len(scan.alpha_tiff)} are TIFFs (e.g. {scan.alpha_tiff[0]}): if their 4th band is data (RGB + NIR), "
            "--set data.alpha=keep") if scan.alpha_tiff else ""
    return f"{n}: {what} (black | white | drop | keep){tiff}"


def _train_images(cfg: dict, scan) -> int:
    """How many images one epoch of pretraining reads."""
    d = cfg["data"]
    if d.get("subset"):
        return int(d["subset"])
    if scan is None:
        return 60000  # Fashion-MNIST's train split
    from mst.data.dataset import has_test_split

    held_out = d["name"] == "image_folder" and not has_test_split(d["root"])
    return scan.n_files - held_out_count(cfg, scan) if held_out else scan.n_files


def held_out_count(cfg: dict, scan) -> int:
    """How many of a labelled folder's images its held-out test split takes (``data.holdout`` of each class, the
    rule of :func:`mst.data.dataset.holdout_indices`), from the scanned file list."""
    import numpy as np

    from mst.data.dataset import HOLDOUT_SEED, holdout_indices

    classes = [p.relative_to(scan.root).parts[0] for p in scan.files]
    _, labels = np.unique(np.asarray(classes), return_inverse=True)
    return len(holdout_indices(labels, float(cfg["data"]["holdout"]), HOLDOUT_SEED))


def _held_out_note(cfg: dict, scan, out: list[Choice]) -> None:
    """Pretraining on a labelled folder with no test split of its own: say how many images stay out, and why."""
    from mst.data.dataset import has_test_split
    from mst.methods import METHODS

    d = cfg["data"]
    if d["name"] != "image_folder" or d["root"] is None or has_test_split(d["root"]) \
            or METHODS.get(cfg["method"], "method").needs_labels:
        return
    share = float(d["holdout"])
    n = f"{held_out_count(cfg, scan)} of {scan.n_files} images" if scan is not None else f"{share:.0%} of the images"
    out.append(Choice("(kept out of pretraining)", n, f"data.holdout={share} of each class is the test split that "
                                                      "`mst knn / linear / finetune --data` on this folder score on; "
                                                      "--set data.name=folder pretrains on every image"))


def _schedule(cfg: dict, scan, out: list[Choice]) -> None:
    o = cfg["optim"]
    _, device = _device_cap()
    if is_auto(o["batch_size"]):
        import os

        world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
        n = _train_images(cfg, scan) // world
        o["batch_size"] = max(1, min(BATCH[device], n))
        why = f"per process on a {device}"
        if o["batch_size"] < BATCH[device]:  # a small folder: the largest batch that still makes a step
            share = f"each of {world} processes' {n}" if world > 1 else f"the {n}"
            why = f"{BATCH[device]} per process on a {device}, lowered to {share} training images"
        out.append(Choice("optim.batch_size", o["batch_size"], why))
    if is_auto(o["base_lr"]):  # a method-agnostic preset: each method's own small-budget lr
        from mst.methods import METHODS

        o["base_lr"] = float(METHODS.get(cfg["method"], "method").small_budget_base_lr)
        out.append(Choice("optim.base_lr", o["base_lr"], f"{cfg['method']}'s lr (x batch / 256) for about "
                                                         f"{STEPS} steps, docs/results.md"))
    if is_auto(o["epochs"]):
        n = _train_images(cfg, scan)
        o["epochs"] = max(1, math.ceil(STEPS * int(o["batch_size"]) / n))
        out.append(Choice("optim.epochs", o["epochs"], f"about {STEPS} steps of {o['batch_size']} over {n} images"))
        if float(o["warmup_epochs"]) > 0.1 * o["epochs"]:  # a large folder: few epochs, keep warm-up a tenth of them
            o["warmup_epochs"] = int(0.1 * o["epochs"])
            out.append(Choice("optim.warmup_epochs", o["warmup_epochs"], "a tenth of the inferred epochs"))


def _from_init(cfg: dict, out: list[Choice], previous: dict | None = None):
    """``model.init``: the backbone's timm architecture, width, depth and heads come from the source, its patch
    size too unless pinned (then the patch embedding is resampled). ``model.pos_embed`` keeps its meaning: with
    ``sincos`` the source's (resampled) position embeddings are loaded and stay fixed, as MAE's are."""
    m = cfg["model"]
    if not m.get("init"):
        return None
    old = (previous or {}).get("model", {})
    if old.get("init") == m["init"]:  # a relaunch: the run's own resolution, the source is not read again
        for key in ("arch", "embed_dim", "depth", "num_heads", "patch_size"):
            m[key] = old[key]
        out.append(Choice("model.arch", m["arch"], f"from --init {m['init']}, as the run's config.yaml resolved it"))
        return None
    from mst.sources import load_source

    source = load_source(str(m["init"]))
    arch = source.arch()
    m.update(arch=arch["arch"].split(".")[0], embed_dim=arch["embed_dim"], depth=arch["depth"],
             num_heads=arch["num_heads"])
    if is_auto(m["patch_size"]):
        m["patch_size"] = arch["patch_size"]
    out.append(Choice("model.arch", m["arch"], f"from --init {m['init']}: width {arch['embed_dim']}, depth "
                                               f"{arch['depth']}, {arch['num_heads']} heads, patch "
                                               f"{arch['patch_size']} px"))
    return source


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _from_previous(cfg: dict, previous: dict, out: list[Choice]) -> None:
    """A relaunch on a run directory keeps the values its first launch resolved (a resume must not re-measure the
    data, nor pick another size on another machine)."""
    from mst.config_renames import upgrade

    old = _flat(upgrade(copy.deepcopy(previous)))
    for key, value in _flat(cfg).items():
        if is_auto(value) and key in old and not is_auto(old[key]):
            section, leaf = key.rsplit(".", 1)
            node = cfg
            for part in section.split("."):
                node = node[part]
            node[leaf] = old[key]
            out.append(Choice(key, old[key], "as the run's config.yaml resolved it"))


def resolve_auto(cfg: dict, previous: dict | None = None) -> list[Choice]:
    """Replace every ``auto`` value of ``cfg`` (in place) and return what was chosen and why. ``previous``: the
    resolved config of the run being resumed, whose values are kept."""
    out: list[Choice] = []
    if previous:
        _from_previous(cfg, previous, out)
    d = cfg["data"]
    name = _resolve_name(cfg, out)
    median = None
    if name == "fashion_mnist":
        if is_auto(d["channels"]):
            d["channels"] = 1
        mean, std = FASHION_MNIST_STATS
        if is_auto(d["mean"]):
            d["mean"] = list(mean) * int(d["channels"])
        if is_auto(d["std"]):
            d["std"] = list(std) * int(d["channels"])
    elif any(is_auto(d[k]) for k in ("channels", "mean", "std")) or is_auto(cfg["optim"]["epochs"]) \
            or is_auto(cfg["model"]["img_size"]):
        if d["root"] is None:
            raise ConfigError(f"data.name={name} needs data.root (or --data DIR)")
        median = _folder_data(cfg, out)
    source = _from_init(cfg, out, previous)
    _sizes(cfg, median, out)
    if source is not None:
        from mst.sources import planned_changes

        m = cfg["model"]
        for line in planned_changes(source, int(m["patch_size"]), int(m["img_size"]), int(d["channels"])):
            out.append(Choice("(from --init)", line, "fitted to the data on loading"))
    scan = cfg.pop("_scan", None)
    _held_out_note(cfg, scan, out)
    _schedule(cfg, scan, out)
    if scan is not None and d.get("small_images") != "error":
        small = scan.smaller_than(int(cfg["model"]["img_size"]))
        if small:
            verb = "upscaled" if d["small_images"] == "upscale" else "skipped"
            out.append(Choice("data.small_images", d["small_images"],
                              f"{small} of {scan.n_files} images are smaller than {cfg['model']['img_size']} px "
                              f"and are {verb} (upscale | skip | error)"))
    return out


def summary(choices: list[Choice], cfg: dict) -> str:
    """The lines the CLI prints before training: what was inferred and how to override it."""
    if not choices:
        return ""
    lines = ["inferred from the data (a preset or --set pins any of them):"]
    lines += [c.line() for c in choices]
    m = cfg["model"]
    width = m.get("embed_dim") or "the arch's"
    lines.append(f"  model: {m['arch']} (width {width}, depth {m.get('depth') or 'the arch' + chr(39) + 's'}), "
                 f"{cfg['optim']['epochs']} epochs of batch {cfg['optim']['batch_size']}, method {cfg['method']}")
    return "\n".join(lines)


