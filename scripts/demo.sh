#!/usr/bin/env bash
# `make demo`: pretrain MST on a Fashion-MNIST subset (CPU preset), then k-NN against baselines and figures.
set -euo pipefail
out="${1:-runs/demo}"
root="${2:-/usr/share/datasets/fashion-mnist}"
mst=".venv/bin/mst"
start=$(date +%s)
echo "== 1/3 pretraining MST (configs/fashion_mnist_vit_tiny.yaml) into $out"
"$mst" pretrain --config configs/fashion_mnist_vit_tiny.yaml --data "$root" --out "$out"
echo "== 2/3 k-NN on the Fashion-MNIST test set (10000 images; bank: 10000 train images)"
"$mst" knn --ckpt "$out" --data "$root" --k 10 20 --train-subset 10000 --baselines --json "$out/knn.json"
echo "== 3/3 attention / mask / reconstruction figures"
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
PY
echo
echo "run directory : $out"
echo "checkpoint    : $out/checkpoint.pt"
echo "logs          : $out/metrics.jsonl, TensorBoard: .venv/bin/tensorboard --logdir $out/tb"
echo "figures       : $out/figures/"
echo "wall time     : $(( $(date +%s) - start )) s (after installation)"
