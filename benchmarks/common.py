"""Shared helpers for the benchmark scripts: config + CLI flags, a Trainer on synthetic data, synthetic batches,
timing, device names, tables and JSON output.

The benchmarks never need real images for the model side: :func:`build_trainer` swaps the dataset the Trainer
builds for a tiny in-memory array (just large enough for one batch), and :func:`make_batch` runs synthetic images
through the method's own view pipeline (multi-crop or one view) once, so the timed steps get ready batches of
exactly what training feeds them. ``data_loading.py`` is the one script that reads real data.

Every script takes ``--tiny``: the same code path at the engine's smoke-test sizes (:func:`tiny_overrides`), a few
seconds on a CPU, so the test suite (tests/test_benchmarks.py) catches a change to the engine that breaks a benchmark.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "fashion_mnist_vit_tiny.yaml"
METHOD_CONFIGS = {"mae": REPO / "configs" / "fashion_mnist_mae.yaml",
                  "simmim": REPO / "configs" / "fashion_mnist_simmim.yaml",
                  "distill": REPO / "configs" / "fashion_mnist_distill.yaml"}

# Variants of the step: (which preset, overrides). None = --config (an MST preset): MST = attention mask +
# decoder, DINO = neither; "mae" / "simmim" = --mae-config / --simmim-config.
VARIANTS: dict[str, tuple[str | None, list[str]]] = {
    "dino": (None, ["mask.strategy=none", "mst.decoder=none"]),
    "mask_only": (None, ["mst.decoder=none"]),
    "decoder_only": (None, ["mask.strategy=none"]),
    "mst": (None, []),
    # DINO whose student throws AMT's share of its global views' tokens (drawn by the teacher's attention)
    "dino_throw": (None, ["mask.strategy=amt", "mst.decoder=none"]),
    "mae": ("mae", []),
    "simmim": ("simmim", []),
    "mae_amt": ("mae", ["amt.enabled=true", "amt.start=0"]),  # AMT from the first step (steady state)
    "simmim_amt": ("simmim", ["amt.enabled=true", "amt.start=0"]),
    # continued pretraining (model.init) with its controls on: the same step from existing weights, layer decay
    # splitting the optimizer's groups, the patch embedding frozen for the run ({SOURCE}: a timm file made here)
    "mae_continued": ("mae", ["model.init={SOURCE}", "optim.layer_decay=0.75", "optim.freeze_blocks=0"]),
    "mst_continued": (None, ["model.init={SOURCE}", "optim.layer_decay=0.75", "optim.freeze_blocks=0"]),
    # distillation into the same student as DINO's from a frozen teacher of that shape: one teacher forward, one view
    "distill": ("distill", ["teacher.init={SOURCE}"]),
    # the frozen teacher as a guide (a teacher shaped as the run's own ViT): its attention chooses MST's mask, its
    # features are MAE's target; against the same step without it
    "mst_frozen": (None, ["mask.importance=frozen", "teacher.init={SOURCE}"]),
    "mae_target_teacher": ("mae", ["mim.target=teacher", "teacher.init={SOURCE}"]),
}
MST_VARIANTS = ("dino", "mask_only", "decoder_only", "mst")
# Beyond Masking: each degradation with MAE's masking, and alone (no masking: every token encoded)
_COLOUR = ["data.channels=3", "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]"]
for _d in ("zoom_in", "zoom_out", "distort", "blur", "decolorize"):
    _extra = [f"mim.degradation={_d}"] + (_COLOUR if _d == "decolorize" else [])
    VARIANTS[f"mae+{_d}"] = ("mae", _extra)
    VARIANTS[f"{_d}_alone"] = ("mae", _extra + ["mask.strategy=none"])


# The engine's smoke-test protocol (PROTOCOLS["tiny"]: a 1-block ViT, small head and decoders) at batch 8, with two
# epochs so build_trainer's steady state is past the frozen last layer.
TINY_EXTRA = ["optim.batch_size=8", "optim.epochs=2", "optim.warmup_epochs=1"]
TINY_HELP = ("seconds-long run of the same code at the engine's smoke-test sizes (a 1-block ViT, batch 8, 1-2 rounds) "
             "on CPU; the test suite runs it")


# -- CLI and config ---------------------------------------------------------------------------------------------
def add_tiny_arg(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--tiny", action="store_true", help=TINY_HELP)
    return p


def parse_args(p: argparse.ArgumentParser, argv: list[str] | None, tiny: dict[str, Any]) -> argparse.Namespace:
    """Parse ``argv``; with --tiny the flags in ``tiny`` get these defaults instead (explicit flags still win)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--tiny" in argv:
        p.set_defaults(**tiny)
    return p.parse_args(argv)


def tiny_overrides(path: Path | str, overrides: Iterable[str] = ()) -> list[str]:
    """The engine's tiny protocol pins (mst.experiments.specs) plus :data:`TINY_EXTRA`, keeping only the sections
    the method of ``path`` + ``overrides`` reads (MAE has no ``dino`` section), as the ablation runner does."""
    from mst.config import load_config
    from mst.experiments.specs import PROTOCOLS

    sections = set(load_config(path, list(overrides)))  # the common sections and the method's
    pins = list(PROTOCOLS["tiny"].overrides) + TINY_EXTRA
    return [o for o in pins if o.split("=")[0].split(".")[0].strip() in sections]


def add_common_args(p: argparse.ArgumentParser, config: Path | str = DEFAULT_CONFIG,
                    method_configs: dict[str, Path] | None = None) -> argparse.ArgumentParser:
    p.add_argument("--config", default=str(config), help="MST preset YAML (default: %(default)s)")
    for name, path in {**METHOD_CONFIGS, **(method_configs or {})}.items():
        p.add_argument(f"--{name}-config", default=str(path), help=f"{name} preset YAML (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every variant, repeatable; common keys only (optim.*, model.*, data.*)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: %(default)s)")
    p.add_argument("--amp", default=None, choices=("none", "bf16", "fp16", "auto"),
                   help="optim.amp for the run (CPU always runs fp32; default: the preset's)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads; default 1 on CPU (on a shared CPU, extra OpenMP threads that get "
                        "descheduled make step times 2-5x noisier), torch's choice on CUDA; 0 = torch's choice")
    p.add_argument("--json", default=None, metavar="PATH", help="write the measured numbers to this JSON file")
    return add_tiny_arg(p)


def setup_threads(args: argparse.Namespace) -> int:
    threads = args.threads
    if threads is None and torch.device(getattr(args, "device", "cpu")).type == "cpu":
        threads = 1
    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def load_cfg(args: argparse.Namespace, extra: Iterable[str] = (), preset: str | None = None) -> dict:
    """The config of ``preset`` (None: --config; "mae": --mae-config, ...) with --set and ``extra`` applied
    (after the tiny pins with --tiny, so they win)."""
    from mst.config import load_config

    overrides = list(args.overrides) + list(extra)
    if args.amp is not None:
        overrides.append(f"optim.amp={args.amp}")
    # Benchmarks never log or evaluate; keep the Trainer from touching anything on disk.
    overrides += ["log.progress=false", "log.tensorboard=false", "log.knn_every=0"]
    path = args.config if preset is None else getattr(args, f"{preset}_config")
    if getattr(args, "tiny", False):
        overrides = tiny_overrides(path, overrides) + overrides
    return load_config(path, overrides)


def variant_cfg(args: argparse.Namespace, name: str, extra: Iterable[str] = ()) -> dict:
    preset, overrides = VARIANTS[name]
    if any("{SOURCE}" in o for o in overrides):  # a pretrained source of the preset's own ViT, saved as timm's
        shape = None if preset == "distill" else preset  # a teacher shaped as DINO's student; else the run's own
        plain = load_cfg(args, list(extra), shape)  # only its ViT's shape is read
        source = timm_source(plain)
        overrides = [o.replace("{SOURCE}", source) for o in overrides]
    return load_cfg(args, list(overrides) + list(extra), preset)


def timm_source(cfg: dict) -> str:
    """``timm:NAME=FILE`` of a timm ViT shaped as ``cfg``'s (random weights, safetensors and the JSON beside it, as
    ``mst export`` writes them) in a temporary folder: what ``model.init`` loads in the continued variants."""
    import json

    import timm
    from safetensors.torch import save_file

    from mst.models.backbones import timm_spec

    name, kwargs = timm_spec(cfg["model"], int(cfg["data"]["channels"]))
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs)
    path = Path(tempfile.mkdtemp(prefix="mst_bench_source_")) / "source.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps({"model_name": name, "model_kwargs": kwargs}))
    return f"timm:{name}={path}"


# -- device names, sync, timing ---------------------------------------------------------------------------------
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device | str) -> float:
    """Wall time of one call, synchronised on CUDA."""
    return timed2(fn, device)[0]


def timed2(fn: Callable[[], Any], device: torch.device | str) -> tuple[float, float]:
    """(wall time, this process's CPU time) of one call, synchronised on CUDA. On a shared CPU with one torch
    thread, the CPU time leaves out the time the process waited for a core, so it is far less noisy."""
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return float(statistics.median(xs)) if xs else float("nan")


def alternate(fns: dict[str, Callable[[], Any]], rounds: int, device, warmup: int = 1
              ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Time each callable ``rounds`` times, interleaved (one call of each per round, order rotated every round
    so no variant always runs first after another), after ``warmup`` untimed rounds.
    Returns (name -> wall times, name -> process CPU times)."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    sync(device)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            w, c = timed2(fns[n], device)
            wall[n].append(w)
            cpu[n].append(c)
    return wall, cpu


def paired_ratios(times: dict[str, list[float]], num: str, den: str) -> list[float]:
    """Per-round ratios num/den (both timed in the same round, so slow phases of a shared machine cancel)."""
    return [a / b for a, b in zip(times[num], times[den])]


# -- Trainer on synthetic data ----------------------------------------------------------------------------------
def refresh_seconds_per_image(trainer, n: int = 256) -> float:
    """AMT: seconds per image of a refresh of the attention maps, by the method's own epoch-start hook (a no-grad
    pass) over ``n`` synthetic images, into a fresh buffer so the trainer's stays as it was."""
    from mst.methods.importance import AttentionMaps
    from mst.methods import EpochData

    masking = trainer.method.masking
    kept = masking.maps
    masking.maps = AttentionMaps(kept.grid)
    data = EpochData(synthetic_base_dataset(trainer.cfg, n), trainer.device, log=lambda *a, **k: None)
    try:
        stats = trainer.method.on_epoch_start(int(trainer.cfg["amt"]["start"]), data)  # a refresh is due at start
    finally:
        masking.maps = kept
    if "amt_refresh_s" not in stats:
        raise RuntimeError(f"no AMT refresh ran at epoch amt.start ({stats})")
    return stats["amt_refresh_s"] / n


def synthetic_base_dataset(cfg: dict, n: int | None = None):
    """An in-memory uint8 dataset of ``n`` (default one batch of) images at the global crop size."""
    from mst.data import ArrayDataset

    n = int(n or cfg["optim"]["batch_size"])
    size = int(cfg["model"]["img_size"])
    c = int(cfg["data"]["channels"])
    rng = np.random.default_rng(0)
    shape = (n, size, size) if c == 1 else (n, size, size, 3)
    return ArrayDataset(rng.integers(0, 256, shape, dtype=np.uint8), np.zeros(n, np.int64), channels=c)


@contextlib.contextmanager
def _synthetic_data(cfg: dict):
    import mst.engine.trainer as trainer_mod

    original = trainer_mod.build_dataset
    trainer_mod.build_dataset = lambda data_cfg, min_size=0, **kw: synthetic_base_dataset(cfg)
    try:
        yield
    finally:
        trainer_mod.build_dataset = original


def build_trainer(cfg: dict, device: torch.device | str = "cpu", steady_state: bool = True):
    """A :class:`~mst.engine.trainer.Trainer` for ``cfg`` whose dataset is one synthetic batch (the data files
    need not exist), writing nowhere. ``steady_state`` moves it past the frozen-last-layer epochs, so the head's
    last layer gets gradients and optimizer updates as in most of training."""
    from mst.engine.distributed import DistInfo
    from mst.engine.trainer import Trainer

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    with tempfile.TemporaryDirectory(prefix="mst_bench_") as out, _synthetic_data(cfg):  # never written to
        tr = Trainer(cfg, out, dist_info=DistInfo(device=device), log=lambda *a, **k: None)
    tr.method.train()  # the benchmarks feed ready batches to train_batch, whatever augment.backend says
    maps = getattr(getattr(tr.method, "masking", None), "maps", None)
    if maps is not None:  # AMT: a buffer for the synthetic dataset (ones until a refresh)
        maps.bind(len(tr.pipeline.dataset))
    if steady_state:
        o = cfg["optim"]
        tr.epoch = min(int(cfg.get("dino", {}).get("freeze_last_layer", 0)), int(o["epochs"]) - 1)
        tr.global_step = min(tr.epoch * tr.iters_per_epoch, len(tr.schedules["lr"]) - 1)
    return tr


def single_view_size(cfg: dict) -> int | None:
    """The side of a MIM method's view when its degradation crops wider than the input (zoom-in), as the method
    tells the Trainer (``view_size``); None otherwise."""
    if cfg.get("mim", {}).get("degradation", "none") == "none":
        return None
    from mst.degradations import build_degradation

    return build_degradation(cfg["mim"]["degradation"], cfg["degrade"]).view_size(int(cfg["model"]["img_size"]))


def make_batch(cfg: dict, device: torch.device | str = "cpu", batch: int | None = None, seed: int = 0):
    """A :class:`~mst.data.Batch` of ``batch`` synthetic images through the method's own view pipeline
    (``mst.data.build_pipeline``, as the Trainer builds it): the views, boxes, flips and indices a step gets."""
    from mst.config import method_class
    from mst.data import build_pipeline

    b = int(batch or cfg["optim"]["batch_size"])
    device = torch.device(device)
    pipe = build_pipeline(method_class(cfg["method"]).views, cfg, synthetic_base_dataset(cfg, b), single_view_size(cfg))
    loaded = pipe.collate([pipe.dataset[i] for i in range(b)])
    return pipe.to_batch(loaded, device, torch.Generator(device).manual_seed(seed))


def images_per_step(cfg: dict) -> int:
    return int(cfg["optim"]["batch_size"])


# -- output -----------------------------------------------------------------------------------------------------
def fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        if x != x:
            return "nan"
        if abs(x) >= 1e5 or (0 < abs(x) < 1e-3):
            return f"{x:.{digits}g}"
        return f"{x:.{digits}f}"
    return str(x)


def print_table(rows: list[dict], columns: list[str] | None = None, file=sys.stdout) -> None:
    if not rows:
        return
    columns = columns or list(rows[0])
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)), file=file)


def environment(device: torch.device | str) -> dict:
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_json(path: str | None, payload: dict) -> None:
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"wrote {path}")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
