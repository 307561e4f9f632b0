"""Figures: what the teacher attends to, which tokens MST masks, what the decoder restores, and training curves.

Figures are saved at an exact pixel size (figure inches x dpi, no tight bounding box), so a caller or a test knows
the PNG's size in advance. Drawing functions also return the arrays they plot.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mst.eval.features import Log, default_device, denormalize  # noqa: E402
from mst.masking import AttentionGuidedMask, RandomMask  # noqa: E402
from mst.models.backbone import ViTBackbone  # noqa: E402

__all__ = ["per_head_attention", "attention_figure", "plot_training_curves", "run_visualize"]

DPI = 100


def per_head_attention(backbone: ViTBackbone, x: torch.Tensor) -> torch.Tensor:
    """Last-block CLS->patch attention per head, (B, heads, N), from one no-grad forward pass (the mean over
    heads is what the backbone hands the mask strategy)."""
    with torch.no_grad():
        return backbone(x, return_attention=True, per_head=True).attention


def _to_hwc(img: torch.Tensor) -> np.ndarray:
    arr = img.detach().float().cpu().permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def _masked_view(rgb: np.ndarray, mask: np.ndarray, patch: int, cand: np.ndarray | None = None) -> np.ndarray:
    """The image as RGB with masked patches grey and (optionally) unmasked mask candidates tinted red."""
    out = np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb.copy()
    up = lambda m: np.kron(m, np.ones((patch, patch), dtype=bool))  # noqa: E731
    if cand is not None:
        c = up(cand & ~mask)
        out[c] = 0.6 * out[c] + 0.4 * np.array([1.0, 0.0, 0.0])
    out[up(mask)] = 0.5
    return out


def attention_figure(
    backbone: ViTBackbone,
    image: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    mask_cfg: dict,
    student: torch.nn.Module | None = None,
    out_path: str | Path | None = None,
    seed: int = 0,
    panel_px: int = 160,
) -> dict:
    """One PNG grid for one normalised image (C, H, W).

    Row 1: input, mean-over-heads CLS attention, a random mask (RandomMask, p = mask_cfg["p"]), the
    attention-guided mask (num, p from mask_cfg; red = candidates left unmasked) and, when ``student`` (an Encoder
    with a decoder) is given, the decoder's restoration of the attention-masked view. Row 2: each head's attention.
    The PNG is exactly (ncols * panel_px, 2 * panel_px) pixels. Returns the plotted arrays, the masks, the path
    and "size" (width, height).
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
    patch = H // h
    att_maps = F.interpolate(heads.reshape(1, -1, h, w), size=(H, W), mode="nearest")[0].numpy()
    mean_att = heads.mean(0)
    gen = torch.Generator().manual_seed(seed)
    n = h * w
    rand = RandomMask(mask_cfg["p"])(1, n, None, gen).mask[0].reshape(h, w).numpy()
    guided = AttentionGuidedMask(mask_cfg["num"], mask_cfg["p"])(1, n, mean_att[None], gen)
    amask = guided.mask[0].reshape(h, w).numpy()
    cand = guided.candidates[0].reshape(h, w).numpy()

    rgb = _to_hwc(denormalize(image.float().cpu(), mean, std))
    recon = None
    if student is not None and getattr(student, "decoder", None) is not None:
        recon = _reconstruct(student, x, guided.mask.to(dev), mask_cfg.get("replacement", "learned"), gen)
        recon = _to_hwc(denormalize(recon[0].float().cpu(), mean, std))

    panels: list[tuple[str, np.ndarray, dict]] = [
        ("input", rgb, {"cmap": "gray", "vmin": 0, "vmax": 1}),
        ("attention (mean)", F.interpolate(mean_att.reshape(1, 1, h, w), size=(H, W))[0, 0].numpy(),
         {"cmap": "inferno"}),
        (f"random p={mask_cfg['p']}: {int(rand.sum())}", _masked_view(rgb, rand, patch), {}),
        (f"attn num={mask_cfg['num']} p={mask_cfg['p']}: {int(amask.sum())}/{int(cand.sum())}",
         _masked_view(rgb, amask, patch, cand), {}),
    ]
    if recon is not None:
        panels.append(("decoder restoration", recon, {"cmap": "gray", "vmin": 0, "vmax": 1}))
    ncols = max(len(panels), len(heads))
    fig, axes = plt.subplots(2, ncols, figsize=(ncols * panel_px / DPI, 2 * panel_px / DPI), dpi=DPI, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, arr, kw) in zip(axes[0], panels):
        ax.imshow(arr, **kw)
        ax.set_title(title, fontsize=7)
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
        "image": rgb,
        "attention": panels[1][1],
        "head_attention": att_maps,
        "random_mask": rand,
        "attention_mask": amask,
        "candidates": cand,
        "reconstruction": recon,
    }


def _reconstruct(student, x, mask, replacement, gen) -> torch.Tensor:
    """The student's decoder output for the attention-masked view (unmasked if it has no [MASK] embedding)."""
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            if student.backbone.mask_token is None:
                out = student.backbone(x)
            else:
                out = student.backbone(x, mask=mask, replacement=replacement, generator=gen)
            return student.decoder(out.patches, out.grid)
    finally:
        student.train(was_training)


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
        raise ValueError(f"{src} holds no numeric metrics to plot")
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


def load_image_tensor(path: str | Path, cfg: dict) -> torch.Tensor:
    """An image file as the checkpoint saw its views: its channels, shorter side resized to global_size and a
    centre crop, normalised with data.mean/std. Returns (C, S, S)."""
    from mst.data import EvalTransform, load_image

    d = cfg["data"]
    transform = EvalTransform(int(cfg["augment"]["global_size"]), d["mean"], d["std"], int(d["channels"]))
    return transform(load_image(path, int(d["channels"])))


def run_visualize(
    ckpt: str | Path,
    images: Sequence[str | Path] | None = None,
    n: int = 4,
    out_dir: str | Path = "figures",
    which: str = "teacher",
    split: str | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    log: Log = print,
) -> list[Path]:
    """Attention/mask/restoration figures for a checkpoint (for ``mst visualize``): for the given image files, or
    else ``n`` seeded random images of the checkpoint's dataset ``split`` (default: test; train for an
    unlabelled folder). The student's decoder is used
    when the checkpoint has one. If the checkpoint sits in a run directory with metrics.jsonl, its training
    curves are drawn too. Returns the written PNG paths."""
    from mst.engine.checkpoint import load_checkpoint, resolve_checkpoint
    from mst.eval.features import load_eval_backbone, load_eval_split
    from mst.models.encoder import Encoder

    dev = default_device(device)
    backbone, cfg = load_eval_backbone(ckpt, which, dev)
    student = None
    if cfg["decoder"]["enabled"]:
        student = Encoder(cfg, student=True)
        student.load_state_dict(load_checkpoint(ckpt)["student"])
        student = student.to(dev).eval()
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
    out_dir = Path(out_dir)
    written = []
    for name, x in named:
        res = attention_figure(backbone, x, cfg["data"]["mean"], cfg["data"]["std"], cfg["mask"], student,
                               out_dir / f"attention_{name}.png", seed)
        written.append(Path(res["path"]))
        log(f"wrote {res['path']}")
    run_dir = resolve_checkpoint(ckpt).parent
    if (run_dir / "metrics.jsonl").is_file():
        written.append(plot_training_curves(run_dir, out_dir / "training_curves.png", log))
        log(f"wrote {written[-1]}")
    return written
