"""The fine-tune grid's lr axis one step past its edge (1.6e-2) for the from-scratch baseline, whose chosen lr was the
grid's largest (8e-3): is the baseline still under-tuned? Same search settings as `mst finetune-search`."""
import json
from pathlib import Path
from mst.experiments.ftsearch import search
grid = {"optim.base_lr": [1.6e-2], "finetune.layer_decay": [0.75, 1.0], "augmentation": ["shift", "rrc_erase"]}
res = search("runs/demo/mae", "runs/ftsearch_ext/scratch", random_init=True, preset=Path("configs/fashion_mnist_finetune.yaml"),
             grid=grid, shard=(0, 1))
Path("runs/ftsearch_ext/scratch.json").write_text(json.dumps(res, indent=2))
print(res)
