"""Continue from a pretrained model, measured honestly on a simulated foundation (no hub is reachable here).

    python scripts/continue_experiment.py OUT [--stage foundation|rows|distill|guide|photos|report] [--lane I/N]

Foundation: the CPU presets' narrow ViT (width 96, 4 blocks, patch 4, 28 px) pretrained with MAE and with MST on
Fashion-MNIST classes 0-4 only (all 30000 of their training images), exported with `mst export` and loaded back
through `--init timm:vit_tiny_patch16_224=FILE`, the path a user with downloaded weights takes. Domain: the training
images of classes 5-9 (unlabelled for pretraining); scores on classes 5-9: k-NN@20 (10000-image bank, the 5000 test
images), a linear probe (10000 images, 100 epochs) and a 500-label fine-tune (100 per class, 30 epochs, the recipe
`mst finetune-search` chose for that kind of backbone). Every training row gets the same budget: 750 steps on the
same 12000 domain images. Each stage is resumable (a finished run or evaluation is skipped); `--lane I/N` runs
every N-th job, so two one-thread processes share a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

MST = [sys.executable, "-m", "mst"]
FIVE_TO_NINE = "data.classes=[5,6,7,8,9]"
ZERO_TO_FOUR = "data.classes=[0,1,2,3,4]"
Q = ["--set", "log.progress=false", "--set", "log.tensorboard=false"]
FOUNDATIONS = {  # name -> (preset, overrides): about 10-13 one-thread minutes each
    "mae": ("configs/fashion_mnist_mae.yaml", ["data.subset=null", "optim.epochs=8"]),
    "mst": ("configs/fashion_mnist_vit_tiny.yaml", ["data.subset=null", "optim.epochs=2"]),
}
DOMAIN = ["data.subset=12000", "log.knn_every=0"]  # 750 steps: MAE 4 epochs of 64, MST / DINO 2 epochs of 32
ROWS = {  # name -> (preset, foundation to start from or None, overrides)
    "scratch_mae": ("configs/fashion_mnist_mae.yaml", None, ["optim.epochs=4"]),
    "scratch_mst": ("configs/fashion_mnist_vit_tiny.yaml", None, ["optim.epochs=2"]),
    "continue_mae": ("configs/fashion_mnist_mae.yaml", "mae", ["optim.epochs=4"]),
    "continue_mae_freeze2": ("configs/fashion_mnist_mae.yaml", "mae", ["optim.epochs=4", "optim.freeze_blocks=2"]),
    "continue_mae_ld075": ("configs/fashion_mnist_mae.yaml", "mae", ["optim.epochs=4", "optim.layer_decay=0.75"]),
    "continue_mae_lr_third": ("configs/fashion_mnist_mae.yaml", "mae", ["optim.epochs=4", "optim.base_lr=5e-4"]),
    "continue_mst": ("configs/fashion_mnist_vit_tiny.yaml", "mst", ["optim.epochs=2"]),
    "continue_dino": ("configs/fashion_mnist_dino.yaml", "mst", ["optim.epochs=2"]),
}


def run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if code:
        raise SystemExit(f"failed ({code}): {' '.join(cmd)} (see {log})")


def sets(items: list[str]) -> list[str]:
    return [a for o in items for a in ("--set", o)]


def evaluate(ckpt: Path, out: Path, seed: int) -> dict:
    """k-NN, linear and fine-tune of ``ckpt`` on classes 5-9; cached in out/scores.json."""
    scores_path = out / "scores.json"
    scores = json.loads(scores_path.read_text()) if scores_path.is_file() else {}
    data = sets([FIVE_TO_NINE])
    if "knn20" not in scores:
        run(MST + ["knn", "--ckpt", str(ckpt), "--k", "20", "--train-subset", "10000", "--json", str(out / "knn.json"),
                   *data], out / "eval.log")
        scores["knn20"] = next(v["20"] for k, v in json.loads((out / "knn.json").read_text()).items())
    if "linear" not in scores:
        run(MST + ["linear", "--ckpt", str(ckpt), "--train-subset", "10000", "--epochs", "100",
                   "--json", str(out / "linear.json"), *data], out / "eval.log")
        scores["linear"] = json.loads((out / "linear.json").read_text())["top1"]
    if "finetune" not in scores:
        run(MST + ["finetune", "--ckpt", str(ckpt), "--out", str(out / "finetune"), "--train-subset", "500",
                   "--epochs", "30", "--json", str(out / "finetune.json"), *Q,
                   *sets([FIVE_TO_NINE, f"seed={seed}", "log.knn_every=10"])], out / "eval.log")
        scores["finetune"] = json.loads((out / "finetune.json").read_text())["top1"]
    scores_path.write_text(json.dumps(scores, indent=2))
    return scores


def foundation_file(root: Path, name: str, wait_s: int = 3600) -> Path:
    """The exported foundation, waiting for the other lane to finish it."""
    import time

    path = root / "foundation" / name / "vit.safetensors"
    deadline = time.time() + wait_s
    while not path.with_suffix(".json").is_file() and time.time() < deadline:
        time.sleep(10)
    return path


def jobs(root: Path, stage: str, seeds: int) -> list[tuple[str, callable]]:
    out = []
    if stage == "foundation":
        for name, (preset, extra) in FOUNDATIONS.items():
            def job(name=name, preset=preset, extra=extra):
                run_dir = root / "foundation" / name
                run(MST + ["pretrain", "--config", preset, "--out", str(run_dir), *Q, *sets([ZERO_TO_FOUR, *extra])],
                    run_dir.with_suffix(".log"))
                run(MST + ["export", "--ckpt", str(run_dir), "--out", str(foundation_file(root, name))],
                    run_dir.with_suffix(".log"))
                evaluate(run_dir, root / "rows" / f"foundation_{name}" / "seed0", 0)
            out.append((f"foundation {name}", job))
    elif stage == "rows":
        for seed in range(seeds):
            for row, (preset, start, extra) in ROWS.items():
                def job(row=row, preset=preset, start=start, extra=extra, seed=seed):
                    run_dir = root / "rows" / row / f"seed{seed}"
                    init = ["--init", f"timm:vit_tiny_patch16_224={foundation_file(root, start)}"] if start else []
                    if not (run_dir / "done").is_file():
                        run(MST + ["pretrain", "--config", preset, "--out", str(run_dir), *init, *Q,
                                   *sets([FIVE_TO_NINE, *DOMAIN, *extra, f"seed={seed}"])], run_dir / "pretrain.log")
                        (run_dir / "done").write_text("")
                    evaluate(run_dir, run_dir, seed)
                out.append((f"{row} seed {seed}", job))
    return out


DISTILL = ["data.subset=12000", "log.knn_every=0", "optim.epochs=4", "optim.batch_size=64", "model.drop_path=0.0",
           "optim.base_lr=1.5e-3", "optim.warmup_epochs=1", "augment.backend=tensor"]  # 750 steps, MAE's optimiser
DISTILL_ROWS = {  # the frozen teacher: the MST foundation (classes 0-4); students from random init
    "distill_vit": ["model.arch=vit_tiny", "model.embed_dim=96", "model.depth=4", "model.num_heads=3",
                    "model.patch_size=4"],
    "distill_lcnet_035": ["model.arch=lcnet_035"],  # 0.36 M parameters against the teacher's 0.45 M
}


def distill_jobs(root: Path, seeds: int) -> list[tuple[str, callable]]:
    out = []
    for seed in range(seeds):
        for row, extra in DISTILL_ROWS.items():
            def job(row=row, extra=extra, seed=seed):
                run_dir = root / "rows" / row / f"seed{seed}"
                if not (run_dir / "done").is_file():
                    teacher = f"timm:vit_tiny_patch16_224={foundation_file(root, 'mst')}"
                    run(MST + ["pretrain", "--out", str(run_dir), "--teacher", teacher, *Q,
                               *sets([FIVE_TO_NINE, *DISTILL, *extra, f"seed={seed}"])], run_dir / "pretrain.log")
                    (run_dir / "done").write_text("")
                evaluate(run_dir, run_dir, seed)
                if row == "distill_lcnet_035":  # the same CNN fine-tuned from random init: its only other path
                    scratch = root / "rows" / "lcnet_035_scratch" / f"seed{seed}"
                    path = scratch / "scores.json"
                    if not path.is_file():
                        run(MST + ["finetune", "--ckpt", str(run_dir), "--random-init", "--out", str(scratch / "ft"),
                                   "--train-subset", "500", "--epochs", "30", "--json", str(scratch / "finetune.json"),
                                   *Q, *sets([FIVE_TO_NINE, f"seed={seed}", "log.knn_every=10"])], scratch / "eval.log")
                        path.write_text(json.dumps({"finetune": json.loads((scratch / "finetune.json").read_text())
                                                    ["top1"]}))
            out.append((f"{row} seed {seed}", job))
    return out


GUIDE_ROWS = {  # the frozen MST foundation (classes 0-4) guides the mask of a run from scratch on the domain
    "guide_mst_frozen": ("configs/fashion_mnist_vit_tiny.yaml", ["optim.epochs=2", "mask.importance=frozen"]),
    "guide_mae_attmask_frozen": ("configs/fashion_mnist_mae.yaml", ["optim.epochs=4", "mask.strategy=attmask",
                                                                     "mask.importance=frozen"]),
    "guide_mae_attmask_encoder": ("configs/fashion_mnist_mae.yaml", ["optim.epochs=4", "mask.strategy=attmask",
                                                                      "mask.importance=encoder"]),  # the control
    # its features: MAE's reconstruction target (MaskDistill), and a term beside MST's CE (GFM, weight 1, untuned)
    "guide_mae_target_teacher": ("configs/fashion_mnist_mae.yaml", ["optim.epochs=4", "mim.target=teacher"]),
    "guide_mst_frozen_weight": ("configs/fashion_mnist_vit_tiny.yaml", ["optim.epochs=2", "mst.frozen_weight=1"]),
    # the scratch rows rerun with this code, no teacher: the controls of the same session
    "guide_scratch_mst": ("configs/fashion_mnist_vit_tiny.yaml", ["optim.epochs=2"]),
    "guide_scratch_mae": ("configs/fashion_mnist_mae.yaml", ["optim.epochs=4"]),
}


def guide_jobs(root: Path, seeds: int) -> list[tuple[str, callable]]:
    """MST with the frozen teacher's attention against its EMA teacher's (scratch_mst), MAE's AttMask with it
    against the encoder's own attention; the same budget and preset as the scratch rows. The MST foundation is
    trained and exported first if the foundation stage has not run (lane 0; the other lane waits for it)."""
    out = []

    def ensure_foundation(lane_zero: bool) -> Path:
        run_dir = root / "foundation" / "mst"
        path = root / "foundation" / "mst" / "vit.safetensors"
        if lane_zero and not path.with_suffix(".json").is_file():
            preset, extra = FOUNDATIONS["mst"]
            if not (run_dir / "done").is_file():
                run(MST + ["pretrain", "--config", preset, "--out", str(run_dir), *Q, *sets([ZERO_TO_FOUR, *extra])],
                    run_dir.with_suffix(".log"))
                (run_dir / "done").write_text("")
            run(MST + ["export", "--ckpt", str(run_dir), "--out", str(path)], run_dir.with_suffix(".log"))
        return foundation_file(root, "mst")

    k = 0
    for seed in range(seeds):
        for row, (preset, extra) in GUIDE_ROWS.items():
            def job(row=row, preset=preset, extra=extra, seed=seed, first=(k == 0)):
                run_dir = root / "rows" / row / f"seed{seed}"
                teacher = f"timm:vit_tiny_patch16_224={ensure_foundation(first)}"
                uses = ["--teacher", teacher] if "scratch" not in row else []
                if not (run_dir / "done").is_file():
                    method = "mae" if "mae" in preset else "mst"
                    run(MST + ["pretrain", "--config", preset, "--out", str(run_dir), *uses, *Q,
                               *sets([f"method={method}", FIVE_TO_NINE, *DOMAIN, *extra, f"seed={seed}"])],
                        run_dir / "pretrain.log")
                    (run_dir / "done").write_text("")
                evaluate(run_dir, run_dir, seed)
            out.append((f"{row} seed {seed}", job))
            k += 1
    return out


PHOTO_STEPS = 400  # the second case: the 1-channel, 28 px, patch-4 MAE foundation continued on colour photos
PHOTO_ROWS = {  # name -> (--init or None, overrides); the own-images CPU preset (MAE, 64 px), batch 32
    "photos_scratch": (None, ["model.patch_size=8"]),
    "photos_continue_patch8": ("mae", ["model.patch_size=8"]),  # channels 1 -> 3 and patch 4 -> 8 resampled
    "photos_continue_patch4": ("mae", []),  # the default: the source's own patch (16x16 tokens at 64 px)
}


def photo_jobs(root: Path, photos: Path, seeds: int) -> list[tuple[str, callable]]:
    """Pretrain on photos/unlabelled for PHOTO_STEPS steps, score k-NN@20 on photos/labelled (and the foundation
    as it is, at each patch size)."""
    out = []
    for seed in range(seeds):
        for row, (start, extra) in PHOTO_ROWS.items():
            def job(row=row, start=start, extra=extra, seed=seed):
                run_dir = root / "photos" / row / f"seed{seed}"
                init = ["--init", f"timm:vit_tiny_patch16_224={foundation_file(root, start)}"] if start else []
                if not (run_dir / "done").is_file():
                    run(MST + ["pretrain", "--data", str(photos / "unlabelled"), "--out", str(run_dir), *init, *Q,
                               "--max-steps", str(PHOTO_STEPS),
                               *sets([*extra, f"seed={seed}", "optim.epochs=34"])], run_dir / "pretrain.log")
                    (run_dir / "done").write_text("")
                knn = run_dir / "knn.json"
                if not knn.is_file():
                    baselines = ["--baselines"] if row == "photos_scratch" else []
                    shelf = ["--init", f"timm:vit_tiny_patch16_224={foundation_file(root, 'mae')}"] if start else []
                    run(MST + ["knn", "--ckpt", str(run_dir), "--data", str(photos / "labelled"), "--k", "20",
                               *shelf, *baselines, "--json", str(knn)], run_dir / "eval.log")
            out.append((f"{row} seed {seed}", job))
    return out


def report(root: Path) -> str:
    import numpy as np

    lines = ["| row | k-NN@20 | linear | fine-tune, 500 labels | seeds |", "|---|---:|---:|---:|---:|"]
    for row in ["foundation_mae", "foundation_mst", *ROWS, *DISTILL_ROWS, "lcnet_035_scratch", *GUIDE_ROWS]:
        runs = sorted((root / "rows" / row).glob("seed*/scores.json"))
        if not runs:
            continue
        vals = [json.loads(p.read_text()) for p in runs]
        cells = []
        for key in ("knn20", "linear", "finetune"):
            v = np.array([r[key] for r in vals if key in r], dtype=float)
            cells.append(f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}" if len(v) else "–")
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {len(vals)} |")
    photo = {}
    for row in PHOTO_ROWS:
        for p in sorted((root / "photos" / row).glob("seed*/knn.json")):
            for name, v in json.loads(p.read_text()).items():
                label = (name if name in ("raw_pixels", "random_init") else f"foundation as it is, as {row}"
                         if name.startswith("off-the-shelf") else row)
                photo.setdefault(label, []).append(v["20"])
    if photo:
        lines += ["", "| photos: features | k-NN@20 on photos/labelled | runs |", "|---|---:|---:|"]
        for label, v in photo.items():
            v = np.array(v, dtype=float)
            cell = f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}"
            lines.append(f"| {label} | {cell} | {len(v)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--stage", choices=("foundation", "rows", "distill", "guide", "photos", "report"), default="report")
    p.add_argument("--photos", default="/tmp/photos", help="scripts/photo_folder.py's output (stage photos)")
    p.add_argument("--lane", default="0/1", metavar="I/N")
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args()
    root = Path(args.out)
    if args.stage == "report":
        table = report(root)
        (root / "table.md").write_text(table + "\n")
        scores = {str(p.relative_to(root).parent): json.loads(p.read_text())
                  for p in sorted(root.glob("rows/*/seed*/scores.json"))}
        scores.update({str(p.relative_to(root).parent): json.loads(p.read_text())
                       for p in sorted(root.glob("photos/*/seed*/knn.json"))})
        (root / "scores.json").write_text(json.dumps(scores, indent=1) + "\n")
        print(table)
        return
    i, n = (int(v) for v in args.lane.split("/"))
    todo = (photo_jobs(root, Path(args.photos), args.seeds) if args.stage == "photos" else
            distill_jobs(root, args.seeds) if args.stage == "distill" else
            guide_jobs(root, args.seeds) if args.stage == "guide" else jobs(root, args.stage, args.seeds))
    for k, (name, job) in enumerate(todo):
        if k % n == i:
            print(f"[lane {i}] {name}", flush=True)
            job()


if __name__ == "__main__":
    main()
