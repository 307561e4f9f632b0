"""MAE step time: ours (``configs/fashion_mnist_mae.yaml``, the engine's own ``Trainer.train_batch``) against MAE
assembled from a peer library's modules (lightly: ``MaskedVisionTransformerTIMM`` + ``MAEDecoderTIMM`` +
``random_token_mask``, its documented MAE recipe) on the same narrow timm ViT, the same batch of synthetic 28 px
images, in one run.

Both steps are timed back to back in every round (order rotated), after warm-up, on the same threads; the ratio
ours / peer is the median of per-round ratios. Ours is the trainer's whole step (schedules, loss, backward,
clipping, AdamW), not a copy of it, so the comparison follows the engine. lightly is not a dependency of mst: install
it first (``pip install --no-deps lightly``); without it the script times ours alone and says so.

    python benchmarks/peer_mae.py                 # 2 threads, batch 64
    python benchmarks/peer_mae.py --threads 1 --batch 64 --rounds 40
    python benchmarks/peer_mae.py --tiny --json /tmp/peer_mae.json    # seconds: a 1-block ViT, batch 8
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import (  # noqa: E402
    METHOD_CONFIGS, add_common_args, alternate, build_trainer, device_name, environment, load_cfg, make_batch,
    median, paired_ratios, parse_args, print_table, setup_threads, write_json,
)

TINY = {"threads": 1, "batch": 8, "rounds": 2, "warmup": 1}
MISSING = "lightly is not installed: pip install --no-deps lightly (it is only needed for this comparison)"


def peer_step_fn(vit, batch_images: torch.Tensor, cfg: dict):
    """lightly's MAE (its examples/pytorch/mae.py pattern) on ``vit``; returns a callable doing one step."""
    from lightly.models import utils
    from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM

    patch = int(cfg["model"]["patch_size"])
    backbone = MaskedVisionTransformerTIMM(vit=vit)
    seq_len = backbone.sequence_length
    decoder = MAEDecoderTIMM(num_patches=vit.patch_embed.num_patches, patch_size=patch,
                             in_chans=int(cfg["data"]["channels"]), embed_dim=vit.embed_dim,
                             decoder_embed_dim=int(cfg["mae"]["decoder_dim"]),
                             decoder_depth=int(cfg["mae"]["decoder_depth"]),
                             decoder_num_heads=int(cfg["mae"]["decoder_heads"]))
    backbone.to(batch_images.device)
    decoder.to(batch_images.device)
    params = list(backbone.parameters()) + list(decoder.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    ratio = float(cfg["mask"]["ratio"])

    def step():
        images = batch_images
        b = images.shape[0]
        idx_keep, idx_mask = utils.random_token_mask(size=(b, seq_len), mask_ratio=ratio, device=images.device)
        x_encoded = backbone.encode(images=images, idx_keep=idx_keep)
        x_decode = decoder.embed(x_encoded)
        x_masked = utils.repeat_token(decoder.mask_token, (b, seq_len))
        x_masked = utils.set_at_index(x_masked, idx_keep, x_decode.type_as(x_masked))
        x_decoded = decoder.decode(x_masked)
        x_pred = decoder.predict(utils.get_at_index(x_decoded, idx_mask))
        patches = utils.patchify(images, patch)
        target = utils.get_at_index(patches, idx_mask - 1)  # idx_mask counts the class token
        target = utils.normalize_mean_var(target, dim=-1)
        loss = torch.nn.functional.mse_loss(x_pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> dict:
    p = add_common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter),
                        config=METHOD_CONFIGS["mae"])
    p.set_defaults(threads=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    args = parse_args(p, argv, TINY)
    setup_threads(args)
    device = torch.device(args.device)
    cfg = load_cfg(args, [f"optim.batch_size={args.batch}"])
    trainer = build_trainer(cfg, device)
    batch = make_batch(cfg, device, args.batch)
    fns = {"mst mae": lambda: trainer.train_batch(batch)}
    peer = importlib.util.find_spec("lightly") is not None
    if peer:
        import timm

        from mst.models.backbones import timm_spec

        torch.manual_seed(0)
        name, kwargs = timm_spec(cfg["model"], int(cfg["data"]["channels"]))
        fns["lightly mae"] = peer_step_fn(timm.create_model(name, pretrained=False, **kwargs), batch.views[0], cfg)
    else:
        print(MISSING)
    wall, cpu = alternate(fns, args.rounds, device, warmup=args.warmup)
    rows = [{"step": n, "median (ms)": 1e3 * median(wall[n]), "images/s": args.batch / median(wall[n])} for n in fns]
    print(f"device: {device_name(device)}, {args.config} {' '.join(args.overrides)}, batch {args.batch}, "
          f"{args.rounds} rounds")
    print_table(rows)
    r = median(paired_ratios(wall, "mst mae", "lightly mae")) if peer else None
    if peer:
        print(f"\nmst MAE / lightly MAE step time = {r:.3f}")
    result = {"env": environment(device), "config": args.config, "overrides": args.overrides, "batch": args.batch,
              "rows": rows, "ratio": r, "peer": "lightly" if peer else MISSING, "times": {"wall": wall, "cpu": cpu}}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
