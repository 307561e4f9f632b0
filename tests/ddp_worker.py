"""Run under torchrun by tests/test_distributed.py: train a few steps, save this rank's weights."""
import sys

import torch

from mst.config import load_config
from mst.engine.distributed import cleanup
from mst.engine.trainer import Trainer

out, steps, *overrides = sys.argv[1:]
torch.set_num_threads(1)
trainer = Trainer(load_config(overrides=overrides), out)
trainer.fit(max_steps=int(steps))
torch.save(trainer.method.state_dict(), f"{out}/rank{trainer.dist.rank}.pt")
cleanup()
