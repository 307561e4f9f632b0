"""MAE step time: ours (``configs/fashion_mnist_mae.yaml``) against MAE assembled from a peer library's modules
(lightly: ``MaskedVisionTransformerTIMM`` + ``MAEDecoderTIMM`` + ``random_token_mask``, its documented MAE recipe)
on the same narrow timm ViT, the same batch of synthetic 28 px images, the same optimizer, in one run.

Both steps are timed back to back in every round (order alternating), after warm-up, on the same threads; the
ratio ours / peer is the median of per-round ratios. lightly is not a dependency of mst: install it first
(``pip install --no-deps lightly``; the script says so if it is missing).

    python benchmarks/peer_mae.py                 # 2 threads, batch 64
    python benchmarks/peer_mae.py --threads 1 --batch 64 --rounds 40
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import alternate, device_name, median, paired_ratios, print_table  # noqa: E402


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
    params = list(backbone.parameters()) + list(decoder.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    ratio = float(cfg["mim"]["mask_ratio"])

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


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "fashion_mnist_mae.yaml"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import importlib.util

    if importlib.util.find_spec("lightly") is None:
        print("lightly is not installed: pip install --no-deps lightly (it is only needed for this comparison)")
        return {}
    from mst.config import load_config
    from mst.methods import StepContext, build_method
    from mst.data import Batch
    from mst.engine.optim import build_optimizer

    cfg = load_config(args.config, [f"optim.batch_size={args.batch}"])
    torch.manual_seed(0)
    c, s = int(cfg["data"]["channels"]), int(cfg["augment"]["global_size"])
    images = torch.randn(args.batch, c, s, s)
    ours = build_method(cfg).train()
    opt = build_optimizer(ours.param_groups(), cfg["optim"]["betas"])
    batch = Batch([images], torch.zeros(args.batch, dtype=torch.long), torch.arange(args.batch))

    def our_step():
        out = ours(batch, StepContext(epoch=0, step=0))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    import timm
    from mst.models.backbones import timm_spec

    name, kwargs = timm_spec(cfg["model"], c)
    peer_vit = timm.create_model(name, pretrained=False, **kwargs)
    fns = {"mst mae": our_step, "lightly mae": peer_step_fn(peer_vit, images, cfg)}
    wall, _ = alternate(fns, args.rounds, torch.device("cpu"), warmup=args.warmup)
    rows = [{"step": n, "median (ms)": 1e3 * median(wall[n]), "images/s": args.batch / median(wall[n])} for n in fns]
    print(f"device: {device_name('cpu')}, batch {args.batch}, {args.rounds} rounds")
    print_table(rows)
    r = median(paired_ratios(wall, "mst mae", "lightly mae"))
    print(f"\nmst MAE / lightly MAE step time = {r:.3f}")
    return {"rows": rows, "ratio": r}


if __name__ == "__main__":
    main()
