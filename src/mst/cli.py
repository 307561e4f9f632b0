"""``mst`` command line: pretrain, evaluate (knn, linear, dense), visualize, export, ablate."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DESCRIPTION = """mst: self-supervised pretraining of vision transformers with attention-guided masking.

Methods (config key `method`): mst (MST, Li et al. NeurIPS 2021), dino (plain DINO: MST with no mask and no decoder),
mae, simmim.

subcommands:
  pretrain   train a ViT with a method (see configs/ for presets)
  knn        weighted k-NN accuracy of a checkpoint's frozen CLS features
  linear     linear probe on frozen features (DINO-style, or MAE's BatchNorm + linear with LARS)
  finetune   fine-tune a checkpoint's backbone end to end (or the same ViT from scratch), low-label with
             --train-subset
  dense      per-patch linear segmentation probe (mIoU) on seeded collages of labelled images (yours or
             Fashion-MNIST's)
  visualize  attention / mask / reconstruction figures for images, and training curves of a run
  export     the pretrained backbone as timm-loadable .safetensors + JSON
  ablate     rerun one of the paper's ablations at small scale over several seeds

Run `mst SUBCOMMAND --help` for the options of each."""


DATA_HELP = ("your images: a folder of images (any nesting; unlabelled), a labelled folder (class subfolders, "
             "optionally under train/ val/ test/) or Fashion-MNIST's IDX files; what it holds is detected "
             "(--set data.name=folder|image_folder|fashion_mnist pins it)")
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
INIT_EVAL_HELP = ("evaluate a pretrained source as it is (timm:NAME, timm:NAME=FILE, or an mst run / export), fitted "
                  "to --data like `mst pretrain --init`; with --ckpt (knn --baselines) it is the off-the-shelf row")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML preset (see configs/); default: configs/own_images_cpu.yaml (or _gpu "
                                    "with a GPU) for your own images, the built-in defaults for Fashion-MNIST")
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.base_lr=1e-3 (repeatable)")


def _data_overrides(data: str | None, overrides: list[str]) -> list[str]:
    """``--data DIR``: data.root, and data.name detected from what DIR holds unless --set pins it."""
    if not data:
        return list(overrides)
    pinned = any(o.split("=", 1)[0].strip() == "data.name" for o in overrides)
    return [f"data.root={data}"] + ([] if pinned else ["data.name=auto"]) + list(overrides)


def _own_images_preset(data: str | None, init: str | None = None) -> Path | None:
    """The preset for a user's own images when no --config is given: sized for the device; continue_*.yaml when
    starting from existing weights (--init)."""
    from mst.data.inspect import detect_kind

    if not data or detect_kind(data)[0] == "fashion_mnist":
        return None
    import torch

    kind = "continue" if init else "own_images"
    return CONFIGS / f"{kind}_{'gpu' if torch.cuda.is_available() else 'cpu'}.yaml"


def _resolve(args, notes: list | None = None) -> dict:
    from mst.autoconfig import Choice
    from mst.config import load_config

    config = args.config
    if config is None:
        config = _own_images_preset(getattr(args, "data", None), getattr(args, "init", None))
        if config is not None and notes is not None:
            why = "your own images and no --config: sized for this machine" + (
                ", continuing from --init" if getattr(args, "init", None) else "")
            notes.append(Choice("--config", f"configs/{config.name}", why))
    previous = None
    saved = Path(args.out) / "config.yaml" if getattr(args, "out", None) else None
    if saved is not None and saved.is_file():  # a relaunch: the values its first launch took from the data stay
        import yaml

        previous = yaml.safe_load(saved.read_text())
    overrides = _data_overrides(getattr(args, "data", None), args.overrides)
    if getattr(args, "init", None):
        overrides.append(f"model.init={args.init}")
    if getattr(args, "teacher", None):  # distillation, unless --set method= says otherwise
        pinned = any(o.split("=", 1)[0].strip() == "method" for o in args.overrides)
        overrides = ([] if pinned else ["method=distill"]) + overrides + [f"teacher.init={args.teacher}"]
    return load_config(config, overrides, notes=notes, previous=previous)


def _eval_data(args) -> dict | None:
    """The data section an evaluation reads instead of the checkpoint's: --data DIR (kind detected) and --set
    data.KEY=VALUE. The checkpoint keeps deciding the channels, statistics and image size."""
    from mst.config import parse_value
    from mst.registry import ConfigError

    data: dict = {}
    if args.data:
        from mst.data.inspect import detect_kind

        data.update(root=str(args.data), name=detect_kind(args.data)[0])
    for item in args.overrides:
        key, _, text = item.partition("=")
        key = key.strip()
        if not key.startswith("data.") or not _:
            raise ConfigError(f"--set {item}: mst {args.command} reads data.KEY=VALUE only (the checkpoint decides the "
                              "model, its image size and its statistics)")
        data[key[len("data."):]] = parse_value(text, key)
    return data or None


def cmd_pretrain(args) -> int:
    from mst.engine.trainer import NonFiniteLossError, Trainer
    from mst.eval.online import online_knn_evaluator

    notes: list = []
    cfg = _resolve(args, notes)
    if notes and os.environ.get("RANK", "0") == "0":  # under torchrun every process resolves; one prints
        from mst.autoconfig import summary

        print(summary(notes, cfg), flush=True)
    out = Path(args.out)
    trainer = Trainer(cfg, out)
    evaluator = online_knn_evaluator(cfg) if cfg["log"]["knn_every"] else None
    try:
        status = trainer.fit(until_step=args.max_steps, evaluator=evaluator)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    finally:
        from mst.engine.distributed import cleanup

        cleanup()
    if trainer.dist.is_main:
        print(f"{status}: run directory {out.resolve()}")
        print(f"  checkpoint  {trainer.ckpt_path}")
        print(f"  config      {out / 'config.yaml'}")
        print(f"  metrics     {out / 'metrics.jsonl'}  (TensorBoard: tensorboard --logdir {out / 'tb'})")
    return 0


def _init_row(args) -> str | None:
    """--init on an evaluation (see :mod:`mst.offtheshelf`); only k-NN takes --ckpt and --init together."""
    from mst.offtheshelf import resolve_eval_ckpt
    from mst.registry import ConfigError

    both = getattr(args, "init", None) and args.ckpt
    if both and args.command != "knn":
        raise ConfigError(f"mst {args.command}: give --ckpt or --init, not both (mst knn --ckpt RUN --init SOURCE "
                          "--baselines scores them side by side)")
    data_keys = [o for o in getattr(args, "overrides", []) if o.split("=", 1)[0].strip().startswith("data.")]
    return resolve_eval_ckpt(args, _own_images_preset(getattr(args, "data", None)),
                             _data_overrides(getattr(args, "data", None), data_keys))


def cmd_knn(args) -> int:
    from mst.eval.knn import run_knn

    offtheshelf = _init_row(args)
    results = {}
    if offtheshelf:
        res = run_knn(offtheshelf, data=_eval_data(args), ks=tuple(args.k), train_subset=args.train_subset,
                      test_subset=args.test_subset, batch_size=args.batch_size, balanced=args.balanced,
                      kind=args.features)
        results[f"off-the-shelf ({args.init})"] = res["top1"]
    for random_init in ([False, True] if args.baselines else [False]):
        res = run_knn(args.ckpt, data=_eval_data(args), which=args.which, ks=tuple(args.k), train_subset=args.train_subset,
                      test_subset=args.test_subset, batch_size=args.batch_size, random_init=random_init,
                      balanced=args.balanced, kind=args.features)
        results["random_init" if random_init else res["which"]] = res["top1"]
    if args.baselines:
        from mst.eval.knn import raw_pixel_knn

        results["raw_pixels"] = raw_pixel_knn(args.ckpt, data=_eval_data(args), ks=tuple(args.k),
                                              train_subset=args.train_subset, test_subset=args.test_subset,
                                              balanced=args.balanced)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def cmd_linear(args) -> int:
    from mst.eval.linear import run_linear

    _init_row(args)
    lr = args.lr
    if lr is None:  # mae: MAE's absolute lr whatever the batch (LARS steps are relative to the weights)
        from mst.eval.linear import MAE_PROBE_LR

        lr = MAE_PROBE_LR * 256 / args.batch_size if args.probe == "mae" else 0.1
    res = run_linear(args.ckpt, data=_eval_data(args), which=args.which, kind=args.features, augment=args.augment,
                     epochs=args.epochs, lr=lr, batch_size=args.batch_size, train_subset=args.train_subset,
                     test_subset=args.test_subset, random_init=args.random_init, save_path=args.save,
                     probe=args.probe)
    summary = {k: v for k, v in res.items() if k != "history"}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


def cmd_finetune(args) -> int:
    from mst.engine.distributed import cleanup
    from mst.engine.trainer import NonFiniteLossError
    from mst.finetune import run_finetune

    if getattr(args, "init", None) and not args.out:
        from mst.registry import ConfigError

        raise ConfigError("mst finetune --init SOURCE needs --out DIR (where the fine-tune of the source goes)")
    _init_row(args)
    out = args.out or str(Path(args.ckpt if Path(args.ckpt).is_dir() else Path(args.ckpt).parent)
                          / ("finetune_scratch" if args.random_init else "finetune"))
    overrides = _data_overrides(args.data, args.overrides)
    if args.epochs is not None:
        overrides.append(f"optim.epochs={args.epochs}")
    try:
        res = run_finetune(args.ckpt, out, preset=args.config, overrides=overrides, train_subset=args.train_subset,
                           random_init=args.random_init, which=args.which)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    finally:
        cleanup()
    summary = {k: v for k, v in res.items() if k != "history"}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    print(f"run directory {Path(out).resolve()} (finetune.json, checkpoint.pt, metrics.jsonl; export the "
          f"classifier with: mst export --ckpt {out} --out {out}/classifier.safetensors)")
    return 0


def cmd_finetune_search(args) -> int:
    from mst.engine.distributed import cleanup
    from mst.experiments.ftsearch import SearchStopped, search, table
    from mst.registry import ConfigError

    shard = None
    if args.shard:
        try:
            shard = tuple(int(v) for v in args.shard.split("/"))
        except ValueError:
            raise ConfigError(f"--shard {args.shard!r} must look like I/N, e.g. 0/2") from None
    try:
        res = search(args.ckpt, args.out, random_init=args.random_init, train_subset=args.train_subset,
                     epochs=args.epochs, val_share=args.val_share, seeds=args.seeds, preset=args.config,
                     overrides=_data_overrides(args.data, args.overrides), shard=shard)
    except SearchStopped as e:
        print(e)
        return 0
    finally:
        cleanup()
    if shard is None:
        print(table(res))
    return 0


def cmd_dense(args) -> int:
    from mst.eval.dense import run_dense

    _init_row(args)
    res = run_dense(args.ckpt, data=_eval_data(args), which=args.which, n_train=args.n_train, n_test=args.n_test,
                    canvas=args.canvas, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                    random_init=args.random_init)
    print(json.dumps({k: v for k, v in res.items() if k != "per_class_iou"}, indent=2))
    return 0


def cmd_visualize(args) -> int:
    from mst.eval.features import default_device
    from mst.eval.visualize import run_visualize
    from mst.methods import load_method

    _init_row(args)
    from mst.checkpoint import load_checkpoint

    offtheshelf = load_checkpoint(args.ckpt)["config"]["method"] == "offtheshelf"  # attention only: no method
    panels = None if offtheshelf else load_method(args.ckpt, default_device()).panels
    for p in run_visualize(args.ckpt, images=args.images or None, n=args.n, out_dir=args.out, which=args.which,
                           seed=args.seed, method_panels=panels):
        print(p)
    return 0


def cmd_export(args) -> int:
    from mst.eval.export import export_backbone, save_detection_checkpoint

    _init_row(args)
    weights, meta = export_backbone(args.ckpt, args.out, which=args.which)
    info = json.loads(Path(meta).read_text())
    print("load it in timm with (also in the JSON, \"timm_call\"):")
    print("  import timm")
    print(f"  model = {info['timm_call']}")
    if args.detection:
        save_detection_checkpoint(weights, args.detection, prefix=args.detection_prefix)
    return 0


def cmd_ablate(args) -> int:
    from mst.experiments.runner import run_ablation
    from mst.registry import ConfigError

    shard = None
    if args.shard:
        try:
            i, n = (int(v) for v in args.shard.split("/"))
        except ValueError:
            raise ConfigError(f"--shard {args.shard!r} must look like I/N, e.g. 0/2") from None
        shard = (i, n)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    run_ablation(args.name, protocol=args.protocol, seeds=args.seeds, out_dir=args.out, data_root=args.data,
                 overrides=args.overrides, shard=shard, variants=variants, report_only=args.report_only,
                 teacher=args.teacher)
    return 0


def cmd_config(args) -> int:
    from mst.config import method_class, sections
    from mst.config_doc import describe

    sections()
    method_class(args.method)  # an unknown method: one line naming the registered ones
    print(describe(args.method))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mst", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pretrain a ViT with a method (mst, dino, mae, simmim)",
                       description="Pretrain; resumes automatically when --out already holds a checkpoint. "
                                   "Under torchrun every process runs this same command.")
    _add_config_args(p)
    p.add_argument("--out", required=True, help="run directory (config, checkpoint, metrics, TensorBoard)")
    p.add_argument("--init", default=None, metavar="SOURCE",
                   help="start from existing weights (model.init): timm:NAME (timm's hub loader), timm:NAME=FILE "
                        "(that timm ViT with a local .safetensors / .pth / .bin), or an mst run, checkpoint or export; "
                        "the architecture comes from the source, fitted to the data's size, patch and channels")
    p.add_argument("--teacher", default=None, metavar="SOURCE",
                   help="distil this frozen pretrained model (SOURCE as for --init) into the student model.arch (a "
                        "ViT or a timm CNN such as resnet18): method=distill, teacher.init=SOURCE; with --set "
                        "method=mst / mae / simmim and mask.importance=frozen, its attention guides the mask")
    p.add_argument("--max-steps", type=int, default=None, help="stop once the run has trained this many steps in all, "
                   "relaunches included (a checkpoint is written; relaunch with a larger value or none to go on)")
    p.set_defaults(func=cmd_pretrain)

    def eval_common(q, ckpt_help="run directory or checkpoint file"):
        q.add_argument("--ckpt", default=None, help=ckpt_help)
        q.add_argument("--init", default=None, metavar="SOURCE", help=INIT_EVAL_HELP)
        q.add_argument("--data", default=None, help="labelled images to score on (default: the checkpoint's data): "
                       "class subfolders with val/ or test/ (else data.holdout of each class is held out), or "
                       "Fashion-MNIST's IDX files")
        q.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE",
                       help="a data key for this evaluation, e.g. --set data.holdout=0.3 (repeatable)")
        q.add_argument("--which", default=None,
                       help="which backbone of the checkpoint: teacher (default) or student for MST/DINO, encoder "
                            "for MAE/SimMIM")
        q.add_argument("--batch-size", type=int, default=256)

    p = sub.add_parser("knn", help="weighted k-NN accuracy on frozen CLS features")
    eval_common(p)
    p.add_argument("--k", type=int, nargs="+", default=[10, 20, 100, 200])
    p.add_argument("--train-subset", type=int, default=None, help="use this many training images as the bank")
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--features", choices=("cls", "avgpool"), default="cls",
                   help="CLS token (default) or the mean of the patch tokens")
    p.add_argument("--balanced", action="store_true",
                   help="the bank: a class-balanced --train-subset (the labels `mst finetune --train-subset` uses)")
    p.add_argument("--baselines", action="store_true",
                   help="also score raw pixels and the same backbone at random initialisation (and, with --ckpt and "
                        "--init, the --init source as it is: the off-the-shelf row)")
    p.add_argument("--json", default=None, help="also write the accuracies to this JSON file")
    p.set_defaults(func=cmd_knn)

    p = sub.add_parser("linear", help="linear probe on frozen features")
    eval_common(p)
    p.add_argument("--features", choices=("cls", "avgpool", "last4", "last4_avgpool"), default="cls",
                   help="CLS token; mean of patch tokens; DINO's last-4 CLS [+ pooled patches]")
    p.add_argument("--probe", choices=("dino", "mae"), default="dino",
                   help="dino: linear + SGD; mae: BatchNorm (no affine) + linear + LARS, warm-up (MAE's protocol)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=None,
                   help="lr for batch 256 (scaled by batch/256), cosine to 0; default 0.1 (dino), MAE's absolute 6.4 "
                        "(mae)")
    p.add_argument("--augment", action="store_true", help="random-resized-crop + flip each epoch (slow on CPU)")
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--random-init", action="store_true", help="probe the same architecture at random init")
    p.add_argument("--save", default=None, help="save the trained classifier here")
    p.add_argument("--json", default=None, help="also write the results (top-1, top-5, best epoch) to this file")
    p.set_defaults(func=cmd_linear)

    p = sub.add_parser("finetune", help="fine-tune a checkpoint's backbone end to end (low-label: --train-subset)",
                       description="The checkpoint decides the backbone's shape and the data; --config the recipe "
                                   "(default configs/fashion_mnist_finetune.yaml). Resumes when --out holds a "
                                   "checkpoint; runs under torchrun like pretrain.")
    p.add_argument("--ckpt", default=None, help="pretraining run directory or checkpoint file")
    p.add_argument("--init", default=None, metavar="SOURCE", help=INIT_EVAL_HELP)
    p.add_argument("--config", default=None, help="fine-tuning recipe YAML (default: configs/fashion_mnist_finetune.yaml)")
    p.add_argument("--data", default=None, help="labelled images (default: the checkpoint's data): class subfolders, "
                   "with val/ or test/ or data.holdout of each class held out; the kind is detected")
    p.add_argument("--out", default=None, help="run directory (default: CKPT_DIR/finetune or finetune_scratch)")
    p.add_argument("--which", default=None, help="backbone of the checkpoint (default: teacher for MST, encoder for MIM)")
    p.add_argument("--train-subset", type=int, default=None, help="a class-balanced subset of this many labels")
    p.add_argument("--random-init", action="store_true", help="the same architecture from scratch (the baseline)")
    p.add_argument("--epochs", type=int, default=None, help="overrides optim.epochs")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", default=None, help="also write the results (with the per-epoch history) here")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("finetune-search", help="choose a fine-tuning recipe on held-out training labels, then "
                                               "report it on the test split",
                       description="The same small grid (lr x layer decay x augmentation) for every backbone: each "
                                   "recipe trains on 1 - --val-share of the labelled subset and is scored on the "
                                   "rest; the best by validation top-1 is trained on the whole subset for --seeds "
                                   "seeds and reported on the test split. Resumes; --shard splits the grid.")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--config", default=None, help="fine-tuning recipe the grid varies (default: the fine-tune's)")
    p.add_argument("--data", default=None, help="labelled images (default: the checkpoint's data)")
    p.add_argument("--random-init", action="store_true", help="search for the same ViT from scratch")
    p.add_argument("--train-subset", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--val-share", type=float, default=0.2)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--shard", default=None, metavar="I/N", help="run every N-th recipe from the I-th (two lanes), "
                   "then rerun without --shard for the choice and the seeds")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_finetune_search)

    p = sub.add_parser("dense", help="dense (segmentation) probe on frozen patch tokens")
    eval_common(p)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--canvas", type=int, default=None,
                   help="canvas side in px (default: 56 for Fashion-MNIST, the checkpoint's image size for a folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-init", action="store_true", help="probe the same architecture at random init")
    p.set_defaults(func=cmd_dense)

    p = sub.add_parser("visualize", help="attention, mask and reconstruction figures")
    p.add_argument("--ckpt", default=None, help="run directory (also plots its training curves) or checkpoint")
    p.add_argument("--init", default=None, metavar="SOURCE", help="the attention of a pretrained source as it is, "
                                                                 "fitted to --data (timm:NAME, timm:NAME=FILE, an export)")
    p.add_argument("--data", default=None, help="with --init: the images it is fitted to and drawn on")
    p.add_argument("--images", nargs="*", help="image files; default: --n test images of the dataset")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--which", default=None, help="backbone whose attention is drawn (default: the checkpoint's)")
    p.add_argument("--out", required=True, help="output folder for the PNGs")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser("export", help="export the backbone for timm (.safetensors + .json)")
    p.add_argument("--ckpt", default=None)
    p.add_argument("--init", default=None, metavar="SOURCE", help=INIT_EVAL_HELP)
    p.add_argument("--data", default=None, help="with --init: the images the source is fitted to (size, channels)")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--which", default=None, help="backbone to export (default: the checkpoint's: teacher for MST, "
                                                 "encoder for MAE/SimMIM)")
    p.add_argument("--detection", default=None, help="also write a .pth state dict with a framework key prefix")
    p.add_argument("--detection-prefix", default="backbone.", help="'backbone.' (MMDetection), 'backbone.net.' "
                   "(detectron2 ViTDet)")
    p.set_defaults(func=cmd_export)

    from mst.experiments.specs import ABLATIONS, PROTOCOLS

    p = sub.add_parser("ablate", help="rerun a paper ablation at small scale (several seeds)")
    p.add_argument("name", choices=sorted(ABLATIONS))
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", required=True)
    p.add_argument("--data", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--variants", default=None, metavar="A,B",
                   help="run only these variants of the ablation (comma-separated; default: all)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only every N-th run starting at the I-th (0-based), e.g. 0/2 and 1/2 in two "
                        "processes on the same --out; then rerun without --shard to write the reports")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the reports from the runs that have finished (fewer seeds allowed)")
    p.add_argument("--teacher", default=None, metavar="SOURCE",
                   help="the frozen pretrained teacher of the variants that read one (the matrix's frozen column: "
                        "mask.importance=frozen); without it they are skipped")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("config", help="every config key of a method: default, type, range, doc")
    p.add_argument("--method", default="mst", help="a registered method (default: mst)")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    from mst.data import DataError
    from mst.registry import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
