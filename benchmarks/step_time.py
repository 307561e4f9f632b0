"""Step time of every method relative to DINO's (and of AMT relative to its plain method), in one run.

Trainers are built for DINO (``mask.strategy=none``, ``mst.decoder=none``), MST's parts (mask only, decoder only), MST,
DINO whose student throws tokens (``mask.strategy=amt``: AMT's mask + throw by the teacher's attention, no decoder),
the MIM methods (MAE, SimMIM) on their own presets, and MAE / SimMIM with AMT from the first step, all at the same
batch size (DINO's, unless --batch). AMT also costs a refresh of the attention maps every amt.interval epochs: a
no-grad pass over the training set, timed here on synthetic images and amortised per step (seconds per image x
batch / interval), printed beside the step ratio.
Each gets ready-made synthetic batches of its own view shapes (multi-crop or one view; no data pipeline), is
warmed up, then all are timed one ``Trainer.train_batch`` each per round, round after round, with the order
rotated every round. Reported: the median step time and images/s of each, and the median over rounds of the
per-round ratio variant / DINO (both steps of a ratio ran back to back, so the load of a shared machine cancels).
On CPU with one torch thread (the default) the headline ratio uses process CPU time, which leaves out the time
the process waited for a core on a shared machine; wall times are printed next to it. On CUDA: wall time.

    python benchmarks/step_time.py                                   # CPU, the Fashion-MNIST presets
    python benchmarks/step_time.py --tiny --json /tmp/step_time.json # seconds: every variant, 1-block ViTs
    python benchmarks/step_time.py --config configs/imagenet_deit_small_300ep.yaml \\
        --mae-config configs/imagenet_mae_vit_base_800ep.yaml \\
        --simmim-config configs/imagenet_simmim_vit_base_800ep.yaml --device cuda --amp bf16 --batch 64
    python benchmarks/step_time.py --variants mae,mae_amt,simmim,simmim_amt --batch 8 --rounds 3 \\
        --mae-config configs/imagenet_mae_vit_base_800ep.yaml \\
        --simmim-config configs/imagenet_simmim_vit_base_800ep.yaml  # ViT-B/16 at 224 px on CPU: a few steps
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import (  # noqa: E402
    VARIANTS, add_common_args, alternate, build_trainer, device_name, environment, make_batch, median,
    paired_ratios, parse_args, print_table, refresh_seconds_per_image, setup_threads, variant_cfg, write_json,
)

TARGET = 1.10  # MST / DINO
CONTINUE_TARGET = 1.02  # continuing from model.init / the same method from scratch
DISTILL_TARGET = 0.8  # distillation (one teacher forward, one view) / DINO at the same student and batch
TINY = {"rounds": 2, "warmup": 1, "refresh_images": 16}


def main(argv: list[str] | None = None) -> dict:
    p = add_common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--rounds", "--steps", dest="rounds", type=int, default=10,
                   help="timed rounds (one step of every variant per round; default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: %(default)s)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma list of %(default)s")
    p.add_argument("--batch", type=int, default=None, help="images per step for every variant (default: DINO's)")
    p.add_argument("--refresh-images", type=int, default=256,
                   help="synthetic images the AMT refresh is timed on (default: %(default)s)")
    args = parse_args(p, argv, TINY)
    setup_threads(args)
    device = torch.device(args.device)
    names = [v for v in args.variants.split(",") if v]
    base = "dino" if "dino" in names else names[0]  # the denominator of the "vs" ratios

    t0 = time.perf_counter()
    cfgs = {name: variant_cfg(args, name) for name in names}
    batch = args.batch or int(cfgs[base]["optim"]["batch_size"])
    trainers = {name: build_trainer(cfgs[name], device) for name in names}
    batches = {name: make_batch(cfgs[name], device, batch) for name in names}
    print(f"device: {device_name(device)}  torch {torch.__version__}")
    print(f"configs: {args.config} (MST variants), {args.mae_config}, {args.simmim_config} "
          f"{' '.join(args.overrides)}; batch {batch} for every variant, amp={cfgs[base]['optim']['amp']}")
    print(f"built in {time.perf_counter() - t0:.1f}s; warm-up {args.warmup} round(s), {args.rounds} timed rounds")

    fns = {n: (lambda tr=trainers[n], b=batches[n]: tr.train_batch(b)) for n in names}
    wall, cpu = alternate(fns, args.rounds, device, warmup=args.warmup)
    # On CPU with one thread, process CPU time is the robust measure (it leaves out waiting for a core on a
    # shared machine); on CUDA the wall time (synchronised) is the measure.
    use_cpu_time = device.type == "cpu" and torch.get_num_threads() == 1
    primary = cpu if use_cpu_time else wall
    measure = "process CPU time" if use_cpu_time else "wall time"

    rows, result = [], {"env": environment(device), "config": args.config, "overrides": args.overrides,
                        "batch": batch, "rounds": args.rounds, "primary_measure": measure, "variants": {}}
    for n in names:
        med_w, med_c = median(wall[n]), median(cpu[n])
        ratio_w, ratio_c = median(paired_ratios(wall, n, base)), median(paired_ratios(cpu, n, base))
        rows.append({"variant": n, "method": cfgs[n]["method"], "wall median (s)": med_w, "cpu median (s)": med_c,
                     "img/s (wall)": batch / med_w, f"wall ratio vs {base}": ratio_w, f"cpu ratio vs {base}": ratio_c})
        result["variants"][n] = {
            "method": cfgs[n]["method"], "wall_s": wall[n], "cpu_s": cpu[n], "wall_median_s": med_w,
            "cpu_median_s": med_c, "images_per_s": batch / med_w, "ratio_vs_base_wall": ratio_w,
            "ratio_vs_base_cpu": ratio_c, "ratio_vs_base": median(paired_ratios(primary, n, base)),
        }
    result["base"] = base
    print()
    print_table(rows)
    print("(ratios: median over rounds of the ratio of two steps timed back to back in the same round)")
    if "mst" in wall and base == "dino":
        r = result["variants"]["mst"]["ratio_vs_base"]
        verdict = "OK" if r <= TARGET else "ABOVE TARGET"
        print(f"\nMST / DINO step time ({measure}) = {r:.3f}  (target <= {TARGET}: {verdict})")
        if "mask_only" in wall and "decoder_only" in wall:
            print(f"  mask alone adds {result['variants']['mask_only']['ratio_vs_base'] - 1:+.1%}, "
                  f"decoder alone adds {result['variants']['decoder_only']['ratio_vs_base'] - 1:+.1%} (vs DINO)")
        result["mst_over_dino"] = r
    if "dino_throw" in wall and base == "dino":
        r = result["variants"]["dino_throw"]["ratio_vs_base"]
        m = cfgs["dino_throw"]["mask"]
        print(f"DINO throwing / DINO step time ({measure}) = {r:.3f}  (student's global views: "
              f"{m['ratio']:.0%} masked, {m['throw_ratio']:.0%} thrown)")
        result["dino_throw_over_dino"] = r
    for n in ("mae", "simmim"):
        if n in wall and base == "dino":
            print(f"{n.upper()} / DINO step time ({measure}) = {result['variants'][n]['ratio_vs_base']:.3f}")
    for plain in ("mae", "simmim"):
        amt = f"{plain}_amt"
        if plain in wall and amt in wall:
            step_ratio = median(paired_ratios(primary, amt, plain))
            per_image = refresh_seconds_per_image(trainers[amt], args.refresh_images)
            interval = int(cfgs[amt]["amt"]["interval"])
            amortised = per_image * batch / interval
            total = step_ratio + amortised / median(primary[plain])  # the refresh's share of a plain step on top
            print(f"{amt.upper()} / {plain.upper()} step time ({measure}) = {step_ratio:.3f}; a refresh costs "
                  f"{per_image * 1e3:.2f} ms per image, {amortised * 1e3:.1f} ms per step over amt.interval={interval} "
                  f"epoch(s): {total:.3f} with it")
            result[f"{amt}_over_{plain}"] = {"step": step_ratio, "refresh_s_per_image": per_image,
                                             "amortised_refresh_s_per_step": amortised, "with_refresh": total}
    for plain in ("mae", "mst"):
        cont = f"{plain}_continued"
        if plain in wall and cont in wall:
            r = median(paired_ratios(primary, cont, plain))
            verdict = "OK" if r <= CONTINUE_TARGET else "ABOVE TARGET"
            print(f"{cont} / {plain} step time ({measure}) = {r:.3f}  (from model.init, layer decay 0.75, patch "
                  f"embedding frozen; target <= {CONTINUE_TARGET}: {verdict})")
            result[f"{cont}_over_{plain}"] = r
    for guided, plain in (("mst_frozen", "mst"), ("mae_target_teacher", "mae")):
        if guided in wall and plain in wall:
            r = median(paired_ratios(primary, guided, plain))
            print(f"{guided} / {plain} step time ({measure}) = {r:.3f}  (the frozen teacher's one pass per step)")
            result[f"{guided}_over_{plain}"] = r
    if "distill" in wall and base == "dino":
        r = result["variants"]["distill"]["ratio_vs_base"]
        method, x = trainers["distill"].method, batches["distill"].views[0]
        teacher_w, teacher_c = alternate({"teacher": lambda: method.teacher_targets(x)}, args.rounds, device,
                                         warmup=args.warmup)
        share = median(teacher_c["teacher"] if use_cpu_time else teacher_w["teacher"]) / median(primary["distill"])
        verdict = "OK" if r <= DISTILL_TARGET else "ABOVE TARGET"
        print(f"DISTILL / DINO step time ({measure}) = {r:.3f}  (the same student and batch; target <= "
              f"{DISTILL_TARGET}: {verdict}); the frozen teacher's one forward is {share:.0%} of the distil step")
        result["distill_over_dino"] = r
        result["distill_teacher_share"] = share
    print(f"total {time.perf_counter() - t0:.0f}s")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
