"""The fine-tune search's lr axis one step past its edge (by default base lr 1.6e-2, twice the grid's largest, with
both layer decays and both augmentations), for a backbone whose chosen lr was the largest searched: was the choice
cut off by the grid? If the new step wins, run it again with --lr twice as large. The same settings as
`mst finetune-search` (1000 labels, 200 held out, 30 epochs); prints the 4 validation top-1.

    python scripts/ftsearch_lr_edge.py --ckpt runs/demo/mae --random-init --out runs/ftsearch_ext/scratch
    python scripts/ftsearch_lr_edge.py --ckpt runs/demo/mst --out runs/ftsearch_ext/mst
    python scripts/ftsearch_lr_edge.py --ckpt runs/demo/mst --out runs/ftsearch_ext/mst --lr 3.2e-2
"""
import argparse
import json
from pathlib import Path

from mst.experiments.ftsearch import GRID, search

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--ckpt", required=True)
p.add_argument("--out", required=True)
p.add_argument("--random-init", action="store_true")
p.add_argument("--lr", type=float, default=2 * max(GRID["optim.base_lr"]), help="the base lr to try (default: %(default)s)")
args = p.parse_args()
grid = {"optim.base_lr": [args.lr], "finetune.layer_decay": [0.75, 1.0], "augmentation": ["shift", "rrc_erase"]}
res = search(args.ckpt, args.out, random_init=args.random_init, preset=Path("configs/fashion_mnist_finetune.yaml"),
             grid=grid, shard=(0, 1))
Path(args.out, f"search_lr{args.lr:g}.json").write_text(json.dumps(res, indent=2))
for row in res["search"]:
    print(row)
