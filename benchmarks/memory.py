"""Peak memory per image of one training step: MST vs DINO (and MAE, SimMIM), with and without activation
checkpointing.

Default setting: the paper's ViT-S/16 with 2 x 224 + 10 x 96 crops (configs/imagenet_deit_small_300ep.yaml,
head out_dim 65536), and with --modes mae,simmim the ViT-B/16 MAE and SimMIM presets, synthetic views, a tiny
batch. Each (mode, checkpointing, batch) runs in a fresh subprocess:
build the Trainer, one warm-up step (optimizer state and gradients now exist), then measure one step:

- CPU: the peak resident set size during the step above the RSS just before it. The kernel's high-water mark
  (VmHWM) is reset right before the step through /proc/self/clear_refs (a 1 ms RSS poller if that is not
  allowed), and glibc is told to serve every allocation >= 128 KiB with mmap (MALLOC_MMAP_THRESHOLD_), so freed
  tensors leave the RSS at once and it tracks live memory.
- CUDA: torch.cuda.max_memory_allocated() during the step minus memory_allocated() before it.

Per image: growth / batch, and (two batch sizes) the slope (growth(B2) - growth(B1)) / (B2 - B1), which leaves out
per-step constants such as weight-sized temporaries of the 65536-way head. Mode ``mst+dec_ckpt`` also checkpoints
the whole decoder (a suggestion, applied by wrapping the module here; src/ is unchanged).

    python benchmarks/memory.py                                          # CPU, batches 1 and 2 (< 3 min)
    python benchmarks/memory.py --batches 2,4                            # CPU, batches 2 and 4 (~3.5 min)
    python benchmarks/memory.py --tiny --json /tmp/memory.json           # seconds: Fashion-MNIST presets, 1 block
    python benchmarks/memory.py --device cuda --amp bf16 --batches 32,64
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.utils.checkpoint  # noqa: E402

from common import (  # noqa: E402
    DEFAULT_CONFIG, METHOD_CONFIGS, REPO, add_common_args, build_trainer, device_name, environment, human_bytes,
    load_cfg, make_batch, parse_args, print_table, setup_threads, sync, variant_cfg, write_json,
)

BIG_CONFIG = REPO / "configs" / "imagenet_deit_small_300ep.yaml"
BIG_METHOD_CONFIGS = {"mae": REPO / "configs" / "imagenet_mae_vit_base_800ep.yaml",
                      "simmim": REPO / "configs" / "imagenet_simmim_vit_base_800ep.yaml"}
MODES = {"dino": "dino", "mst": "mst", "mst+dec_ckpt": "mst", "mae": "mae", "simmim": "simmim"}  # -> VARIANTS
# --tiny: the Fashion-MNIST presets at the engine's tiny sizes, DINO and MST with the decoder checkpointed too (the
# part that reaches into the model), at two batches: 4 subprocesses of ~4 s each (mostly importing torch)
TINY = {"config": str(DEFAULT_CONFIG), **{f"{k}_config": str(v) for k, v in METHOD_CONFIGS.items()},
        "batches": "4,16", "modes": "dino,mst+dec_ckpt", "checkpointing": "1", "timeout": 120}


class CheckpointedDecoder(torch.nn.Module):
    """A suggestion measured here, not in src/: activation checkpointing of the whole decoder too
    (model.grad_checkpointing only covers the ViT blocks). Note: BatchNorm running statistics are then updated
    twice per step (forward + recompute); they are only used if the decoder ever runs in eval mode."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if not self.training:
            return self.decoder(tokens, grid)
        return torch.utils.checkpoint.checkpoint(self.decoder, tokens, grid, use_reentrant=False)


# -- child: one measurement -------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class _Poller:
    """Fallback peak-RSS tracker: samples /proc/self/statm every millisecond in a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._t = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    def __enter__(self):
        self.peak = self._rss()
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())


def child(args, mode: str, ckpt: bool, batch: int) -> dict:
    device = torch.device(args.device)
    extra = [f"model.grad_checkpointing={str(ckpt).lower()}", f"optim.batch_size={batch}"]
    cfg = variant_cfg(args, MODES[mode], extra)
    tr = build_trainer(cfg, device)
    if mode.endswith("+dec_ckpt"):
        tr.method.student.decoder = CheckpointedDecoder(tr.method.student.decoder)
    views = make_batch(cfg, device)
    t0 = time.perf_counter()
    tr.train_batch(make_batch(cfg, device, batch=1))  # warm-up (batch 1): optimizer state, gradients, lazy inits
    sync(device)
    warm_s = time.perf_counter() - t0
    gc.collect()
    out = {"mode": mode, "checkpointing": ckpt, "batch": batch, "warmup_step_s": warm_s}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        tr.train_batch(views)
        torch.cuda.synchronize(device)
        out.update(step_s=time.perf_counter() - t0, base_bytes=base,
                   peak_bytes=torch.cuda.max_memory_allocated(device), method="cuda max_memory_allocated")
    else:
        base = _status_kib("VmRSS") * 1024
        if _reset_hwm():
            t0 = time.perf_counter()
            tr.train_batch(views)
            step_s = time.perf_counter() - t0
            peak = _status_kib("VmHWM") * 1024
            method = "VmHWM after clear_refs"
        else:
            with _Poller() as poll:
                t0 = time.perf_counter()
                tr.train_batch(views)
                step_s = time.perf_counter() - t0
            peak, method = poll.peak, "RSS poller (1 ms)"
        out.update(step_s=step_s, base_bytes=base, peak_bytes=peak, method=method,
                   after_bytes=_status_kib("VmRSS") * 1024)
    out["growth_bytes"] = out["peak_bytes"] - out["base_bytes"]
    out["trained_params"] = sum(p.numel() for p in tr.method.parameters() if p.requires_grad)
    return out


def run_child(argv: list[str], mode: str, ckpt: bool, batch: int, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--_child", f"{mode},{int(ckpt)},{batch}"]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"mode": mode, "checkpointing": ckpt, "batch": batch, "error": f"timed out after {timeout:.0f}s"}
    for line in proc.stdout.splitlines():
        if line.startswith("MEMORY_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
    return {"mode": mode, "checkpointing": ckpt, "batch": batch, "error": tail}


# -- parent -----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = add_common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter),
                        config=BIG_CONFIG, method_configs=BIG_METHOD_CONFIGS)
    p.add_argument("--batches", default="1,2", help="batch sizes; two or more give a per-image slope (default: %(default)s)")
    p.add_argument("--modes", default="dino,mst,mst+dec_ckpt",
                   help="dino, mst, mst+dec_ckpt (MST with the decoder checkpointed too; only run with "
                        "checkpointing on), mae, simmim (default: %(default)s)")
    p.add_argument("--checkpointing", default="0,1", help="0 / 1 list (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=300, help="cap per subprocess, s")
    p.add_argument("--_child", dest="child", default=None, help=argparse.SUPPRESS)
    args = parse_args(p, argv, TINY)
    setup_threads(args)
    if args.child:
        mode, ckpt, batch = args.child.split(",")
        print("MEMORY_RESULT " + json.dumps(child(args, mode, bool(int(ckpt)), int(batch))), flush=True)
        return {}

    device = torch.device(args.device)
    t_start = time.perf_counter()
    cfg = load_cfg(args)
    a = cfg["augment"]
    print(f"device: {device_name(device)}  torch {torch.__version__}")
    print(f"config: {args.config} {' '.join(args.overrides)}: {cfg['model']['arch']}/{cfg['model']['patch_size']}, "
          f"2 x {cfg['model']['img_size']} + {a['n_local']} x {a['local_size']} px, head out_dim {cfg['dino']['out_dim']}, "
          f"amp={cfg['optim']['amp'] if device.type == 'cuda' else 'fp32 (CPU)'}; mae / simmim: {args.mae_config}, "
          f"{args.simmim_config}")
    batches = [int(b) for b in args.batches.split(",") if b]
    modes = [m for m in args.modes.split(",") if m]
    ckpts = [bool(int(c)) for c in args.checkpointing.split(",") if c != ""]
    results = []
    for mode in modes:
        for ckpt in ckpts:
            if mode.endswith("+dec_ckpt") and not ckpt:
                continue
            for b in batches:
                r = run_child(argv, mode, ckpt, b, args.timeout)
                results.append(r)
                msg = r.get("error") or f"growth {human_bytes(r['growth_bytes'])}, step {r['step_s']:.1f}s"
                print(f"  {mode:12s} ckpt={int(ckpt)} B={b}: {msg}", flush=True)

    # per-image numbers per (mode, ckpt)
    summary = {}
    for mode in modes:
        for ckpt in ckpts:
            rs = [r for r in results if r["mode"] == mode and r["checkpointing"] == ckpt and "error" not in r]
            if not rs:
                continue
            rs.sort(key=lambda r: r["batch"])
            per_img = rs[-1]["growth_bytes"] / rs[-1]["batch"]
            slope = None
            if len(rs) >= 2 and rs[-1]["batch"] != rs[0]["batch"]:
                slope = (rs[-1]["growth_bytes"] - rs[0]["growth_bytes"]) / (rs[-1]["batch"] - rs[0]["batch"])
            summary[(mode, ckpt)] = {"per_image_bytes": per_img, "slope_bytes": slope,
                                     "growth_bytes": {r["batch"]: r["growth_bytes"] for r in rs},
                                     "method": rs[-1]["method"]}
    rows = []
    for (mode, ckpt), s in summary.items():
        rows.append({"mode": mode, "checkpointing": "on" if ckpt else "off",
                     **{f"growth B={b}": human_bytes(g) for b, g in s["growth_bytes"].items()},
                     "per image (growth/B)": human_bytes(s["per_image_bytes"]),
                     "per image (slope)": human_bytes(s["slope_bytes"]) if s["slope_bytes"] is not None else "-"})
    print()
    print_table(rows)
    print(f"(method: {next(iter(summary.values()))['method'] if summary else '-'})")

    def key(s):  # the per-image measure used for ratios: the slope when available
        return s["slope_bytes"] if s["slope_bytes"] is not None else s["per_image_bytes"]

    def ratio(a, b):  # a step too small to move the RSS has no meaningful ratio
        return key(a) / key(b) if key(b) > 0 else float("nan")

    ratios = {}
    for mode in modes:
        if (mode, False) in summary and (mode, True) in summary:
            ratios[f"{mode}: checkpointing / none"] = ratio(summary[(mode, True)], summary[(mode, False)])
    for ckpt in ckpts:
        for m in ("mst", "mst+dec_ckpt"):
            if (m, ckpt) in summary and ("dino", ckpt) in summary:
                name = "MST" if m == "mst" else "MST with decoder checkpointed"
                ratios[f"{name} / DINO (checkpointing {'on' if ckpt else 'off'})"] = ratio(
                    summary[(m, ckpt)], summary[("dino", ckpt)])
    print()
    for k, v in ratios.items():
        print(f"{k} = {v:.3f}")
    print(f"total {time.perf_counter() - t_start:.0f}s")
    result = {"env": environment(device), "config": args.config, "overrides": args.overrides, "runs": results,
              "summary": {f"{m}/ckpt={int(c)}": s for (m, c), s in summary.items()}, "ratios": ratios}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
