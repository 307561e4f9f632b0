#!/usr/bin/env bash
# `make demo`: pretrain MST and MAE on Fashion-MNIST (CPU presets), then what each bought: k-NN against raw pixels
# and the same ViT at random init, a linear probe, and a low-label fine-tune (1000 labels) against the same ViT
# trained from scratch, next to raw-pixel k-NN on those 1000 labels. Figures of attention, masks, reconstructions.
#
# Two lanes run side by side, one torch thread each: on a 2-core CPU two one-thread processes get more done than
# one two-thread process. The MST lane pretrains and fine-tunes MST; the MAE lane pretrains, evaluates and
# fine-tunes MAE and the scratch baseline, then runs the frozen-feature evaluations of the MST checkpoint.
# Every command's output goes to a log in the output directory.
# DEMO_FT_EPOCHS (default 30) sets the fine-tunes' epochs; the results in docs/results.md use 50.
set -euo pipefail
out="${1:-runs/demo}"
root="${2:-/usr/share/datasets/fashion-mnist}"
mst=".venv/bin/mst"
q="--set log.progress=false"
ft_epochs="${DEMO_FT_EPOCHS:-30}"
# one thread per lane, whatever the environment says: the thread count changes the rounding, and so MST's numbers
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
start=$(date +%s)
mkdir -p "$out"

say() { echo "[$1 $(printf '%4d' $(( $(date +%s) - start ))) s] $2"; }
# run LANE LOG CMD...: run CMD with its output in $out/LOG; on failure show the log's end and stop the lane
run() {
    local lane="$1" log="$out/$2"; shift 2
    if ! "$@" > "$log" 2>&1; then
        say "$lane" "FAILED: $* (last lines of $log):"; tail -n 20 "$log"; return 1
    fi
}
ft="--train-subset 1000 --data $root --epochs $ft_epochs $q --set log.knn_every=10"

lane_mst() {
    say mst "pretraining MST (configs/fashion_mnist_vit_tiny.yaml: 1500 steps of 32) into $out/mst"
    run mst mst_pretrain.log "$mst" pretrain --config configs/fashion_mnist_vit_tiny.yaml --data "$root" \
        --out "$out/mst" $q
    touch "$out/mst.pretrained"  # the MAE lane evaluates this checkpoint once it exists
    say mst "fine-tuning the MST teacher on 1000 labels (100 per class, $ft_epochs epochs)"
    run mst finetune_mst.log "$mst" finetune --ckpt "$out/mst" --out "$out/finetune_mst" $ft \
        --json "$out/finetune_mst.json"
    run mst visualize_mst.log "$mst" visualize --ckpt "$out/mst" --n 4 --out "$out/mst/figures"
    say mst "done"
}

lane_mae() {
    say mae "pretraining MAE (configs/fashion_mnist_mae.yaml, 2 of its 4 epochs: 1874 steps of 64) into $out/mae"
    run mae mae_pretrain.log "$mst" pretrain --config configs/fashion_mnist_mae.yaml --data "$root" \
        --out "$out/mae" --set optim.epochs=2 $q
    run mae knn_mae.log "$mst" knn --ckpt "$out/mae" --data "$root" --k 20 --train-subset 10000 \
        --json "$out/knn_mae.json"
    say mae "fine-tuning the MAE encoder on 1000 labels ($ft_epochs epochs)"
    run mae finetune_mae.log "$mst" finetune --ckpt "$out/mae" --out "$out/finetune_mae" $ft \
        --json "$out/finetune_mae.json"
    say mae "fine-tuning the same ViT from scratch on the same 1000 labels (the baseline)"
    run mae finetune_scratch.log "$mst" finetune --ckpt "$out/mae" --random-init --out "$out/finetune_scratch" $ft \
        --json "$out/finetune_scratch.json"
    run mae visualize_mae.log "$mst" visualize --ckpt "$out/mae" --n 4 --out "$out/mae/figures"
    # the MST checkpoint's frozen-feature evaluations, here because this lane finishes first
    while [ ! -f "$out/mst.pretrained" ]; do
        kill -0 "$mst_pid" 2> /dev/null || { say mae "the MST lane stopped before its checkpoint was ready"; return 1; }
        sleep 5
    done
    say mae "k-NN of the MST teacher on the test set (10000 images; bank: 10000 train images), raw pixels, random init"
    run mae knn_mst.log "$mst" knn --ckpt "$out/mst" --data "$root" --k 20 --train-subset 10000 --baselines \
        --json "$out/knn_mst.json"
    say mae "linear probe on frozen CLS features (10000 training images, 100 epochs): MST and random init"
    run mae linear_mst.log "$mst" linear --ckpt "$out/mst" --data "$root" --train-subset 10000 \
        --json "$out/linear_mst.json"
    run mae linear_random_init.log "$mst" linear --ckpt "$out/mst" --data "$root" --train-subset 10000 \
        --random-init --json "$out/linear_random_init.json"
    run mae knn_1000_labels.log "$mst" knn --ckpt "$out/mst" --data "$root" --k 20 --train-subset 1000 \
        --balanced --baselines --json "$out/knn_1000_labels.json"
    say mae "done"
}

rm -f "$out/mst.pretrained"
lane_mst & mst_pid=$!
lane_mae & mae_pid=$!
status=0
wait "$mst_pid" || status=1
wait "$mae_pid" || status=1
if [ "$status" -ne 0 ]; then
    echo "the demo failed: see the FAILED line above and the logs in $out"; exit 1
fi

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
print("  (each fine-tune, the one from scratch too, uses the recipe mst finetune-search chose for its kind of")
print("   backbone on held-out training labels: docs/results.md, 'Fair fine-tuning')")
PY
echo
echo "run directories: $out/mst, $out/mae (checkpoint.pt, config.yaml, metrics.jsonl, tb/), fine-tunes in $out/finetune_*"
echo "logs          : $out/*.log"
echo "figures       : $out/mst/figures/, $out/mae/figures/"
echo "TensorBoard   : .venv/bin/tensorboard --logdir $out"
echo "wall time     : $(( $(date +%s) - start )) s (after installation)"
