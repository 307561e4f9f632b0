"""``mst finetune``: fine-tune a pretrained checkpoint's backbone (or the same ViT from scratch) on labelled data,
on the engine that pretrains (so checkpoints, resume, SIGTERM, torchrun, logs and the NaN stop come with it).

The config of a fine-tune: the ``finetune`` method's defaults, then the fine-tuning preset (the recipe), then what
the checkpoint decides (the backbone's shape, the data and their normalisation, the image size), then the user's
overrides. ``train_subset`` takes a class-balanced labelled subset (low-label fine-tuning). Top-1 on the test split
is measured every ``log.knn_every`` epochs; ``finetune.json`` reports the history, the best and the last, and the
data: images used per split, the number of classes and their names. The class names also go into every checkpoint
of the run (``checkpoint["classifier"]["class_names"]``), where ``mst export`` finds them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from mst.config import load_config
from mst.data import build_dataset
from mst.checkpoint import load_checkpoint, resolve_checkpoint
from mst.registry import ConfigError

Log = Callable[[str], None]
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_PRESET = CONFIGS / "fashion_mnist_finetune.yaml"
# the recipe `mst finetune-search` chose for each kind of backbone (docs/results.md, "Fair fine-tuning"): every
# comparison gives each backbone its own, chosen by the same search on held-out training labels
CHOSEN_PRESETS = {"scratch": CONFIGS / "fashion_mnist_finetune_scratch.yaml",
                  "mst": CONFIGS / "fashion_mnist_finetune_mst.yaml",
                  "dino": CONFIGS / "fashion_mnist_finetune_mst.yaml",  # plain DINO: an MST backbone, no mask
                  "simmim": CONFIGS / "fashion_mnist_finetune_simmim.yaml"}


def default_preset(pre: dict, random_init: bool) -> Path:
    """The fine-tuning recipe for a checkpoint whose config is ``pre`` when no --config is given: the one the search
    chose for the same ViT from scratch, for an MST / DINO backbone, for SimMIM, or for MAE (the default)."""
    kind = "scratch" if random_init else pre.get("method")
    return CHOSEN_PRESETS.get(kind, DEFAULT_PRESET)
FROM_CHECKPOINT = ("model.arch", "model.patch_size", "model.img_size", "model.depth", "model.embed_dim",
                   "model.num_heads", "data.name", "data.root", "data.channels", "data.mean", "data.std",
                   "data.alpha", "data.holdout", "data.classes")


def _get(cfg: dict, key: str):
    section, leaf = key.split(".")
    return cfg[section][leaf]


def finetune_config(ckpt: str | Path, preset: str | Path | None = None, overrides: list[str] | None = None,
                    train_subset: int | None = None, random_init: bool = False, which: str | None = None,
                    log: Log | None = None) -> dict:
    """The resolved config of fine-tuning ``ckpt`` (see the module docstring for the order). A recipe's batch
    larger than a small labelled folder (and not pinned by ``--set optim.batch_size``) is lowered to the largest that
    fits, and ``log`` says so."""
    pre = load_checkpoint(ckpt)["config"]
    derived = [f"{k}={json.dumps(_get(pre, k))}" for k in FROM_CHECKPOINT
               if k.split(".")[1] in pre[k.split(".")[0]]]  # (a checkpoint of an older version lacks newer keys)
    init = "null" if random_init else str(resolve_checkpoint(ckpt).resolve())
    derived += ["method=finetune", f"finetune.init={init}", f"finetune.init_backbone={which or 'null'}"]
    if train_subset is not None:
        derived += [f"data.subset={int(train_subset)}", "data.balanced=true"]
    preset = preset or default_preset(pre, random_init)
    cfg = load_config(preset, derived + list(overrides or []))
    if cfg["data"]["name"] == "folder":
        raise ConfigError("fine-tuning needs labels, but the data (data.name=folder) are unlabelled: pass a "
                          "labelled folder with --data DIR --set data.name=image_folder (class subfolders)")
    train = None if cfg["data"]["name"] == "fashion_mnist" else build_dataset(cfg["data"])
    classes = dataset_classes(cfg) if train is None else [str(c) for c in getattr(train, "classes", [])] or None
    fixes = []
    if classes and len(classes) != int(cfg["finetune"]["num_classes"]):
        fixes.append(f"finetune.num_classes={len(classes)}")
    pinned = any(o.split("=", 1)[0].strip() == "optim.batch_size" for o in overrides or [])
    batch = fitting_batch(cfg, len(train)) if train is not None and not pinned else None
    if batch is not None:
        fixes.append(f"optim.batch_size={batch}")
        (log or print)(f"optim.batch_size = {batch}    (the recipe's {cfg['optim']['batch_size']} is more than the "
                       f"{len(train)} training images; --set optim.batch_size=... pins it)")
    if fixes:
        cfg = load_config(preset, derived + list(overrides or []) + fixes)
    return cfg


def fitting_batch(cfg: dict, n_images: int) -> int | None:
    """The batch a fine-tune on ``n_images`` (per process) uses when the recipe's does not fit (an epoch drops the
    last incomplete batch): every image, an even number when Mixup / CutMix pair the images; None when it fits."""
    import os

    n = n_images // max(1, int(os.environ.get("WORLD_SIZE", "1")))
    if int(cfg["optim"]["batch_size"]) <= n:
        return None
    f = cfg["finetune"]
    even = float(f["mixup"]) > 0 or float(f["cutmix"]) > 0
    return max(2 if even else 1, n - (n % 2 if even else 0))


def dataset_classes(cfg: dict) -> list[str] | None:
    """Class names of the config's labelled training data, in label order: Fashion-MNIST's ``CLASSES``, an image
    folder's class subfolders (``dataset.classes``); None when the dataset names none."""
    if cfg["data"]["name"] == "fashion_mnist":
        from mst.data import CLASSES

        kept = cfg["data"].get("classes")
        return [CLASSES[int(c)] for c in kept] if kept else list(CLASSES)
    classes = getattr(build_dataset(dict(cfg["data"], subset=None)), "classes", None)
    return [str(c) for c in classes] if classes else None


def _split_counts(cfg: dict, test_source) -> dict:
    """{"val_images", "test_images", "test_split"}: the images the test evaluation scores and the split they come
    from ("test"; "val" for an image folder with val/ but no test/; "holdout" for one without split subfolders,
    whose held-out share is its test split); val_images counts a val/ split next to a test/ one (not used by the
    fine-tune), else None."""
    from mst.eval.knn import split_size

    from mst.data.dataset import split_layout

    data = cfg["data"]
    test_split, val_images = "test", None
    if data["name"] in ("image_folder", "folder") and data.get("root"):
        root = Path(data["root"])
        test_dir = split_layout(root)[1]
        if test_dir is None:
            test_split = "holdout"
        elif test_dir.name == "val":
            test_split = "val"
        elif (root / "val").is_dir():
            val_images = len(build_dataset(dict(data, subset=None), "val"))
    return {"val_images": val_images, "test_images": split_size(test_source), "test_split": test_split}


def _trainer_with_class_names(cfg: dict, out_dir, log: Log):
    """The engine's Trainer, whose checkpoints also carry the class names (its ``class_names``, set from the
    training dataset) in their ``classifier`` entry."""
    from mst.engine.trainer import Trainer

    class FinetuneTrainer(Trainer):
        class_names: list[str] | None = None

        def state(self) -> dict:
            state = super().state()
            if self.class_names and isinstance(state.get("classifier"), dict):
                state["classifier"] = {**state["classifier"], "class_names": list(self.class_names)}
            return state

    trainer = FinetuneTrainer(cfg, out_dir, log=log)
    if cfg["data"]["name"] == "fashion_mnist":
        trainer.class_names = dataset_classes(cfg)
    else:  # the dataset the trainer built (no second scan of a large folder), else the config's
        classes = getattr(getattr(trainer, "base_dataset", None), "classes", None)
        trainer.class_names = [str(c) for c in classes] if classes else dataset_classes(cfg)
    return trainer


def _scores(method, source, device) -> tuple[float, float]:
    """(top-1, top-5) of ``method.predict`` on an (images, labels) pair or a dataset, in eval mode."""
    from mst.eval.linear import topk_accuracy

    was_training = method.training
    method.eval()
    logits, labels = [], []
    try:
        batches = ([(source[0][i:i + 512], source[1][i:i + 512]) for i in range(0, len(source[0]), 512)]
                   if isinstance(source, tuple) else torch.utils.data.DataLoader(source, batch_size=512))
        for x, y in batches:
            logits.append(method.predict(x.to(device)).float().cpu())
            labels.append(torch.as_tensor(y))
    finally:
        method.train(was_training)
    return topk_accuracy(torch.cat(logits), torch.cat(labels).long())


def test_evaluator(cfg: dict) -> Callable:
    """``evaluate(trainer) -> {"test_top1", "test_top5"}`` on the config's test split (``log.knn_test_subset``
    images, seed 1; null: all), in eval mode; with ``data.val_share`` > 0 also {"val_top1", "val_top5"} on the
    training labels held out to choose a recipe."""
    from mst.eval.features import load_eval_split

    cache: dict = {}

    def test_split():
        """The (cached) test split the evaluation scores."""
        if "test" not in cache:
            cache["test"] = load_eval_split(cfg, "test", cfg["log"]["knn_test_subset"], seed=1)
        return cache["test"]

    def evaluate(trainer) -> dict[str, float]:
        top1, top5 = _scores(trainer.method, test_split(), trainer.device)
        out = {"test_top1": top1, "test_top5": top5}
        if float(cfg["data"].get("val_share") or 0) > 0:
            if "val" not in cache:
                cache["val"] = load_eval_split(cfg, "train_val")
            out["val_top1"], out["val_top5"] = _scores(trainer.method, cache["val"], trainer.device)
        return out

    evaluate.test_split = test_split  # type: ignore[attr-defined]
    return evaluate


def summarize(run_dir: Path) -> dict:
    """History, best and last test top-1 of a fine-tuning run, from its metrics.jsonl."""
    history = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "test_top1" in rec:
            history.append({"epoch": rec["epoch"], "top1": rec["test_top1"], "top5": rec["test_top5"],
                            **({"val_top1": rec["val_top1"]} if "val_top1" in rec else {})})
    if not history:
        raise RuntimeError(f"{run_dir} holds no test evaluation (log.knn_every=0?)")
    best = max(history, key=lambda r: r["top1"])
    out = {"top1": history[-1]["top1"], "top5": history[-1]["top5"], "best_top1": best["top1"],
           "best_epoch": best["epoch"], "history": history}
    if "val_top1" in history[-1]:  # the number a recipe search may look at (never the test top-1)
        out["val_top1"] = history[-1]["val_top1"]
    return out


def run_finetune(ckpt: str | Path, out_dir: str | Path, preset: str | Path | None = None,
                 overrides: list[str] | None = None, train_subset: int | None = None, random_init: bool = False,
                 which: str | None = None, log: Log = print) -> dict:
    """Fine-tune (resuming if ``out_dir`` holds a checkpoint) and write ``out_dir/finetune.json``: {"top1" (last
    evaluation), "top5", "best_top1", "best_epoch", "history", "random_init", "source", "train_images" (labelled
    images trained on), "val_images" (a val/ split left unused next to test/, else null), "test_images" (images
    scored), "test_split", "num_classes", "class_names", ...}. The checkpoints also hold the class names (for
    ``mst export``). Returns it, or {"status": "preempted"} when stopped by a signal."""
    cfg = finetune_config(ckpt, preset, overrides, train_subset, random_init, which, log=log)
    if int(cfg["log"]["knn_every"]) < 1:
        raise ConfigError("fine-tuning reports test top-1: set log.knn_every >= 1 (epochs between evaluations)")
    trainer = _trainer_with_class_names(cfg, out_dir, log)
    class_names = trainer.class_names
    if not random_init:
        name = trainer.method.init_from(cfg["finetune"]["init"], cfg["finetune"]["init_backbone"])
        log(f"fine-tuning the {name} backbone of {cfg['finetune']['init']}")
    else:
        log(f"fine-tuning the architecture of {ckpt} from a random initialisation (the from-scratch baseline)")
    evaluator = test_evaluator(cfg)
    status = trainer.fit(evaluator=evaluator)
    if status != "done":
        return {"status": status}
    res = {**summarize(Path(out_dir)), "random_init": random_init, "source": str(ckpt),
           "backbone": None if random_init else cfg["finetune"]["init_backbone"],
           "train_images": int(len(trainer.pipeline.dataset)), **_split_counts(cfg, evaluator.test_split()),
           "num_classes": int(cfg["finetune"]["num_classes"]), "class_names": class_names,
           "epochs": int(cfg["optim"]["epochs"]), "seed": int(cfg["seed"])}
    if trainer.dist.is_main:
        (Path(out_dir) / "finetune.json").write_text(json.dumps(res, indent=2))
    return res
