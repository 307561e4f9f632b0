"""FLOPs of one training step, the FLOP/s it achieves, how that compares with the machine's matmul FLOP/s, and
the measured effect of cheap speed-ups the trainer could adopt.

1. FLOPs of one ``Trainer.train_step`` (teacher forward, student forward + backward, decoder, loss) counted with
   ``torch.utils.flop_counter.FlopCounterMode``, for DINO and MST: the FLOP ratio MST / DINO is load-independent.
2. Matmul peak: square fp32 matmuls (bf16 on CUDA with --amp bf16), median over repeats, best size.
3. MST step time -> achieved FLOP/s and achieved / matmul peak.
4. Speed-ups, each timed interleaved with the baseline MST step (paired per-round ratios, median). Every step is the
   engine's own ``Trainer.train_batch``; a speed-up is a config setting or a thread count, never a copy of engine code
   (a copy drifts: the old ``foreach_clip`` copy crashed once the engine's clip_gradients took a mode).
   - ``channels_last``: config optim.channels_last_decoder=true (now the default: a ratio of ~1)
   - ``threads=N``:     torch.set_num_threads(N) for the step (wall time; needs N cores free)
   - ``compile``:       config optim.compile=true (torch.compile of the student), in a subprocess capped by
                        --compile-timeout; compile time reported separately. Opt-in: --compile.
   The engine adopted the former ``fused_adamw`` (fused AdamW in build_optimizer) and ``foreach_clip``
   (_foreach_norm / _foreach_mul_ in clip_gradients) speed-ups, so the baseline step already has them.

    python benchmarks/flops.py                                       # CPU, Fashion-MNIST ViT-Tiny preset
    python benchmarks/flops.py --tiny --json /tmp/flops.json         # seconds: a 1-block ViT, 2 rounds
    python benchmarks/flops.py --compile                             # + torch.compile (slow to compile)
    python benchmarks/flops.py --config configs/imagenet_deit_small_300ep.yaml --set optim.batch_size=64 \\
        --device cuda --amp bf16 --rounds 20 --compile
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from common import (  # noqa: E402
    add_common_args, alternate, build_trainer, device_name, environment, make_batch, median, paired_ratios,
    parse_args, print_table, setup_threads, sync, timed2, variant_cfg, write_json,
)


# -- FLOPs ------------------------------------------------------------------------------------------------------
def count_step_flops(trainer, views) -> int:
    with FlopCounterMode(display=False) as fc:
        trainer.train_batch(views)
    return int(fc.get_total_flops())


# -- matmul peak ------------------------------------------------------------------------------------------------
def matmul_peak(sizes: list[int], repeats: int, device: torch.device, dtype: torch.dtype, use_cpu_time: bool) -> dict:
    out = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        inner = 1 if device.type == "cpu" else max(1, int(2e12 // (2 * n**3)))  # ~enough work per GPU sample

        def run():
            for _ in range(inner):
                torch.mm(a, b)

        run()
        samples = [timed2(run, device) for _ in range(repeats)]
        t = median(s[1] if use_cpu_time else s[0] for s in samples)
        out[n] = 2 * n**3 * inner / t
    return out


# -- speed-up variants ------------------------------------------------------------------------------------------
TRIES = ("channels_last", "threads")
ADOPTED = {"fused_adamw": "fused AdamW (mst.engine.optim.build_optimizer)",
           "foreach_clip": "_foreach gradient clipping (mst.engine.optim.clip_gradients)"}
TINY = {"rounds": 2, "matmul_sizes": "64,128", "matmul_repeats": 3, "try_threads": 2}


@contextlib.contextmanager
def threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# -- torch.compile in a capped subprocess -----------------------------------------------------------------------
def compile_child(args) -> None:
    """Runs in the subprocess: baseline vs compiled MST trainer, prints one JSON line."""
    device = torch.device(args.device)
    cfg = variant_cfg(args, "mst")
    base = build_trainer(cfg, device)
    comp = build_trainer(variant_cfg(args, "mst", ["optim.compile=true"]), device)
    views = make_batch(cfg, device)
    t0 = time.perf_counter()
    comp.train_batch(views)
    sync(device)
    first = time.perf_counter() - t0
    comp.train_batch(views)  # a second call may recompile (e.g. grad mode / dynamic shapes)
    sync(device)
    compile_s = time.perf_counter() - t0
    wall, cpu = alternate({"base": lambda: base.train_batch(views), "compile": lambda: comp.train_batch(views)},
                          args.rounds, device, warmup=1)
    print("COMPILE_RESULT " + json.dumps({
        "first_step_s": first, "compile_s": compile_s,
        "base_median_s": median(wall["base"]), "compile_median_s": median(wall["compile"]),
        "ratio_wall": median(paired_ratios(wall, "compile", "base")),
        "ratio_cpu": median(paired_ratios(cpu, "compile", "base")),
    }), flush=True)


def run_compile(argv: list[str], timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--_compile-child"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {timeout:.0f}s (compile + {timeout:.0f}s cap)"}
    for line in proc.stdout.splitlines():
        if line.startswith("COMPILE_RESULT "):
            return {"status": "ok", "elapsed_s": time.perf_counter() - t0, **json.loads(line.split(" ", 1)[1])}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"status": "failed: " + " | ".join(tail)}


# -- main -------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = add_common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--rounds", "--steps", dest="rounds", type=int, default=6, help="timed rounds (default: %(default)s)")
    p.add_argument("--matmul-sizes", default="1024,2048", help="square matmul sizes (default: %(default)s)")
    p.add_argument("--matmul-repeats", type=int, default=7)
    p.add_argument("--try", dest="tries", default=",".join(TRIES),
                   help="speed-ups to time against the baseline (default: %(default)s; empty: none)")
    p.add_argument("--try-threads", type=int, default=None,
                   help="thread count for the 'threads' speed-up (default: all cores, %d)" % (os.cpu_count() or 1))
    p.add_argument("--compile", action="store_true", help="also time torch.compile (optim.compile=true)")
    p.add_argument("--compile-timeout", type=float, default=900, help="cap on the compile subprocess, s")
    p.add_argument("--_compile-child", dest="compile_child", action="store_true", help=argparse.SUPPRESS)
    args = parse_args(p, argv, TINY)
    tries = [t for t in args.tries.split(",") if t]
    for t in tries:
        if t in ADOPTED:
            p.error(f"--try {t}: the engine adopted {ADOPTED[t]}; the baseline step already uses it")
        if t not in TRIES:
            p.error(f"--try {t}: not one of {', '.join(TRIES)}")
    setup_threads(args)
    if args.compile_child:
        compile_child(args)
        return {}
    device = torch.device(args.device)
    use_cpu_time = device.type == "cpu" and torch.get_num_threads() == 1
    measure = "process CPU time" if use_cpu_time else "wall time"
    t_start = time.perf_counter()
    print(f"device: {device_name(device)}  torch {torch.__version__}; timing by {measure}")

    # 1. FLOPs per step, DINO and MST
    cfg = variant_cfg(args, "mst")
    views = make_batch(cfg, device)
    batch = views.size
    flops = {}
    trainers = {}
    for name in ("dino", "mst"):
        trainers[name] = build_trainer(variant_cfg(args, name), device)
        trainers[name].train_batch(views)  # warm-up (lazy inits, allocator)
        flops[name] = count_step_flops(trainers[name], views)
    base = trainers["mst"]
    print(f"config: {args.config} {' '.join(args.overrides)}  batch {batch}, {len(views.views)} views, "
          f"amp={cfg['optim']['amp']}")
    print_table([{"variant": n, "GFLOP / step": f / 1e9, "GFLOP / image": f / batch / 1e9} for n, f in flops.items()])
    print(f"FLOP ratio MST / DINO = {flops['mst'] / flops['dino']:.3f} (decoder + mask: "
          f"{(flops['mst'] - flops['dino']) / batch / 1e9:.3f} GFLOP / image)\n")

    # 2. matmul peak
    mm_dtype = torch.bfloat16 if (device.type == "cuda" and cfg["optim"]["amp"] in ("bf16", "auto")) else torch.float32
    sizes = [int(s) for s in args.matmul_sizes.split(",") if s]
    mm = matmul_peak(sizes, args.matmul_repeats, device, mm_dtype, use_cpu_time)
    peak = max(mm.values())
    print_table([{"matmul": f"{n}x{n} {str(mm_dtype).replace('torch.', '')}", "GFLOP/s": v / 1e9} for n, v in mm.items()])

    # 3 + 4. step time of the baseline and the speed-ups, interleaved
    fns = {"baseline": lambda: base.train_batch(views)}
    notes = {}
    if "channels_last" in tries:
        cl = build_trainer(variant_cfg(args, "mst", ["optim.channels_last_decoder=true"]), device)
        fns["channels_last"] = lambda: cl.train_batch(views)
    n_thr = args.try_threads or (os.cpu_count() or 1)
    if "threads" in tries and device.type == "cpu" and n_thr != torch.get_num_threads():
        th = build_trainer(cfg, device)

        def thread_step():
            with threads(n_thr):
                th.train_batch(views)
        fns[f"threads={n_thr}"] = thread_step
        notes[f"threads={n_thr}"] = "wall-time ratio (CPU time counts every thread)"
    wall, cpu = alternate(fns, args.rounds, device, warmup=1)
    primary = cpu if use_cpu_time else wall
    t_base = median(primary["baseline"])
    achieved = flops["mst"] / t_base
    print(f"\nMST step: {t_base:.3f} s ({measure}, median of {args.rounds}); wall median "
          f"{median(wall['baseline']):.3f} s")
    print(f"achieved {achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.1%} of the {peak / 1e9:.1f} GFLOP/s matmul peak\n")

    rows, speedups = [], {}
    for name in fns:
        if name == "baseline":
            continue
        thread_variant = name.startswith("threads=")
        r_wall = median(paired_ratios(wall, name, "baseline"))
        r_cpu = median(paired_ratios(cpu, name, "baseline"))
        r = r_wall if (thread_variant or not use_cpu_time) else r_cpu
        speedups[name] = {"ratio": r, "ratio_wall": r_wall, "ratio_cpu": r_cpu, "median_wall_s": median(wall[name]),
                          "note": notes.get(name, "")}
        rows.append({"speed-up": name, "time ratio vs baseline": r, "wall ratio": r_wall,
                     "change": f"{1 / r - 1:+.1%} speed", "note": notes.get(name, "")})

    if args.compile:
        child_argv = [a for a in argv if a != "--compile"]
        print(f"timing torch.compile in a subprocess (cap {args.compile_timeout:.0f}s) ...", flush=True)
        res = run_compile(child_argv, args.compile_timeout)
        speedups["compile"] = res
        if res["status"] == "ok":
            r = res["ratio_cpu"] if use_cpu_time else res["ratio_wall"]
            rows.append({"speed-up": "compile", "time ratio vs baseline": r, "wall ratio": res["ratio_wall"],
                         "change": f"{1 / r - 1:+.1%} speed",
                         "note": f"compile took {res['compile_s']:.0f}s (first 2 steps)"})
        else:
            rows.append({"speed-up": "compile", "note": res["status"]})
    if rows:
        print_table(rows)
        print("(ratio < 1: faster; paired per-round ratios, median)")
    print(f"total {time.perf_counter() - t_start:.0f}s")

    result = {
        "env": environment(device), "config": args.config, "overrides": args.overrides, "batch": batch,
        "flops_per_step": flops, "flops_mst_over_dino": flops["mst"] / flops["dino"],
        "matmul_flops_per_s": {str(k): v for k, v in mm.items()}, "matmul_dtype": str(mm_dtype),
        "peak_flops_per_s": peak, "timing": measure, "mst_step_s": t_base, "achieved_flops_per_s": achieved,
        "achieved_over_peak": achieved / peak, "speedups": speedups,
        "times": {"wall": wall, "cpu": cpu},
    }
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
