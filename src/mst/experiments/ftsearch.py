"""A small fine-tuning recipe search, the same for every backbone it compares (each pretrained checkpoint and the
same ViT from scratch), so no baseline is judged on a recipe tuned for another.

Each recipe of :data:`GRID` fine-tunes on ``1 - val_share`` of the labelled subset and is scored on the held-out
``val_share`` of it (``data.val_share``: the test split is never looked at); the recipe with the best validation
top-1 at the last epoch is then trained on the whole subset with several seeds and reported on the test split.
While the best recipe has the largest lr tried, the lr axis is extended by doubling (:data:`EXTEND_LR` times at most).

>>> sorted(GRID)
['augmentation', 'finetune.layer_decay', 'optim.base_lr']
"""
from __future__ import annotations

import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Callable

# named augmentations: the small-image shift (2 px zero padding + random crop + flip, no erasing) and the
# MAE / BEiT-style RandomResizedCrop (half the image or more) + flip with random erasing
AUGMENTATIONS = {
    "shift": ["augment.crop=pad", "augment.pad=2", "finetune.reprob=0.0"],
    "rrc_erase": ["augment.crop=rrc", "augment.global_scale=[0.5,1.0]", "finetune.reprob=0.25"],
}
GRID: dict[str, list] = {
    "optim.base_lr": [2e-3, 4e-3, 8e-3],  # x 64 / 256: 5e-4, 1e-3, 2e-3
    "finetune.layer_decay": [0.75, 1.0],
    "augmentation": list(AUGMENTATIONS),
}
EXTEND_LR = 2  # lr doublings past the grid's edge while the best recipe sits on it


def recipes(grid: dict[str, list] = GRID) -> list[dict]:
    """Every combination of the grid, as {key: value}, in a fixed order."""
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def recipe_overrides(recipe: dict) -> list[str]:
    """``--set`` items of a recipe (a named augmentation expands to its keys)."""
    out: list[str] = []
    for key, value in recipe.items():
        out += AUGMENTATIONS[value] if key == "augmentation" else [f"{key}={value}"]
    return out


def recipe_name(recipe: dict) -> str:
    return "_".join(f"{k.split('.')[-1]}{v}" for k, v in sorted(recipe.items()))


class SearchStopped(Exception):
    """A fine-tune of the search was stopped by a signal; its run resumes when the same search is run again."""


def _run(ckpt, out: Path, overrides: list[str], train_subset: int, random_init: bool, preset, log) -> dict:
    from mst.finetune import run_finetune

    done = out / "finetune.json"
    if done.is_file():
        res = json.loads(done.read_text())
        if "top1" in res:  # (a search before this check wrote a stopped run's status here too)
            return res
    t0 = time.perf_counter()
    res = run_finetune(ckpt, out, preset=preset, overrides=overrides, train_subset=train_subset,
                       random_init=random_init, log=lambda s: None)
    if "top1" not in res:
        raise SearchStopped(f"{out}: the fine-tune stopped ({res.get('status')}); rerun the same command to go on")
    res["wall_s"] = time.perf_counter() - t0
    done.write_text(json.dumps(res, indent=2))
    log(f"  {out.name}: val {res.get('val_top1', float('nan')):.2f} test {res['top1']:.2f} "
        f"({res['wall_s']:.0f} s)")
    return res


def search(ckpt: str | Path, out_dir: str | Path, random_init: bool = False, train_subset: int = 1000,
           epochs: int = 30, val_share: float = 0.2, seeds: int = 3, preset=None, overrides: list[str] | None = None,
           grid: dict[str, list] | None = None, shard: tuple[int, int] | None = None, extend_lr: int = EXTEND_LR,
           log: Callable = print) -> dict:
    """Run (or continue) the search for one backbone and, unless sharded, the chosen recipe's seeds. Returns
    {"search": [{recipe, val_top1, wall_s}], "chosen": recipe, "final": {"top1": [...], "mean", "std"}}.

    When the best recipe has the largest lr tried, the lr axis grows by one doubling (with every value of the other
    axes) and the choice is made again, at most ``extend_lr`` times: a choice at the grid's edge may be cut off by
    it, and every backbone gets the same rule."""
    out_dir = Path(out_dir)
    base = [f"optim.epochs={epochs}", "log.progress=false", "log.tensorboard=false", f"log.knn_every={epochs}",
            *(overrides or [])]
    grid = dict(grid or GRID)

    def run_recipes(todo: list[dict]) -> list[dict]:
        rows = []
        for recipe in todo:
            res = _run(ckpt, out_dir / "search" / recipe_name(recipe),
                       base + recipe_overrides(recipe) + [f"data.val_share={val_share}"], train_subset, random_init,
                       preset, log)
            rows.append({**recipe, "val_top1": res["val_top1"], "wall_s": res.get("wall_s")})
        return rows

    grid_recipes = recipes(grid)
    if shard is not None:
        return {"search": run_recipes([r for k, r in enumerate(grid_recipes) if k % shard[1] == shard[0]])}
    rows = run_recipes(grid_recipes)
    chosen = max(rows, key=lambda r: r["val_top1"])  # ties: the first in grid order
    for _ in range(extend_lr if "optim.base_lr" in grid else 0):  # (a grid without an lr axis has no edge)
        top = max(grid["optim.base_lr"])
        if chosen["optim.base_lr"] != top:
            break
        grid["optim.base_lr"] = [2 * top]
        rows += run_recipes(recipes(grid))
        chosen = max(rows, key=lambda r: r["val_top1"])
    recipe = {k: chosen[k] for k in grid_recipes[0]}
    finals = []
    for seed in range(seeds):
        res = _run(ckpt, out_dir / "final" / f"seed{seed}", base + recipe_overrides(recipe) + [f"seed={seed}"],
                   train_subset, random_init, preset, log)
        finals.append(res["top1"])
    result = {"search": rows, "chosen": recipe, "final": {
        "top1": finals, "mean": statistics.fmean(finals), "std": statistics.stdev(finals) if len(finals) > 1 else 0.0},
        "train_subset": train_subset, "epochs": epochs, "val_share": val_share, "random_init": random_init,
        "checkpoint": str(ckpt)}
    (out_dir / "search.json").write_text(json.dumps(result, indent=2))
    return result


def table(result: dict) -> str:
    """The search as a markdown table (val top-1 per recipe, the chosen one in bold) and the final test top-1."""
    rows = sorted(result["search"], key=lambda r: -r["val_top1"])
    keys = [k for k in rows[0] if k not in ("val_top1", "wall_s")]
    lines = ["| " + " | ".join(keys) + " | val top-1 |", "|" + "---|" * (len(keys) + 1)]
    for r in rows:
        mark = "**" if all(r[k] == result["chosen"][k] for k in keys) else ""
        lines.append("| " + " | ".join(str(r[k]) for k in keys) + f" | {mark}{r['val_top1']:.2f}{mark} |")
    f = result["final"]
    lines.append(f"\nchosen recipe, trained on all {result['train_subset']} labels, test top-1 over "
                 f"{len(f['top1'])} seeds: {f['mean']:.2f} ± {f['std']:.2f} ({', '.join(f'{v:.2f}' for v in f['top1'])})")
    return "\n".join(lines)
