"""Shared fixtures: tiny configs so every test runs in seconds on a 2-core CPU."""
from __future__ import annotations

import copy
import os

import pytest
import torch

from mst.config import DEFAULTS, load_config

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY = [
    "model.depth=2",
    "head.out_dim=64",
    "head.hidden_dim=64",
    "head.bottleneck_dim=32",
    "augment.n_local=2",
    "optim.batch_size=8",
    "optim.epochs=2",
    "optim.warmup_epochs=1",
    "data.subset=64",
    "log.progress=false",
    "log.tensorboard=false",
    "log.every=1",
    "log.knn_every=0",
    "decoder.channels=[16,8]",
]


@pytest.fixture
def tiny_cfg():
    return load_config(overrides=TINY)


def make_tiny_cfg(*extra: str) -> dict:
    return load_config(overrides=TINY + list(extra))


# normalisation statistics and an augment-section builder shared by the augmentation tests
MEAN1, STD1 = [0.2860], [0.3530]
MEAN3, STD3 = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def aug(**kw) -> dict:
    a = copy.deepcopy(DEFAULTS["augment"])
    a.update(kw)
    return a
