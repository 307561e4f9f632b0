"""A plain timm fine-tuning loop, the yardstick `mst finetune` must match: the same checkpoint (or the same ViT from
scratch), the same class-balanced labels and test split, and none of the engine (no config, no pipeline, no
schedules module): timm's ViT, AdamW, a per-step cosine with linear warm-up, 2 px zero padding + random crop + flip,
label smoothing, drop-path.

    python benchmarks/plain_finetune.py --ckpt runs/demo/mae [--random-init] [--epochs 30] [--seed 0]
    python benchmarks/plain_finetune.py --tiny --json /tmp/plain_finetune.json   # seconds, see below

With --tiny and no --ckpt, the checkpoint is a freshly built tiny MAE trainer's (the engine's checkpoint format, a
1-block ViT) in a temporary directory, fine-tuned for one epoch on 20 labels and tested on 100 images: the loop and
the checkpoint loading still run, so a change to the checkpoint format shows here.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import METHOD_CONFIGS, add_tiny_arg, build_trainer, parse_args, tiny_overrides  # noqa: E402

TINY = {"train_subset": 20, "test_subset": 100, "epochs": 1, "batch": 8}


def tiny_checkpoint(out_dir: Path) -> Path:
    """A tiny MAE trainer's checkpoint (Trainer.state(), as a run writes it) in ``out_dir``."""
    from mst.checkpoint import CHECKPOINT_NAME, save_checkpoint
    from mst.config import load_config

    path = METHOD_CONFIGS["mae"]
    cfg = load_config(path, tiny_overrides(path) + ["log.progress=false", "log.tensorboard=false"])
    save_checkpoint(build_trainer(cfg).state(), out_dir / CHECKPOINT_NAME)
    return out_dir


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="a run directory or checkpoint file (--tiny: a tiny MAE's)")
    p.add_argument("--random-init", action="store_true")
    p.add_argument("--train-subset", type=int, default=1000)
    p.add_argument("--test-subset", type=int, default=None, help="class-balanced test images (default: all)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--warmup", type=float, default=0.1, help="share of the steps")
    p.add_argument("--smoothing", type=float, default=0.1)
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--pad", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = parse_args(add_tiny_arg(p), argv, TINY)
    if args.ckpt is None and not args.tiny:
        p.error("--ckpt is required (or --tiny)")
    torch.set_num_threads(args.threads)
    if args.ckpt is None:
        with tempfile.TemporaryDirectory(prefix="mst_plain_ft_") as tmp:
            args.ckpt = str(tiny_checkpoint(Path(tmp)))
            return run(args)
    return run(args)


def run(args) -> dict:
    """The plain loop: timm's ViT from the checkpoint's backbone, fine-tuned and tested on Fashion-MNIST."""
    import timm

    from mst.checkpoint import backbone_state, load_checkpoint, resolve_which
    from mst.data.dataset import balanced_subset_indices
    from mst.data.fashion_mnist import load_fashion_mnist

    state = load_checkpoint(args.ckpt)
    cfg = state["config"]
    m, d = cfg["model"], cfg["data"]
    kwargs = dict(img_size=int(m["img_size"]), patch_size=int(m["patch_size"]), in_chans=int(d["channels"]),
                  embed_dim=int(m["embed_dim"]), depth=int(m["depth"]), num_heads=int(m["num_heads"]),
                  num_classes=10, drop_path_rate=args.drop_path)
    torch.manual_seed(args.seed)
    model = timm.create_model("vit_tiny_patch16_224", **kwargs)
    if not args.random_init:
        weights = backbone_state(state, resolve_which(state, None))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        assert set(missing) <= {"head.weight", "head.bias"} and not unexpected, (missing, unexpected)
        torch.nn.init.trunc_normal_(model.head.weight, std=2e-5)
        torch.nn.init.zeros_(model.head.bias)

    mean, std = float(d["mean"][0]), float(d["std"][0])
    images, labels = load_fashion_mnist(d.get("root"), "train")
    idx = balanced_subset_indices(labels, args.train_subset, 0)
    x = (torch.as_tensor(images[idx]).float().div(255).unsqueeze(1) - mean) / std
    y = torch.as_tensor(labels[idx]).long()
    tx, ty = load_fashion_mnist(d.get("root"), "test")
    if args.test_subset:
        keep = balanced_subset_indices(ty, args.test_subset, 0)
        tx, ty = tx[keep], ty[keep]
    tx = (torch.as_tensor(tx).float().div(255).unsqueeze(1) - mean) / std
    ty = torch.as_tensor(ty).long()

    steps_per_epoch = math.ceil(len(x) / args.batch)
    total, warm = args.epochs * steps_per_epoch, int(args.warmup * args.epochs * steps_per_epoch)
    decay = [q for n, q in model.named_parameters() if q.ndim > 1 and n not in ("pos_embed", "cls_token")]
    rest = [q for n, q in model.named_parameters() if not (q.ndim > 1 and n not in ("pos_embed", "cls_token"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    pad_value = (0.0 - mean) / std  # zero padding in pixel space: black
    step, t0 = 0, time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), args.batch):
            b = order[i:i + args.batch]
            xb = F.pad(x[b], (args.pad,) * 4, value=pad_value)
            h = x.shape[-1]
            offs = torch.randint(0, 2 * args.pad + 1, (len(b), 2), generator=g)
            xb = torch.stack([xb[k, :, o[0]:o[0] + h, o[1]:o[1] + h] for k, o in enumerate(offs)])
            flip = torch.rand(len(b), generator=g) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            lr = args.lr * (step + 1) / warm if step < warm else \
                0.5 * args.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
            for group in opt.param_groups:
                group["lr"] = lr
            loss = F.cross_entropy(model(xb), y[b], label_smoothing=args.smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(tx[i:i + 512]).argmax(1) for i in range(0, len(tx), 512)])
    top1 = 100.0 * (pred == ty).float().mean().item()
    res = {"top1": top1, "random_init": args.random_init, "epochs": args.epochs, "seed": args.seed,
           "lr": args.lr, "steps": step, "train_images": len(x), "test_images": len(ty),
           "final_loss": loss.item(), "wall_s": time.perf_counter() - t0}
    print(json.dumps(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
