#!/usr/bin/env bash
# `make demo`: pretrain MST on a Fashion-MNIST subset (CPU preset), then k-NN against baselines and figures.
set -euo pipefail
out="${1:-runs/demo}"
root="${2:-/usr/share/datasets/fashion-mnist}"
mst=".venv/bin/mst"
start=$(date +%s)
echo "== 1/4 pretraining MST (configs/fashion_mnist_vit_tiny.yaml) into $out"
"$mst" pretrain --config configs/fashion_mnist_vit_tiny.yaml --data "$root" --out "$out"
echo "== 2/4 k-NN on the Fashion-MNIST test set (10000 images; bank: 10000 train images)"
"$mst" knn --ckpt "$out" --data "$root" --k 10 20 --train-subset 10000 --baselines --json "$out/knn.json"
echo "== 3/4 linear probe on frozen CLS features (bank: 10000 train images; 100 epochs), pretrained vs random init"
"$mst" linear --ckpt "$out" --data "$root" --train-subset 10000 --json "$out/linear.json" > /dev/null
"$mst" linear --ckpt "$out" --data "$root" --train-subset 10000 --random-init --json "$out/linear_random_init.json" > /dev/null
echo "== 4/4 attention / mask / reconstruction figures"
"$mst" visualize --ckpt "$out" --n 4 --out "$out/figures"
.venv/bin/python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
r = json.loads((out / "knn.json").read_text())
print("\n== k-NN top-1 on the Fashion-MNIST test set (k=20, T=0.07)")
for name, label in (("raw_pixels", "raw pixels"), ("random_init", "same ViT, random init"), ("teacher", "MST demo checkpoint (teacher)")):
    if name in r:
        print(f"  {label:32s} {r[name]['20']:6.2f} %")
print("\n== linear probe top-1 on the Fashion-MNIST test set (frozen CLS, 10000 training images)")
for name, label in (("linear_random_init.json", "same ViT, random init"), ("linear.json", "MST demo checkpoint (teacher)")):
    print(f"  {label:32s} {json.loads((out / name).read_text())['top1']:6.2f} %")
PY
echo
echo "run directory : $out"
echo "checkpoint    : $out/checkpoint.pt"
echo "logs          : $out/metrics.jsonl, TensorBoard: .venv/bin/tensorboard --logdir $out/tb"
echo "figures       : $out/figures/"
echo "wall time     : $(( $(date +%s) - start )) s (after installation)"
