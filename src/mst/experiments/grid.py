"""Reports of a grid ablation (variants with a ``cell``: rows x columns, e.g. methods x mask strategies): one table
and one heat-map panel per metric, the step time beside them, refused cells with their reasons.

>>> agg = {"variants": [{"cell": ["mae", "random"], "stats": {"knn_top1_k20": {"mean": 76.9, "std": 0.4, "n": 2}}},
...                     {"cell": ["mae", "amt"], "refused": "no maps", "stats": {}}], "metrics": ["knn_top1_k20"]}
>>> print(grid_markdown(agg).splitlines()[2])
| mae | 76.90 ± 0.40 | refused (1) |
"""
from __future__ import annotations

import math
from pathlib import Path

GRID_METRICS = ("knn_top1_k20", "linear_top1", "finetune_top1")
_TITLES = {"knn_top1_k20": "k-NN top-1 k=20 (%)", "linear_top1": "Linear top-1 (%)",
           "finetune_top1": "Low-label fine-tune top-1 (%)", "step_ms": "Step time (ms, median logged wall)",
           "cpu_step_ms": "CPU time per step (ms, one thread, AMT refreshes included)"}
STEP_KEYS = ("step_ms", "cpu_step_ms")


def _step_key(cells: dict) -> str | None:
    """The step-time statistic to show: CPU time per step where the runs have it (one-thread runs; sharing the
    cores does not inflate it), else the logged wall time."""
    for key in ("cpu_step_ms", "step_ms"):
        if any(key in r.get("stats", {}) for r in cells.values()):
            return key
    return None


def _axes(agg: dict) -> tuple[list[str], list[str], dict]:
    rows, cols, cells = [], [], {}
    for r in agg["variants"]:
        if not r.get("cell"):
            continue
        row, col = r["cell"]
        rows += [row] if row not in rows else []
        cols += [col] if col not in cols else []
        cells[row, col] = r
    return rows, cols, cells


def _footnotes(agg: dict) -> dict[str, int]:
    """One number per distinct refusal reason, in table order."""
    notes: dict[str, int] = {}
    for r in agg["variants"]:
        if r.get("refused") and r["refused"] not in notes:
            notes[r["refused"]] = len(notes) + 1
    return notes


def _cell_text(r: dict | None, metric: str, notes: dict[str, int], base: dict | None = None) -> str:
    if r is None:
        return "–"
    if r.get("refused"):
        return f"refused ({notes[r['refused']]})"
    c = r["stats"].get(metric)
    if c is None:
        return "not run yet"
    text = f"{c['mean']:.2f}" + (f" ± {c['std']:.2f}" if c["n"] > 1 else "")
    if metric in STEP_KEYS:
        text = f"{c['mean']:.1f}"
        b = (base or {}).get("stats", {}).get(metric)
        if b and base is not r:
            text += f" ({c['mean'] / b['mean']:.2f}x)"
    return text


def grid_markdown(agg: dict) -> str:
    """One Markdown table per metric (rows x columns), then the step times (each row's ratio is to its first
    column's cell) and the refusal reasons as numbered notes."""
    rows, cols, cells = _axes(agg)
    notes = _footnotes(agg)
    out = []
    metrics = [m for m in GRID_METRICS if m in agg["metrics"]]
    if _step_key(cells):
        metrics.append(_step_key(cells))
    for m in metrics:
        title = _TITLES[m] + (f", x the {cols[0]} cell of the row" if m in STEP_KEYS else "")
        out += [f"| {title} | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for row in rows:
            base = cells.get((row, cols[0]))
            out.append(f"| {row} | " + " | ".join(_cell_text(cells.get((row, c)), m, notes, base)
                                                  for c in cols) + " |")
        out.append("")
    if notes:
        out.append("Refused by the config (the one-line reason it gives): " + "; ".join(
            f"({i}) {reason}" for reason, i in notes.items()) + ".")
    return "\n".join(out).rstrip("\n")


def grid_plot(agg: dict, path: Path) -> Path:
    """A panel per metric: each cell its mean (± std), coloured by its difference from the row's first column (the
    comparison that matters: a strategy against random within one method; methods differ in budget and scale);
    step time coloured by its ratio to that cell. Refused cells grey and marked, unrun cells blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows, cols, cells = _axes(agg)
    metrics = [m for m in GRID_METRICS if m in agg["metrics"]] + [_step_key(cells) or "step_ms"]
    ncol = 2
    nrow = math.ceil(len(metrics) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(ncol * (1.1 * len(cols) + 1.5), nrow * (0.55 * len(rows) + 1.3)),
                             squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        value = np.full((len(rows), len(cols)), np.nan)
        for (row, col), r in cells.items():
            c = r["stats"].get(m)
            if c is not None:
                value[rows.index(row), cols.index(col)] = c["mean"]
        base = value[:, :1]
        shade = value / base - 1 if m in STEP_KEYS else value - base  # vs the row's first column
        floor = 0.3 if m in STEP_KEYS else 3.0  # a point of accuracy (or 10 % of time) is not a saturated colour
        lim = max(floor, np.nanmax(np.abs(shade)) if np.isfinite(shade).any() else 0.0)
        cmap = plt.get_cmap("RdBu_r" if m in STEP_KEYS else "RdBu").with_extremes(bad="white")
        ax.imshow(np.ma.masked_invalid(shade), cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
        for (row, col), r in cells.items():
            i, j = rows.index(row), cols.index(col)
            c = r["stats"].get(m)
            if r.get("refused"):
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color="#cccccc", hatch="//", fill=True))
                text = "refused"
            elif c is None:
                text = "·"
            elif m in STEP_KEYS:
                text = f"{c['mean']:.0f} ms" + (f"\n{value[i, j] / base[i, 0]:.2f}x" if j and np.isfinite(base[i, 0])
                                                 else "")
            else:
                text = f"{c['mean']:.1f}" + (f"\n±{c['std']:.1f}" if c["n"] > 1 else "")
            dark = np.isfinite(shade[i, j]) and abs(shade[i, j]) > 0.6 * lim
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
        ax.set_xticks(range(len(cols)), cols)
        ax.set_yticks(range(len(rows)), rows)
        ax.set_title(_TITLES[m] + (f": colour = ratio to {cols[0]}" if m in STEP_KEYS else
                                   f": colour = difference from {cols[0]}"), fontsize=9)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(f"{agg['ablation']} ({agg['protocol']['name']} protocol): mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
