"""Images/s the multi-crop data pipeline supplies vs images/s the training step consumes.

Every pipeline here is the engine's own (``mst.data.build_pipeline``, the one the Trainer builds), with
``augment.backend`` set to ``pil`` or ``tensor`` as the part says, so the numbers follow what training runs.

1. Supply, the preset's multi-crop on the PIL backend (Fashion-MNIST by default) through a DataLoader with
   num_workers 0 / 1 / 2 and the pipeline's collate, timed after the first batch (worker start-up excluded). Also
   ms per sample in-process.
2. Consumption: images/s of the MST ``Trainer.train_batch`` on synthetic views of the same shapes.
   -> ratio supply / consumption per worker count (> 1: the pipeline keeps up).
3. The paper's setting (2 x 224 + 10 x 96 RGB crops, ImageNet-like 500x375 JPEGs generated into a temp dir):
   PIL pipeline images/s per worker (decode + crops), decode-only images/s per worker (what the DataLoader still
   does for the tensor backend), and the tensor backend's device step (GPUMultiCrop) images/s on --device; then how many CPU
   workers one GPU at --gpu-rate images/s (default 1000, an H100 on ViT-S/16 multi-crop) needs with each path.
4. The tensor backend's device step on the preset's setting (Fashion-MNIST 28 px) vs the PIL path, on --device.
5. Your own images (--own): a folder of 500x375 JPEGs and a folder of 13-band uint16 TIFFs, each through the
   configs/own_images_gpu.yaml pipeline at 224 px (MST multi-crop, its tensor backend: the DataLoader decodes, the
   device crops), with 0 and 2 workers: images/s the DataLoader supplies, and the data-wait share of real training
   steps (the trainer's own ``data_wait`` metric) on --device.

    python benchmarks/data_loading.py                      # CPU defaults (< 3 min)
    python benchmarks/data_loading.py --own-only           # part 5 alone (~2 min on 2 CPU cores)
    python benchmarks/data_loading.py --device cuda --workers 0,4,8,16 --batches 20
    python benchmarks/data_loading.py --tiny --json /tmp/data_loading.json   # every part in seconds (see TINY)
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from common import (  # noqa: E402
    REPO, add_common_args, alternate, build_trainer, device_name, environment, load_cfg, make_batch, variant_cfg,
    median, parse_args, print_table, setup_threads, sync, synthetic_base_dataset, timed2, tiny_overrides, write_json,
)

BIG_CONFIG = REPO / "configs" / "imagenet_deit_small_300ep.yaml"
# --tiny: 32 Fashion-MNIST images at batch 8 (the engine's tiny sizes), 2 JPEGs at 224 px, and for your own images 8
# small JPEGs / TIFFs at 64 px through a 1-block ViT, no worker processes but one loader with one worker
TINY = {"workers": "0,1", "batches": 2, "steps": 2, "e2e_workers": "0", "e2e_steps": 2, "e2e_repeats": 1,
        "big_images": 2, "own_workers": "0", "own_images": 8, "own_batch": 4, "own_steps": 1, "own_size": 64,
        "own_depth": 1}


def with_backend(cfg: dict, backend: str) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["augment"]["backend"] = backend
    return cfg


# -- supply -----------------------------------------------------------------------------------------------------
def loader_rate(dataset, batch: int, workers: int, n_batches: int, collate) -> float:
    """Images/s a DataLoader delivers, timed from the first batch's arrival to the last's (start-up excluded)."""
    n = min(len(dataset), (n_batches + 1) * batch)
    loader = DataLoader(dataset, batch_size=batch, sampler=range(n), num_workers=workers, collate_fn=collate,
                        drop_last=True, persistent_workers=False, prefetch_factor=4 if workers else None)
    it = iter(loader)
    next(it)
    t0, got = time.perf_counter(), 0
    for _, index in it:  # a view pipeline's collate yields (payload, dataset indices)
        got += len(index)
    dt = time.perf_counter() - t0
    del it, loader
    return got / dt if dt > 0 else float("nan")


def per_sample_ms(dataset, n: int, use_cpu_time: bool = True) -> float:
    """Median ms per sample, in-process (one core), over ``n`` samples; process CPU time by default (it leaves
    out waiting for a core on a shared machine; the PIL ops are single-threaded)."""
    ts = []
    for i in range(min(n, len(dataset))):
        w, c = timed2(lambda: dataset[i], "cpu")
        ts.append(c if use_cpu_time else w)
    return 1e3 * median(ts)


def preset_base(cfg: dict):
    """The preset's base dataset as the Trainer builds it (Fashion-MNIST); synthetic if the files are missing."""
    from mst.data import build_dataset

    try:
        return build_dataset(cfg["data"], min_size=int(cfg["model"]["img_size"])), "real"
    except (FileNotFoundError, ValueError) as e:
        print(f"  (data not found: {e}; using synthetic images of the same size)")
        return synthetic_base_dataset(cfg, 4096), "synthetic"


def make_jpeg_folder(root: Path, n: int, size=(500, 375), seed: int = 0) -> Path:
    """``n`` smooth random RGB JPEGs (ImageNet-like size and content statistics, quality 90)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k in range(n):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize(size, Image.BICUBIC)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-20, 21, (size[1], size[0], 3))
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(root / f"img_{k:04d}.jpg", quality=90)
    return root


def end_to_end_rate(cfg: dict, workers: int, steps: int, device) -> float:
    """Images/s of the real loop (Trainer's DataLoader + train_step, the preset's data) with ``workers``, timed
    from the end of the first step (start-up excluded), wall time."""
    from mst.engine.distributed import DistInfo
    from mst.engine.trainer import Trainer

    cfg = copy.deepcopy(cfg)
    cfg["data"]["num_workers"] = workers
    with tempfile.TemporaryDirectory(prefix="mst_bench_e2e_") as tmp:  # never written to: no fit, no save
        tr = Trainer(cfg, tmp, dist_info=DistInfo(device=torch.device(device)), log=lambda *a, **k: None)
    tr.method.train()
    n, t0 = 0, None
    for k, loaded in enumerate(tr._loader()):
        tr.train_step(loaded)
        sync(device)
        if k == 0:
            t0 = time.perf_counter()
        else:
            n += int(cfg["optim"]["batch_size"])
        if k >= steps:
            break
    return n / (time.perf_counter() - t0)


# -- your own images ------------------------------------------------------------------------------------------
OWN_CONFIG = REPO / "configs" / "own_images_gpu.yaml"


def make_tiff_folder(root: Path, n: int, bands: int = 13, size=(256, 256), seed: int = 0) -> Path:
    """``n`` smooth random ``bands``-band uint16 TIFFs (12-bit values, contiguous samples), as satellites deliver."""
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k in range(n):
        small = rng.random((8, 8, bands))
        arr = np.stack([np.asarray(Image.fromarray(small[..., b].astype(np.float32)).resize(size, Image.BICUBIC))
                        for b in range(bands)], axis=-1)
        tifffile.imwrite(root / f"tile_{k:04d}.tif", np.clip(arr * 4095, 0, 4095).astype(np.uint16),
                         photometric="minisblack", planarconfig="contig")
    return root


def own_data_rates(folder: Path, workers: list[int], batch: int, steps: int, device, n_batches: int,
                   size: int = 224, depth: int = 4, tiny: bool = False) -> list[dict]:
    """Supply images/s (DataLoader of the pipeline's dataset) and the data-wait share of ``steps`` real training
    steps, per worker count, for ``folder`` under configs/own_images_gpu.yaml at ``size`` px."""
    import json

    from mst.config import load_config
    from mst.engine.distributed import DistInfo
    from mst.engine.trainer import Trainer

    rows = []
    for w in workers:
        items = [f"data.root={folder}", f"model.img_size={size}", f"optim.batch_size={batch}",
                 f"data.num_workers={w}", "log.every=1", "log.progress=false", "log.tensorboard=false",
                 "optim.epochs=50", f"model.depth={depth}"]
        if tiny:  # the engine's tiny head; the folder's own images (no subset), the decoder the patch size needs
            items = [o for o in tiny_overrides(OWN_CONFIG, items)
                     if not o.startswith(("data.subset=", "mst.decoder_channels="))] + items
        cfg = load_config(OWN_CONFIG, items)
        with tempfile.TemporaryDirectory(prefix="mst_bench_own_") as tmp:
            tr = Trainer(cfg, tmp, dist_info=DistInfo(device=torch.device(device)), log=lambda *a, **k: None)
            supply = loader_rate(tr.pipeline.dataset, batch, w, n_batches, tr.pipeline.collate)
            tr.fit(max_steps=steps + 1)
            lines = (Path(tmp) / "metrics.jsonl").read_text().splitlines()
        waits = [json.loads(line).get("data_wait") for line in lines]
        waits = [v for v in waits[1:] if v is not None]  # the first step includes worker start-up
        rows.append({"num_workers": w, "supply img/s": supply, "data wait (share of step)": median(waits),
                     "channels": int(cfg["data"]["channels"])})
    return rows


def own_data_part(args, device) -> dict:
    workers = [int(x) for x in args.own_workers.split(",") if x != ""]
    out = {}
    with tempfile.TemporaryDirectory(prefix="mst_own_") as tmp:
        (Path(tmp) / "jpeg").mkdir()
        (Path(tmp) / "tiff").mkdir()
        jpegs = make_jpeg_folder(Path(tmp) / "jpeg", args.own_images)
        tiffs = make_tiff_folder(Path(tmp) / "tiff", args.own_images)
        for name, folder in (("JPEG 500x375 RGB", jpegs), ("TIFF 256x256, 13 bands uint16", tiffs)):
            rows = own_data_rates(folder, workers, args.own_batch, args.own_steps, device, args.batches,
                                  args.own_size, args.own_depth, args.tiny)
            print(f"\nyour own images: {name} -> configs/own_images_gpu.yaml at {args.own_size} px (MST, tensor "
                  f"backend, batch {args.own_batch}, a {args.own_depth}-block ViT-S on {args.device}; data wait = "
                  f"the trainer's metric, median of {args.own_steps} steps)")
            print_table(rows)
            out[name] = rows
    return out


# -- the tensor backend's device step (GPUMultiCrop) ---------------------------------------------------------------
def gpu_aug_rate(cfg: dict, base, n: int, device, rounds: int, use_cpu_time: bool) -> float:
    """Images/s of the tensor backend's ``to_batch`` (the crops, on ``device``) for the first ``n`` images of ``base``,
    decoded and collated by the same pipeline as in training."""
    from mst.data import build_pipeline

    pipe = build_pipeline("multicrop", with_backend(cfg, "tensor"), base)
    loaded = pipe.collate([pipe.dataset[i] for i in range(min(n, len(pipe.dataset)))])
    b = len(loaded[1])
    gen = torch.Generator(device).manual_seed(0)
    pipe.to_batch(loaded, device, gen)
    samples = [timed2(lambda: pipe.to_batch(loaded, device, gen), device) for _ in range(rounds)]
    t = median(s[1] if use_cpu_time else s[0] for s in samples)
    return b / t


def main(argv: list[str] | None = None) -> dict:
    p = add_common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--workers", default="0,1,2", help="DataLoader num_workers to try (default: %(default)s)")
    p.add_argument("--batches", type=int, default=6, help="timed batches per loader (default: %(default)s)")
    p.add_argument("--steps", type=int, default=3, help="timed train steps for consumption (default: %(default)s)")
    p.add_argument("--e2e-workers", default="0,1",
                   help="num_workers for the end-to-end loop (real data + train_step); empty: skip (default: %(default)s)")
    p.add_argument("--e2e-steps", type=int, default=5, help="timed steps per end-to-end run (default: %(default)s)")
    p.add_argument("--e2e-repeats", type=int, default=2, help="alternating repeats per worker count (default: %(default)s)")
    p.add_argument("--big-config", default=str(BIG_CONFIG), help="preset of the 224 px part (default: %(default)s)")
    p.add_argument("--big-images", type=int, default=24, help="JPEGs for the 224 px part (default: %(default)s)")
    p.add_argument("--no-big", action="store_true", help="skip the 224 px part")
    p.add_argument("--own-only", action="store_true", help="run part 5 (your own images) only")
    p.add_argument("--no-own", action="store_true", help="skip part 5 (your own images)")
    p.add_argument("--own-workers", default="0,2", help="num_workers for part 5 (default: %(default)s)")
    p.add_argument("--own-images", type=int, default=48, help="images per folder in part 5 (default: %(default)s)")
    p.add_argument("--own-batch", type=int, default=16, help="batch of part 5 (default: %(default)s)")
    p.add_argument("--own-steps", type=int, default=3, help="timed training steps per run in part 5 (default: %(default)s)")
    p.add_argument("--own-size", type=int, default=224, help="model.img_size of part 5 (default: %(default)s)")
    p.add_argument("--own-depth", type=int, default=4, help="ViT blocks in part 5 (default: %(default)s)")
    p.add_argument("--gpu-rate", type=float, default=1000.0,
                   help="images/s one GPU trains at, for the workers-needed estimate (default: %(default)s)")
    args = parse_args(p, argv, TINY)
    setup_threads(args)
    device = torch.device(args.device)
    use_cpu_time = device.type == "cpu" and torch.get_num_threads() == 1
    t_start = time.perf_counter()
    print(f"device: {device_name(device)}  torch {torch.__version__}")
    result: dict = {"env": environment(device), "config": args.config, "overrides": args.overrides}
    if args.own_only:
        result["own_images"] = own_data_part(args, device)
        print(f"total {time.perf_counter() - t_start:.0f}s")
        write_json(args.json, result)
        return result

    # 1. supply: the preset's multi-crop on the PIL backend, the engine's pipeline
    from mst.data import build_pipeline

    cfg = load_cfg(args)
    batch = int(cfg["optim"]["batch_size"])
    a = cfg["augment"]
    desc = f"2 x {cfg['model']['img_size']} + {a['n_local']} x {a['local_size']} px, {cfg['data']['channels']} ch"
    base, kind = preset_base(cfg)
    pipe = build_pipeline("multicrop", with_backend(cfg, "pil"), base)
    ms = per_sample_ms(pipe.dataset, 2 * batch, use_cpu_time)
    print(f"preset {args.config}: {desc}, batch {batch}, {kind} data; PIL pipeline {ms:.2f} ms / sample in-process")
    supply = {}
    for w in [int(x) for x in args.workers.split(",") if x != ""]:
        supply[w] = loader_rate(pipe.dataset, batch, w, args.batches, pipe.collate)

    # 2. consumption: MST train steps on synthetic views of the same shapes
    tr = build_trainer(variant_cfg(args, "mst"), device)
    ready = make_batch(cfg, device)
    wall, cpu = alternate({"mst": lambda: tr.train_batch(ready)}, args.steps, device, warmup=1)
    step_s = median(wall["mst"])
    consume = batch / step_s
    rows = [{"num_workers": w, "supply img/s": r, "consume img/s (MST step)": consume, "supply / consume": r / consume}
            for w, r in supply.items()]
    print()
    print_table(rows)
    data_share = (1e-3 * ms * batch) / step_s
    print(f"MST step {step_s:.3f} s wall ({batch / step_s:.1f} img/s); with num_workers=0 the pipeline would add "
          f"{data_share:.1%} to every step")
    result["preset"] = {"views": desc, "batch": batch, "data": kind, "pil_ms_per_sample": ms,
                        "supply_images_per_s": {str(k): v for k, v in supply.items()}, "step_s": step_s,
                        "consume_images_per_s": consume,
                        "supply_over_consume": {str(k): v / consume for k, v in supply.items()},
                        "data_time_share_workers0": data_share}

    # end to end: the real loop with the preset's data, alternating worker counts
    e2e_workers = [int(x) for x in args.e2e_workers.split(",") if x != ""]
    if e2e_workers and kind == "real":
        e2e: dict[int, list[float]] = {w: [] for w in e2e_workers}
        for _ in range(args.e2e_repeats):
            for w in e2e_workers:
                e2e[w].append(end_to_end_rate(variant_cfg(args, "mst"), w, args.e2e_steps, device))
        base_w = e2e_workers[0]
        print(f"\nend to end (Trainer loader + train_step, {torch.get_num_threads()} torch thread(s), "
              f"median of {args.e2e_repeats} x {args.e2e_steps} steps):")
        print_table([{"num_workers": w, "img/s": median(r), f"vs num_workers={base_w}": median(r) / median(e2e[base_w])}
                     for w, r in e2e.items()])
        result["preset"]["end_to_end_images_per_s"] = {str(w): r for w, r in e2e.items()}

    # 4. the tensor backend's crops on the preset's setting
    g_rate = gpu_aug_rate(cfg, base, batch, device, 5, use_cpu_time)
    pil_rate = 1e3 / ms
    print(f"\nGPUMultiCrop on {args.device}, preset views: {g_rate:.0f} img/s vs PIL {pil_rate:.0f} img/s per core "
          f"(ratio {g_rate / pil_rate:.2f})")
    result["preset"]["gpu_augment_images_per_s"] = g_rate
    result["preset"]["gpu_augment_over_pil_per_core"] = g_rate / pil_rate

    # 3. the 224 px setting
    if not args.no_big:
        from mst.config import load_config
        from mst.data import build_dataset

        big = load_config(args.big_config)
        ab = big["augment"]
        big_desc = f"2 x {big['model']['img_size']} + {ab['n_local']} x {ab['local_size']} px RGB"
        with tempfile.TemporaryDirectory(prefix="mst_jpegs_") as tmp:
            make_jpeg_folder(Path(tmp), args.big_images)
            data_cfg = dict(copy.deepcopy(big["data"]), name="folder", root=tmp, subset=None)
            base_big = build_dataset(data_cfg, split="train")
            pil_pipe = build_pipeline("multicrop", with_backend(big, "pil"), base_big)
            pil_ms = per_sample_ms(pil_pipe.dataset, args.big_images, use_cpu_time)
            raw_ds = build_pipeline("multicrop", with_backend(big, "tensor"), base_big).dataset  # decode only
            decode_ms = per_sample_ms(raw_ds, args.big_images, use_cpu_time)
            g224 = gpu_aug_rate(big, base_big, 8, device, 3, use_cpu_time)
        pil224, dec224 = 1e3 / pil_ms, 1e3 / decode_ms
        need_pil, need_dec = args.gpu_rate / pil224, args.gpu_rate / dec224
        print(f"\n224 px setting ({big_desc}, 500x375 JPEGs), per CPU core:")
        print_table([
            {"path": "PIL multi-crop (decode + 12 crops)", "ms / image": pil_ms, "img/s per worker": pil224,
             f"workers for {args.gpu_rate:.0f} img/s": need_pil},
            {"path": "decode only (tensor path's DataLoader)", "ms / image": decode_ms, "img/s per worker": dec224,
             f"workers for {args.gpu_rate:.0f} img/s": need_dec},
            {"path": f"GPUMultiCrop on {args.device} (crops only)", "ms / image": 1e3 / g224, "img/s per worker": g224,
             f"workers for {args.gpu_rate:.0f} img/s": float("nan")},
        ])
        result["big"] = {"views": big_desc, "pil_ms_per_image": pil_ms, "decode_ms_per_image": decode_ms,
                         "gpu_augment_images_per_s": g224, "gpu_rate_assumed": args.gpu_rate,
                         "workers_needed_pil": need_pil, "workers_needed_decode_only": need_dec}
    if not args.no_own:
        result["own_images"] = own_data_part(args, device)
    print(f"total {time.perf_counter() - t_start:.0f}s")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
