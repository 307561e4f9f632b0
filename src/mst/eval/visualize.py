"""Figures: what a backbone attends to, what a method does to an image (masks, reconstructions), training curves.

Figures are saved at an exact pixel size (figure inches x dpi, no tight bounding box), so a caller or a test knows
the PNG's size in advance. Drawing functions also return the arrays they plot. A method's own panels arrive as
:class:`~mst.figures.Panel` lists (``Method.panels``); this module never imports a method.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mst.eval.features import Log, default_device  # noqa: E402
from mst.figures import Panel, to_display  # noqa: E402

__all__ = ["per_head_attention", "attention_figure", "plot_training_curves", "plot_collapse_curves", "run_visualize"]

DPI = 100
PanelsFn = Callable[[torch.Tensor, torch.Generator], list[list[Panel]]]


def per_head_attention(backbone: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Last-block CLS->patch attention per head, (B, heads, N), from one no-grad forward pass (the mean over
    heads is what the backbone hands an attention-guided mask strategy)."""
    with torch.no_grad():
        return backbone(x, return_attention=True, per_head=True).attention


def attention_figure(
    backbone: torch.nn.Module,
    image: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    panels: Sequence[Panel] = (),
    out_path: str | Path | None = None,
    panel_px: int = 160,
) -> dict:
    """One PNG grid for one normalised image (C, H, W).

    Row 1: the input, the backbone's mean-over-heads CLS attention, then ``panels`` (what the method does to the
    image: masks, reconstructions). Row 2: each head's attention. The PNG is exactly (ncols * panel_px,
    2 * panel_px) pixels. Returns the plotted arrays, the path and "size" (width, height).
    """
    dev = next(backbone.parameters()).device
    x = image.unsqueeze(0).to(dev)
    was_training = backbone.training
    backbone.eval()
    try:
        heads = per_head_attention(backbone, x)[0].float().cpu()  # (heads, N)
        grid = backbone(x).mask_grid  # the grid masks and attention live on (patch grid)
    finally:
        backbone.train(was_training)
    h, w = grid
    H, W = image.shape[-2:]
    att_maps = F.interpolate(heads.reshape(1, -1, h, w), size=(H, W), mode="nearest")[0].numpy()
    mean_att = F.interpolate(heads.mean(0).reshape(1, 1, h, w), size=(H, W))[0, 0].numpy()
    shown = [Panel("input", to_display(image, mean, std)), Panel("attention (mean)", mean_att, "inferno"),
             *panels]
    ncols = max(len(shown), len(heads))
    fig, axes = plt.subplots(2, ncols, figsize=(ncols * panel_px / DPI, 2 * panel_px / DPI), dpi=DPI, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, p in zip(axes[0], shown):
        kw = {"cmap": p.cmap} if p.cmap else {}
        if p.cmap == "gray":
            kw.update(vmin=0, vmax=1)
        ax.imshow(p.image, **kw)
        ax.set_title(p.title, fontsize=7)
    for i, (ax, arr) in enumerate(zip(axes[1], att_maps)):
        ax.imshow(arr, cmap="inferno")
        ax.set_title(f"head {i}", fontsize=7)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, wspace=0.05, hspace=0.2)
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_path, dpi=DPI)
    plt.close(fig)
    return {
        "path": str(out_path) if out_path is not None else None,
        "size": (ncols * panel_px, 2 * panel_px),
        "image": shown[0].image,
        "attention": mean_att,
        "head_attention": att_maps,
        "panels": {p.title: p.image for p in panels},
    }


def read_metrics(path: str | Path, log: Log = print) -> list[dict]:
    """metrics.jsonl -> records; an unreadable line (e.g. cut short by a kill) is skipped with a note."""
    records = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            log(f"{path}:{i}: skipping a line that is not valid JSON")
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def plot_training_curves(run_dir: str | Path, out_path: str | Path | None = None, log: Log = print) -> Path:
    """One subplot per numeric metric in ``run_dir/metrics.jsonl`` (vs "step", else the line number); metrics
    logged only sometimes (k-NN) are drawn at the steps they appear. Returns the PNG's path
    (default run_dir/training_curves.png)."""
    run_dir = Path(run_dir)
    src = run_dir / "metrics.jsonl"
    if not src.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    records = read_metrics(src, log)
    series: dict[str, tuple[list[float], list[float]]] = {}
    for i, rec in enumerate(records):
        x = rec.get("step", i)
        for k, v in rec.items():
            if k in ("step", "epoch") or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if math.isfinite(v):
                xs, ys = series.setdefault(k, ([], []))
                xs.append(float(x))
                ys.append(float(v))
    if not series:
        raise ValueError(f"{src} holds no numeric metrics to plot (empty, or cut short before its first record)")
    ncols = min(3, len(series))
    nrows = math.ceil(len(series) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3 * nrows), dpi=DPI, squeeze=False)
    for ax in axes.ravel()[len(series):]:
        ax.axis("off")
    for ax, (k, (xs, ys)) in zip(axes.ravel(), series.items()):
        ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, markersize=3, linewidth=1)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step" if any("step" in r for r in records) else "line", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out_path) if out_path is not None else run_dir / "training_curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


COLLAPSE_PANELS = (  # metric, title, reference lines
    ("teacher_entropy_ratio", "teacher entropy / ln K (1: uniform)", (0.85, 1.0)),
    ("kl", "KL(teacher || student) = CE - H", ()),
    ("center_norm", "centre norm", ()),
    ("teacher_cls_std", "teacher CLS std per dim (batch)", ()),
    ("rankme", "RankMe of CLS (k-NN bank)", ()),
    ("knn_top1", "online k-NN top-1 (%)", ()),
)


def plot_collapse_curves(runs: dict[str, str | Path], out_path: str | Path, log: Log = print) -> Path | None:
    """The DINO-family collapse monitors of one or more runs (``{label: run_dir}``), one panel per monitor with
    every run overlaid: the teacher's entropy against ln K (dashed: the warning's 0.85, and uniform), the KL
    between teacher and student terms, the centre's norm, the spread of the teacher's CLS tokens, and, at each
    online evaluation, RankMe and the k-NN accuracy. None (with a line saying why) when no run logged them."""
    curves = {label: read_metrics(Path(d) / "metrics.jsonl", log) for label, d in runs.items()
              if (Path(d) / "metrics.jsonl").is_file()}
    if not any("teacher_entropy_ratio" in r for recs in curves.values() for r in recs):
        log("collapse curves skipped: no run logged the DINO monitors (teacher_entropy_ratio)")
        return None
    fig, axes = plt.subplots(2, 3, figsize=(12, 6), dpi=DPI)
    colors = {label: f"C{i}" for i, label in enumerate(curves)}  # one colour per run in every panel
    for ax, (key, title, refs) in zip(axes.ravel(), COLLAPSE_PANELS):
        for label, recs in curves.items():
            pts = [(r["step"], r[key]) for r in recs if key in r and "step" in r and math.isfinite(r[key])]
            if pts:
                ax.plot(*zip(*pts), marker="o" if len(pts) < 20 else None, markersize=3, linewidth=1, label=label,
                        color=colors[label])
        for y in refs:
            ax.axhline(y, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if len(curves) > 1:
        axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def load_image_tensor(path: str | Path, cfg: dict) -> torch.Tensor:
    """An image file as the checkpoint saw its views: its channels, shorter side resized to global_size and a
    centre crop, normalised with data.mean/std. Returns (C, S, S)."""
    from mst.data import EvalTransform, load_image

    d = cfg["data"]
    transform = EvalTransform(int(cfg["model"]["img_size"]), d["mean"], d["std"], int(d["channels"]),
                              float(cfg["augment"]["eval_crop"]))
    return transform(load_image(path, int(d["channels"])))


def run_visualize(
    ckpt: str | Path,
    images: Sequence[str | Path] | None = None,
    n: int = 4,
    out_dir: str | Path = "figures",
    which: str | None = None,
    split: str | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    log: Log = print,
    method_panels: PanelsFn | None = None,
) -> list[Path]:
    """Attention figures for a checkpoint (for ``mst visualize``): for the given image files, or else ``n`` seeded
    random images of the checkpoint's dataset ``split`` (default: test; train for an unlabelled folder).
    ``method_panels(images, generator)`` adds what the method does to each image (``Method.panels``). If the
    checkpoint sits in a run directory with metrics.jsonl, its training curves are drawn too. Returns the PNGs."""
    from mst.checkpoint import resolve_checkpoint
    from mst.eval.features import load_eval_backbone, load_eval_split

    dev = default_device(device)
    backbone, cfg = load_eval_backbone(ckpt, which, dev)
    if split is None:
        split = "train" if cfg["data"]["name"] == "folder" else "test"
    if images:
        named = [(Path(p).stem, load_image_tensor(p, cfg)) for p in images]
    else:
        data = load_eval_split(cfg, split, subset=n, seed=seed, require_labels=False)
        if isinstance(data, tuple):
            named = [(f"{split}_{i}", data[0][i]) for i in range(min(n, len(data[0])))]
        else:
            named = [(f"{split}_{i}", data[i][0]) for i in range(min(n, len(data)))]  # type: ignore[arg-type]
    rows: list[list[Panel]] = [[] for _ in named]
    if method_panels is not None and named:
        gen = torch.Generator().manual_seed(seed)
        rows = method_panels(torch.stack([x for _, x in named]).to(dev), gen)
    out_dir = Path(out_dir)
    written = []
    for (name, x), panels in zip(named, rows):
        res = attention_figure(backbone, x, cfg["data"]["mean"], cfg["data"]["std"], panels,
                               out_dir / f"attention_{name}.png")
        written.append(Path(res["path"]))
        log(f"wrote {res['path']}")
    run_dir = resolve_checkpoint(ckpt).parent
    curves = plot_curves_if_any(run_dir, out_dir / "training_curves.png", log)
    if curves is not None:
        written.append(curves)
        log(f"wrote {curves}")
        collapse = plot_collapse_curves({run_dir.name: run_dir}, out_dir / "collapse_monitors.png", lambda s: None)
        if collapse is not None:
            written.append(collapse)
            log(f"wrote {collapse}")
    return written


def plot_curves_if_any(run_dir: str | Path, out_path: str | Path, log: Log = print) -> Path | None:
    """:func:`plot_training_curves` when ``run_dir`` has metrics to plot; otherwise one line saying why the curves
    are skipped, and None."""
    run_dir = Path(run_dir)
    src = run_dir / "metrics.jsonl"
    if not src.is_file():
        log(f"training curves skipped: {run_dir} has no metrics.jsonl (not a training run directory, or a run "
            "that logged no step)")
        return None
    try:
        return plot_training_curves(run_dir, out_path, log)
    except ValueError as e:  # no numeric metric in the file
        log(f"training curves skipped: {e}")
        return None
