"""MST step time vs DINO step time on the same batch, the same machine, in one run.

Four Trainers are built from one preset: DINO (mask.strategy=none, decoder.enabled=false), mask only, decoder only
and MST (attention-guided mask + decoder). Each gets the same pre-generated synthetic views (no data pipeline),
is warmed up, then the four are timed one ``Trainer.train_step`` each per round, round after round, with the
order rotated every round. Reported: the median step time of each variant, and the median over rounds of the
per-round ratio variant / DINO (both steps of a ratio ran back to back, so the load of a shared machine cancels).
On CPU with one torch thread (the default) the headline ratio uses process CPU time, which leaves out the time
the process waited for a core on a shared machine; wall times are printed next to it. On CUDA: wall time.

    python benchmarks/step_time.py                                   # CPU, Fashion-MNIST ViT-Tiny preset
    python benchmarks/step_time.py --config configs/imagenet_deit_small_300ep.yaml --device cuda --amp bf16 \\
        --rounds 30 --warmup 5                                       # the paper's setting on a GPU
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import (  # noqa: E402
    VARIANTS, add_common_args, alternate, build_trainer, device_name, environment, load_cfg, make_views, median,
    paired_ratios, print_table, setup_threads, write_json,
)

TARGET = 1.10  # MST / DINO


def main(argv: list[str] | None = None) -> dict:
    p = add_common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--rounds", "--steps", dest="rounds", type=int, default=10,
                   help="timed rounds (one step of every variant per round; default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: %(default)s)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma list of %(default)s")
    args = p.parse_args(argv)
    setup_threads(args)
    device = torch.device(args.device)
    names = [v for v in args.variants.split(",") if v]
    if "dino" not in names:
        names.insert(0, "dino")

    t0 = time.perf_counter()
    trainers, cfgs = {}, {}
    for name in names:
        cfgs[name] = load_cfg(args, VARIANTS[name])
        trainers[name] = build_trainer(cfgs[name], device)
    views = make_views(cfgs["mst" if "mst" in cfgs else "dino"], device)  # identical views for all variants
    batch = views[0].shape[0]
    print(f"device: {device_name(device)}  torch {torch.__version__}")
    print(f"config: {args.config} {' '.join(args.overrides)}  batch {batch}, views "
          f"{' + '.join(f'{tuple(v.shape[1:])}' for v in views[:3])}{' ...' if len(views) > 3 else ''} "
          f"({len(views)} views), amp={cfgs['dino']['optim']['amp']}")
    print(f"built in {time.perf_counter() - t0:.1f}s; warm-up {args.warmup} round(s), {args.rounds} timed rounds")

    fns = {n: (lambda tr=trainers[n]: tr.train_step(views)) for n in names}
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
        rows.append({"variant": n, "wall median (s)": med_w, "wall min (s)": min(wall[n]),
                     "cpu median (s)": med_c, "img/s (wall)": batch / med_w,
                     "wall ratio vs DINO": median(paired_ratios(wall, n, "dino")),
                     "cpu ratio vs DINO": median(paired_ratios(cpu, n, "dino"))})
        result["variants"][n] = {
            "wall_s": wall[n], "cpu_s": cpu[n], "wall_median_s": med_w, "cpu_median_s": med_c,
            "images_per_s": batch / med_w,
            "ratio_vs_dino_wall": median(paired_ratios(wall, n, "dino")),
            "ratio_vs_dino_cpu": median(paired_ratios(cpu, n, "dino")),
            "ratio_vs_dino": median(paired_ratios(primary, n, "dino")),
        }
    print()
    print_table(rows)
    print("(ratios: median over rounds of the ratio of two steps timed back to back in the same round)")
    if "mst" in wall:
        r = result["variants"]["mst"]["ratio_vs_dino"]
        verdict = "OK" if r <= TARGET else "ABOVE TARGET"
        print(f"\nMST / DINO step time ({measure}) = {r:.3f}  (target <= {TARGET}: {verdict})")
        if "mask_only" in wall and "decoder_only" in wall:
            print(f"  mask alone adds {result['variants']['mask_only']['ratio_vs_dino'] - 1:+.1%}, "
                  f"decoder alone adds {result['variants']['decoder_only']['ratio_vs_dino'] - 1:+.1%} (vs DINO)")
        result["mst_over_dino"] = r
    print(f"total {time.perf_counter() - t0:.0f}s")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
