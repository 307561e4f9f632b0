#!/usr/bin/env bash
# `make demo`: pretrain MST and MAE on Fashion-MNIST (CPU presets), then what each bought: k-NN against raw pixels
# and the same ViT at random init, a linear probe, and a low-label fine-tune (1000 labels) against the same ViT
# trained from scratch, next to raw-pixel k-NN on those 1000 labels. Figures of attention, masks, reconstructions.
set -euo pipefail
out="${1:-runs/demo}"
root="${2:-/usr/share/datasets/fashion-mnist}"
mst=".venv/bin/mst"
q="--set log.progress=false"
start=$(date +%s)
mkdir -p "$out"
stamp() { echo "   ($(( $(date +%s) - start )) s)"; }
echo "== 1/6 MST pretraining (configs/fashion_mnist_vit_tiny.yaml: 1500 steps of 32) into $out/mst"
"$mst" pretrain --config configs/fashion_mnist_vit_tiny.yaml --data "$root" --out "$out/mst"; stamp
echo "== 2/6 MAE pretraining (configs/fashion_mnist_mae.yaml, 2 of its 4 epochs: 1874 steps of 64) into $out/mae"
"$mst" pretrain --config configs/fashion_mnist_mae.yaml --data "$root" --out "$out/mae" --set optim.epochs=2 $q \
    > "$out/mae_pretrain.log" && tail -n 4 "$out/mae_pretrain.log"; stamp
echo "== 3/6 k-NN on the Fashion-MNIST test set (10000 images; bank: 10000 train images)"
"$mst" knn --ckpt "$out/mst" --data "$root" --k 20 --train-subset 10000 --baselines --json "$out/knn_mst.json" > /dev/null
"$mst" knn --ckpt "$out/mae" --data "$root" --k 20 --train-subset 10000 --json "$out/knn_mae.json" > /dev/null; stamp
echo "== 4/6 linear probe on frozen CLS features (10000 training images, 100 epochs): MST vs random init"
"$mst" linear --ckpt "$out/mst" --data "$root" --train-subset 10000 --json "$out/linear_mst.json" > /dev/null
"$mst" linear --ckpt "$out/mst" --data "$root" --train-subset 10000 --random-init --json "$out/linear_random_init.json" > /dev/null; stamp
echo "== 5/6 low-label fine-tuning: 1000 labels (100 per class), configs/fashion_mnist_finetune.yaml, 50 epochs"
ft="--train-subset 1000 --data $root $q --set log.knn_every=50"
"$mst" finetune --ckpt "$out/mst" --out "$out/finetune_mst" $ft --json "$out/finetune_mst.json" > /dev/null
"$mst" finetune --ckpt "$out/mae" --out "$out/finetune_mae" $ft --json "$out/finetune_mae.json" > /dev/null
"$mst" finetune --ckpt "$out/mst" --random-init --out "$out/finetune_scratch" $ft --json "$out/finetune_scratch.json" > /dev/null
"$mst" knn --ckpt "$out/mst" --data "$root" --k 20 --train-subset 1000 --balanced --baselines --json "$out/knn_1000_labels.json" > /dev/null; stamp
echo "== 6/6 attention / mask / reconstruction figures"
"$mst" visualize --ckpt "$out/mst" --n 4 --out "$out/mst/figures" > /dev/null
"$mst" visualize --ckpt "$out/mae" --n 4 --out "$out/mae/figures" > /dev/null; stamp
.venv/bin/python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
r = lambda name: json.loads((out / name).read_text())
knn, mae_knn, k1000 = r("knn_mst.json"), r("knn_mae.json"), r("knn_1000_labels.json")
rows = [
    ("raw pixels", knn["raw_pixels"]["20"], None, k1000["raw_pixels"]["20"], None),
    ("same ViT, random init", knn["random_init"]["20"], r("linear_random_init.json")["top1"],
     k1000["random_init"]["20"], r("finetune_scratch.json")["top1"]),
    ("MST (teacher)", knn["teacher"]["20"], r("linear_mst.json")["top1"], k1000["teacher"]["20"],
     r("finetune_mst.json")["top1"]),
    ("MAE (encoder)", mae_knn["encoder"]["20"], None, None, r("finetune_mae.json")["top1"]),
]
f = lambda v: f"{v:6.2f}" if v is not None else "     -"
print("\n== Fashion-MNIST test set (10000 images), top-1 %")
print(f"  {'features':24s} {'k-NN, 10000 labels':>19s} {'linear, 10000':>14s} {'k-NN, 1000 labels':>18s} {'fine-tune, 1000':>16s}")
for name, a, b, c, d in rows:
    print(f"  {name:24s} {f(a):>19s} {f(b):>14s} {f(c):>18s} {f(d):>16s}")
PY
echo
echo "run directories: $out/mst, $out/mae (checkpoint.pt, config.yaml, metrics.jsonl, tb/), fine-tunes in $out/finetune_*"
echo "figures       : $out/mst/figures/, $out/mae/figures/"
echo "TensorBoard   : .venv/bin/tensorboard --logdir $out"
echo "wall time     : $(( $(date +%s) - start )) s (after installation)"
